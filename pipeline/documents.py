"""The one Document schema, its Parquet form, and the stage-folder contract.

Every stage of the corpus build reads and writes the same thing:

    <stage folder>/
        kept/part-00000.parquet ...      documents that passed (zstd Parquet)
        rejected/part-00000.parquet ...  same columns plus `reason` and `stage`
        artifacts/ ...                   models and indexes a stage trained (optional)
        timing.json                      wall times of this run (kept out of the manifest)
        manifest.json                    written last: its presence means "complete"

A stage folder is assembled under a temporary name beside the final one and renamed into place
only after its manifest is written, so a crash never leaves a half stage that looks done.
The manifest is deterministic: the same config, code and input bytes give the same manifest bytes
(wall times go to timing.json), so a rerun that changes nothing changes no downstream identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SOURCES = ("cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")
BASE_COLUMNS = ("id", "text", "source", "meta")
REJECT_COLUMNS = ("reason", "stage")
MANIFEST = "manifest.json"
TIMING = "timing.json"
BUILD_RECORD = "BUILD.json"  # at a build's root: the spec and inputs of its last build (`rerun`, `publish`)
INPUTS_READ = ".inputs-read"  # in a stage's temporary folder: what the workers read of remote inputs
PARTS_DONE = ".parts-done"  # in a stage's temporary folder: one marker per part written, with its counts
TMP_IDENTITY = ".identity"  # in a stage's temporary folder: the identity it is being built for
CONTRACT_VERSION = 1
PARQUET_COMPRESSION = "zstd"
ROWS_PER_BATCH = 1024


@dataclass(slots=True)
class Document:
    """One document. `columns` holds the annotations stages add (language, perplexity, bucket...);
    they become top-level Parquet columns. A stage rejects a document by setting `reason`."""

    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def reject(self, reason: str) -> "Document":
        self.reason = reason
        return self

    @property
    def rejected(self) -> bool:
        return self.reason is not None


# ---- record validity: what a reader checks before a record becomes a Document --------------------

# A Python str can hold lone UTF-16 surrogates (JSON's "\ud800" escape parses into one; real web JSON
# has them), which no UTF-8 writer accepts. json.loads joins a valid escaped pair into one code point,
# so any surrogate left in a str is a lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(value: str) -> bool:
    return not value.isascii() and _SURROGATE.search(value) is not None


def without_surrogates(value: Any) -> Any:
    """`value` (a str, or a dict/list holding strs) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if has_surrogate(value) else value
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_surrogates(v) for v in value]
    return value


def _surrogate_in(value: Any) -> bool:
    if isinstance(value, str):
        return has_surrogate(value)
    if isinstance(value, dict):
        return any(_surrogate_in(k) or _surrogate_in(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_surrogate_in(v) for v in value)
    return False


def invalid_text_field(doc: "Document") -> str | None:
    """The first field of `doc` holding a lone surrogate ("text", "id" or "meta.<key>"), or None."""
    if has_surrogate(doc.text):
        return "text"
    if has_surrogate(doc.id):
        return "id"
    for key, value in doc.meta.items():
        if _surrogate_in(key) or _surrogate_in(value):
            return f"meta.{without_surrogates(key)}"
    return None


def wrong_type(record: dict[str, Any], types: dict[str, type | tuple[type, ...]]) -> str | None:
    """The first field of a raw record that is present (not None) with a type other than the
    reader expects, or None: a reader rejects the record as `wrong_type:<field>` rather than let a
    later stage meet, say, a licence given as a list."""
    for name, expected in types.items():
        expected = expected if isinstance(expected, tuple) else (expected,)
        value = record.get(name)
        # bool is an int to isinstance: a JSON true where a number is expected is the wrong type too
        if value is not None and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
            return name
    return None


class StageError(RuntimeError):
    """A stage cannot run at all (missing input, incomplete upstream folder, bad config)."""


@dataclass
class DocumentCounts:
    """What went through a stage (or one part of it): the ledger behind a manifest's counts.
    Additive, so the counts of parts processed in worker processes are summed by the parent."""

    docs_in: int = 0
    docs_kept: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    bytes_out: int = 0  # text bytes of every document that came out, kept or rejected
    bytes_kept: int = 0
    measured_bytes_in: int | None = None  # set by count_input for documents stages
    # The files the part wrote ({path in the folder: bytes, sha256, rows}), described by the process
    # that wrote them: the commit reads this instead of hashing every part again in one process.
    described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, other: "DocumentCounts") -> None:
        self.docs_in += other.docs_in
        self.docs_kept += other.docs_kept
        self.rejected_by_reason.update(other.rejected_by_reason)
        self.bytes_out += other.bytes_out
        self.bytes_kept += other.bytes_kept
        if other.measured_bytes_in is not None:
            self.measured_bytes_in = (self.measured_bytes_in or 0) + other.measured_bytes_in
        self.described.update(other.described)


# ---------------------------------------------------------------------------------------------
# Parquet I/O


def arrow_schema(annotation_types: dict[str, pa.DataType], rejected: bool = False) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("meta", pa.string()),  # JSON object
    ]
    fields += [pa.field(name, typ) for name, typ in annotation_types.items()]
    if rejected:
        fields += [pa.field("reason", pa.string()), pa.field("stage", pa.string())]
    return pa.schema(fields)


def annotation_types_of(schema: pa.Schema) -> dict[str, pa.DataType]:
    skip = set(BASE_COLUMNS) | set(REJECT_COLUMNS)
    return {f.name: f.type for f in schema if f.name not in skip}


def read_schema(path: Path | str) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise StageError(f"{path}: not a readable Parquet file ({exc})") from exc


def open_parquet(path: Path | str) -> pq.ParquetFile:
    """A Parquet part, or a StageError naming it (pyarrow raises several types for truncated or
    non-Parquet files)."""
    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise StageError(f"{path}: not a readable Parquet file ({exc})") from exc


def read_documents(path: Path | str, columns: list[str] | None = None) -> Iterator[Document]:
    """Stream the documents of one Parquet part, a batch at a time (memory ~ one batch)."""
    for batch in open_parquet(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
        for row in batch.to_pylist():
            meta = row.pop("meta", None)
            row.pop("stage", None)
            reason = row.pop("reason", None)
            yield Document(
                id=row.pop("id"),
                text=row.pop("text", ""),
                source=row.pop("source", ""),
                meta=json.loads(meta) if meta else {},
                columns=row,
                reason=reason,
            )


def read_texts(path: Path | str) -> Iterator[str]:
    """Only the texts of one Parquet part, in row order (first passes that hash or score text)."""
    for batch in open_parquet(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=["text"]):
        yield from batch.column(0).to_pylist()


class PartWriter:
    """Writes documents to one Parquet part in row batches."""

    def __init__(self, path: Path, schema: pa.Schema, stage: str | None = None):
        self.path = path
        self.schema = schema
        self.stage = stage
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._annotations = annotation_types_of(schema)

    def write(self, doc: Document) -> None:
        row = {
            "id": doc.id,
            "text": doc.text,
            "source": doc.source,
            "meta": json.dumps(doc.meta, ensure_ascii=False, sort_keys=True) if doc.meta else None,
        }
        for name in self._annotations:
            row[name] = doc.columns.get(name)
        if self.stage is not None:
            row["reason"] = doc.reason
            row["stage"] = self.stage
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema, compression=PARQUET_COMPRESSION)
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer.clear()

    def write_table(self, table: pa.Table) -> None:
        """Append rows that are already columns (the judged-batch path of run_stage): no Python
        object per document. `table` has this part's columns, possibly in another order."""
        self._flush()
        if table.num_rows:  # no empty row group: a part is the same bytes whichever path wrote it
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        self._flush()  # always creates the file, so an empty part still exists with its schema
        assert self._writer is not None
        self._writer.close()


def write_documents(path: Path, docs: Iterable[Document], annotation_types: dict[str, pa.DataType] | None = None) -> int:
    """Write documents to one Parquet file (used by tests and tools outside a stage)."""
    writer = PartWriter(Path(path), arrow_schema(annotation_types or {}))
    for doc in docs:
        writer.write(doc)
    writer.close()
    return writer.rows


# ---------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class RemoteFile:
    """A raw input that lives in object storage (s3://, gs://, https://, ...), as the store listed
    it: its URL and version (size and, where the store gives them, ETag or modification time). It
    is never fetched by the process that plans a stage: the worker that reads it copies that one
    object to its own scratch space (pipeline/storage.py, local_input)."""

    url: str
    version: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs: hashable, picklable

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def size(self) -> int | None:
        size = dict(self.version).get("size")
        return None if size in (None, "None") else int(size)

    @property
    def record_name(self) -> str:
        """The file, in a stage's INPUTS_READ folder, where the worker that read it records its sha256."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:32] + ".json"

    @property
    def digest(self) -> str:
        """What a stage's identity takes for this input: its URL and the store's version, not the
        sha256 of its bytes, which only a process reading the whole object could compute."""
        return hashlib.sha256(canonical_json({"url": self.url, "version": dict(self.version)}).encode()).hexdigest()

    def __str__(self) -> str:
        return self.url


def as_input(path: Path | str | RemoteFile) -> Path | RemoteFile:
    """An input file as the stages take it: a RemoteFile as it is, anything else a Path."""
    return path if isinstance(path, RemoteFile) else Path(path)


def job_input(path: Path | str | RemoteFile) -> str | RemoteFile:
    """An input file as a cluster job carries it (as_input turns it back): a RemoteFile as it is, a
    local path as a string."""
    return path if isinstance(path, RemoteFile) else str(path)


def dependency_digest(path: Path | RemoteFile) -> str:
    """The digest a stage records and hashes for one file it depends on: the sha256 of its bytes,
    except for another stage folder's manifest.json, which is hashed without the paths of that
    stage's own inputs (and its identity), and a remote raw input (RemoteFile.digest: its URL and
    version). Where the raw files lay (a folder, a moved folder, an s3:// URL) is not what they
    contain, so a moved build, or a build from remote copies of the same files, has the same
    identities downstream of its readers and is reused, not recomputed."""
    if isinstance(path, RemoteFile):
        return path.digest
    path = Path(path)
    if path.name != MANIFEST:
        return _recorded_sha256(path) or _file_sha256(path)
    manifest = json.loads(path.read_text())
    # Where an input lay (path or URL, and a store's version of it) is not what it contained; the
    # identity is left out with them (a remote input's identity takes its URL and version, while the
    # sha256 of the bytes read stays in).
    manifest.pop("identity", None)
    manifest["inputs"] = [{k: v for k, v in entry.items() if k not in ("path", "version", "digest")}
                          for entry in manifest.get("inputs", [])]
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()


def _recorded_sha256(path: Path) -> str | None:
    """The sha256 a complete stage folder's manifest records for one of its parts (same size), so a
    stage's identity does not read every upstream part again in the flow's process: the writer
    described each part where it wrote it (a cluster worker), and a committed folder is immutable."""
    folder = path.parent.parent
    if path.suffix != ".parquet" or path.parent.name not in ("kept", "rejected") or not is_complete(folder):
        return None
    manifest_path = folder / MANIFEST
    stamp = manifest_path.stat().st_mtime_ns
    cached = _MANIFEST_DIGESTS.get(manifest_path)
    if cached is None or cached[0] != stamp:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest.get("outputs", []) + manifest.get("rejected_outputs", [])
        cached = (stamp, {entry["path"]: (entry["bytes"], entry["sha256"]) for entry in entries})
        _MANIFEST_DIGESTS[manifest_path] = cached
    recorded = cached[1].get(str(path.relative_to(folder)))
    return recorded[1] if recorded is not None and recorded[0] == path.stat().st_size else None


def _file_sha256(path: Path) -> str:
    """sha256 of a file, read once per process while its size and mtime stay the same (a raw input
    is hashed for the identity check before the stage and again in its manifest)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = sha256_file(path)
    return _FILE_DIGESTS[key]


_MANIFEST_DIGESTS: dict[Path, tuple[int, dict[str, tuple[int, str]]]] = {}
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


PACKAGE_VERSION = "0.1.0"


def code_version_of(*module_files: str | Path) -> str:
    """Package version plus a digest of the modules' sources: editing a stage changes its identity."""
    digest = hashlib.sha256()
    for module_file in module_files:
        digest.update(Path(module_file).read_bytes())
    return f"{PACKAGE_VERSION}+{digest.hexdigest()[:12]}"


def stage_identity(config: dict[str, Any], code_version: str, input_digests: list[str]) -> str:
    """What a stage's output depends on: its config, its code and the bytes of its inputs. Two runs
    with the same identity produce the same folder, so a build can reuse it instead of recomputing."""
    return hashlib.sha256(canonical_json([config_hash(config), code_version, input_digests]).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Stage folders


def is_complete(stage_dir: Path | str) -> bool:
    return (Path(stage_dir) / MANIFEST).is_file()


def read_manifest(stage_dir: Path | str) -> dict[str, Any]:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        raise StageError(f"{stage_dir}: incomplete stage folder (no {MANIFEST}); rerun the stage that writes it")
    return json.loads(path.read_text())


def read_timing(stage_dir: Path | str) -> dict[str, float]:
    """The wall times of the run that wrote a stage folder ({} for folders written before timing.json)."""
    path = Path(stage_dir) / TIMING
    return json.loads(path.read_text()) if path.is_file() else {}


def kept_parts(stage_dir: Path | str) -> list[Path]:
    """The kept Parquet parts of a complete stage folder, in part order."""
    manifest = read_manifest(stage_dir)
    return [Path(stage_dir) / out["path"] for out in manifest["outputs"]]


def rejected_parts(stage_dir: Path | str) -> list[Path]:
    manifest = read_manifest(stage_dir)
    return [Path(stage_dir) / out["path"] for out in manifest.get("rejected_outputs", [])]


def _describe(path: Path, root: Path) -> dict[str, Any]:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def describe_file(path: Path, root: Path, rows: bool = False) -> dict[str, Any]:
    """A file's manifest entry: its path under `root`, size, sha256 and (a Parquet part) its rows."""
    entry = _describe(path, root)
    return entry | {"rows": pq.ParquetFile(path).metadata.num_rows} if rows else entry


def _display_path(path: Path, base: Path) -> str:
    """Inputs are recorded relative to the build folder when inside it, so a moved build stays valid."""
    path = path.resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class PartFolder:
    """What writing one part needs: the stage's temporary folder and a ledger of what went into it.
    StageFolder is one; a cluster worker that writes a part into a stage folder assembled by another
    process uses a bare one (pipeline/stage.py, run_part_job) and returns its counts."""

    def __init__(self, stage: str, tmp: Path):
        self.stage = stage
        self.tmp = Path(tmp)
        self.counts = DocumentCounts()

    def part_paths(self, index: int) -> tuple[Path, Path]:
        """The kept and rejected Parquet files of part `index` (inside the temporary folder)."""
        return (self.tmp / "kept" / f"part-{index:05d}.parquet", self.tmp / "rejected" / f"part-{index:05d}.parquet")

    def part(self, index: int, annotation_types: dict[str, pa.DataType] | None = None) -> "PartPair":
        return PartPair(self, *self.part_paths(index), annotation_types or {})

    def mark_done(self, index: int, counts: DocumentCounts, counters: dict[str, Any]) -> None:
        """Record that part `index` is completely written, with what its writer returns: a rerun of
        the stage after a crash adopts this folder and does not write the part again."""
        done = self.tmp / PARTS_DONE
        done.mkdir(exist_ok=True)
        partial = done / f".{index:05d}.{os.getpid()}"
        partial.write_bytes(pickle.dumps((counts, counters)))
        partial.replace(done / f"{index:05d}.pkl")

    def done_parts(self) -> dict[int, tuple[DocumentCounts, dict[str, Any]]]:
        """The parts marked done in this folder (an adopted one), with their counts and counters."""
        found = {}
        for marker in sorted((self.tmp / PARTS_DONE).glob("*.pkl")):
            found[int(marker.stem)] = pickle.loads(marker.read_bytes())
        return found

    def count_input(self, doc: Document) -> None:
        """Measure the text a documents stage reads, before the stage edits it (line dedup and the
        cleaners shorten texts); without this, bytes_in is measured on what comes out."""
        counts = self.counts
        counts.measured_bytes_in = (counts.measured_bytes_in or 0) + len(doc.text.encode("utf-8", "surrogatepass"))

    def count(self, doc: Document) -> None:
        """Account for one document that came out of the stage (kept or rejected)."""
        counts = self.counts
        counts.docs_in += 1
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        counts.bytes_out += size
        if doc.reason is None:
            counts.docs_kept += 1
            counts.bytes_kept += size
        else:
            counts.rejected_by_reason[doc.reason.split(":", 1)[0]] += 1


class StageFolder(PartFolder):
    """Assembles one stage folder atomically and writes its manifest.

        with StageFolder(out, "cc_langid", config, inputs, code_version) as folder:
            with folder.part(0, annotation_types) as part:
                for doc in docs: part.write(doc)
            folder.stats["cutoffs"] = ...
    On a clean exit the manifest is written and the folder renamed into place; on an exception the
    temporary folder is removed and the previous complete folder (if any) is left untouched.
    """

    def __init__(
        self,
        output: Path | str,
        stage: str,
        config: dict[str, Any],
        inputs: Iterable[Path | str] = (),
        code_version: str = "",
        kind: str = "documents",
        source: str | None = None,
        resume: bool = False,
    ):
        self.output = Path(output)
        self.resume = resume  # adopt a crashed run's temporary folder of the same identity (run_stage)
        # The owner in the name, "<pid>@<host>": on a shared filesystem only the host that made a
        # leftover can tell whether its process is gone.
        super().__init__(stage, self.output.parent / f".{self.output.name}.tmp-{_owner()}")
        self.config = config
        self.inputs = [as_input(p) for p in inputs]
        self.code_version = code_version
        self.kind = kind
        self.source = source
        self.stats: dict[str, Any] = {}
        self.timings: dict[str, float] = {}  # seconds of this run's phases: timing.json, not the manifest
        self.part_workers: dict[str, int] = {}  # "<pid>@<host>" -> parts it wrote (timing.json)
        self.pass_workers: dict[str, int] = {}  # "<pid>@<host>" -> prepare-pass jobs it ran on a cluster
        self._outputs: list[Path] = []
        self._rejected: list[Path] = []
        self._started = time.time()  # from construction: a first pass before `with` counts too

    # -- lifecycle
    def __enter__(self) -> "StageFolder":
        try:
            # Only a resumable folder needs its identity here (to adopt a leftover, and for a later
            # run to adopt this one): the others skip hashing their inputs a second time.
            identity = self.identity() if self.resume else None
            if not (identity and self._adopt_leftover(identity)):
                if self.tmp.exists():
                    shutil.rmtree(self.tmp)
                self.tmp.mkdir(parents=True)
            self._remove_leftovers()
            if identity:
                (self.tmp / TMP_IDENTITY).write_text(identity + "\n")
        except OSError as exc:
            raise self._write_error(exc) from exc
        return self

    def _adopt_leftover(self, identity: str) -> bool:
        """Take over the temporary folder of a run of the same identity whose process is gone (this
        host's only, as in _remove_leftovers): its parts marked done are kept, everything else in it
        (parts being written, prepare()'s artifacts and exchange files) is deleted, and run_stage
        writes only the missing parts. True when one was adopted."""
        prefix = f".{self.output.name}.tmp-"
        for leftover in sorted(self.output.parent.glob(f"{prefix}*")):
            pid, _, host = leftover.name[len(prefix):].partition("@")
            if not (pid.isdigit() and host in ("", socket.gethostname()) and not _process_alive(int(pid))):
                continue
            try:
                if (leftover / TMP_IDENTITY).read_text().strip() != identity:
                    continue
                if self.tmp.exists():
                    shutil.rmtree(self.tmp)
                leftover.rename(self.tmp)
            except OSError:  # no identity (an older run), or another run took it first
                continue
            done = {f"part-{int(marker.stem):05d}.parquet" for marker in (self.tmp / PARTS_DONE).glob("*.pkl")}
            for entry in self.tmp.iterdir():
                if entry.name in ("kept", "rejected") and entry.is_dir():
                    for part in entry.iterdir():
                        if part.name not in done:
                            part.unlink()
                elif entry.name in (PARTS_DONE, INPUTS_READ):
                    for stray in entry.glob(".*"):  # a marker or record being written
                        stray.unlink()
                elif entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            return True
        return False

    def _remove_leftovers(self) -> None:
        """Delete what a killed run of this stage left beside its folder (`.<name>.tmp-<pid>@<host>`
        being assembled, `.<name>.old-<pid>@<host>` being replaced) when that process is gone: never
        complete, never read, only disk taken. A live process's folders are left alone, and so are
        another host's: whether its process is gone only that host can tell."""
        prefix = f".{self.output.name}."
        for leftover in self.output.parent.glob(f"{prefix}*-*"):
            kind, _, owner = leftover.name[len(prefix):].partition("-")
            pid, _, host = owner.partition("@")
            if kind in ("tmp", "old") and pid.isdigit() and host in ("", socket.gethostname()) and not _process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):  # disk full, read-only, permissions: say so, by stage and folder
                raise self._write_error(exc) from exc
            return
        try:
            self._commit()
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise self._write_error(exc) from exc

    def _write_error(self, exc: OSError) -> StageError:
        return StageError(f"{self.stage}: cannot write {self.output} ({exc}); nothing was committed, "
                          "a previous complete folder is untouched")

    @property
    def artifacts_dir(self) -> Path:
        path = self.tmp / "artifacts"
        path.mkdir(exist_ok=True)
        return path

    def register_part(self, index: int) -> None:
        """Record part `index` as an output (in call order); `part()` does it, and run_stage does it
        for parts that worker processes write."""
        kept, rejected = self.part_paths(index)
        self._outputs.append(kept)
        self._rejected.append(rejected)

    def part(self, index: int, annotation_types: dict[str, pa.DataType] | None = None) -> "PartPair":
        self.register_part(index)
        return super().part(index, annotation_types)

    # -- commit
    def _described_inputs(self) -> list[dict[str, Any]]:
        base = self.output.parent
        described = []
        for p in self.inputs:
            if isinstance(p, RemoteFile):
                described.append(self._described_remote(p))
            elif p.is_file():  # a manifest's size varies with its paths: not recorded
                described.append({"path": _display_path(p, base), "sha256": dependency_digest(p)}
                                 | ({} if p.name == MANIFEST else {"bytes": p.stat().st_size}))
            else:
                described.append({"path": _display_path(p, base)})
        return described

    def _described_remote(self, remote: RemoteFile) -> dict[str, Any]:
        """A remote input: its URL and version (the identity takes them: known before anything is
        read), and the sha256 of the bytes the worker that read it saw, as that worker recorded it."""
        entry = {"path": remote.url, "version": dict(remote.version), "digest": remote.digest}
        record = self.tmp / INPUTS_READ / remote.record_name
        if record.is_file():
            entry |= {k: v for k, v in json.loads(record.read_text()).items() if k in ("sha256", "bytes")}
        elif remote.size is not None:
            entry["bytes"] = remote.size
        return entry

    def identity(self, inputs: list[dict[str, Any]] | None = None) -> str:
        inputs = self._described_inputs() if inputs is None else inputs
        return stage_identity(self.config, self.code_version, [i.get("digest") or i.get("sha256") or i["path"] for i in inputs])

    def current(self) -> dict[str, Any] | None:
        """The manifest already at `output` when it was made from this config, code and input
        bytes (so the work can be reused), else None."""
        if not is_complete(self.output):
            return None
        manifest = read_manifest(self.output)
        return manifest if manifest.get("identity") == self.identity() else None

    def manifest(self) -> dict[str, Any]:
        counts = self.counts
        docs_rejected = sum(counts.rejected_by_reason.values())
        inputs = self._described_inputs()
        return {
            "contract_version": CONTRACT_VERSION,
            "stage": self.stage,
            "kind": self.kind,
            "source": self.source,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "code_version": self.code_version,
            "identity": self.identity(inputs),
            "inputs": inputs,
            "outputs": [self._described(p, rows=True) for p in self._outputs],
            "rejected_outputs": [self._described(p, rows=True) for p in self._rejected],
            "artifacts": [
                self._described(p) for p in sorted((self.tmp / "artifacts").rglob("*")) if p.is_file()
            ]
            if (self.tmp / "artifacts").exists()
            else [],
            "docs_in": counts.docs_in,
            "docs_kept": counts.docs_kept,
            "docs_rejected": docs_rejected,
            "rejected_by_reason": dict(sorted(counts.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "bytes_in": counts.bytes_out if counts.measured_bytes_in is None else counts.measured_bytes_in,
            "bytes_kept": counts.bytes_kept,
            "stats": self.stats,
        }

    def _described(self, path: Path, rows: bool = False) -> dict[str, Any]:
        """A file's entry in the manifest: as the process that wrote it described it, or read now."""
        known = self.counts.described.get(str(path.relative_to(self.tmp)))
        if known is not None and known["bytes"] == path.stat().st_size:
            return known
        return describe_file(path, self.tmp, rows)

    def _commit(self) -> None:
        manifest = self.manifest()
        if manifest["docs_in"] != manifest["docs_kept"] + manifest["docs_rejected"]:
            raise StageError(f"{self.stage}: counts do not reconcile: {manifest['docs_in']} in")
        timing = {"wall_time_s": round(time.time() - self._started, 3)} | {k: round(v, 3) for k, v in self.timings.items()}
        if self.part_workers:
            timing["part_workers"] = dict(sorted(self.part_workers.items()))
        if self.pass_workers:
            timing["pass_workers"] = dict(sorted(self.pass_workers.items()))
        shutil.rmtree(self.tmp / INPUTS_READ, ignore_errors=True)  # now in the manifest
        shutil.rmtree(self.tmp / PARTS_DONE, ignore_errors=True)
        (self.tmp / TMP_IDENTITY).unlink(missing_ok=True)
        (self.tmp / TIMING).write_text(json.dumps(timing, indent=2) + "\n")
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        # Replace any previous version: move it aside first so the final name is never half-written.
        old = self.output.parent / f".{self.output.name}.old-{_owner()}"
        if self.output.exists():
            self.output.rename(old)
        self.tmp.rename(self.output)
        if old.exists():
            shutil.rmtree(old)


class PartPair:
    """The kept and rejected Parquet parts that one input shard becomes."""

    def __init__(self, folder: PartFolder, kept: Path, rejected: Path, annotation_types: dict[str, pa.DataType]):
        self.folder = folder
        self.kept = PartWriter(kept, arrow_schema(annotation_types))
        self.rejected = PartWriter(rejected, arrow_schema(annotation_types, rejected=True), stage=folder.stage)

    def write(self, doc: Document) -> None:
        self.folder.count(doc)
        (self.kept if doc.reason is None else self.rejected).write(doc)

    def write_judged(self, table: pa.Table, reasons: list[str | None], bytes_in: int | None = None) -> None:
        """Write a batch a stage judged as columns: rows whose reason is None are kept, the others
        rejected with their reason; counted as `write` counts documents. `bytes_in`: the text bytes
        before the stage edited them (None: texts not edited)."""
        reason_array = pa.array(reasons, pa.string())
        rejected = pc.is_valid(reason_array)
        text_bytes = pc.binary_length(table["text"])
        counts = self.folder.counts
        counts.docs_in += table.num_rows
        batch_bytes = pc.sum(text_bytes).as_py() or 0
        kept_bytes = pc.sum(pc.filter(text_bytes, pc.invert(rejected))).as_py() or 0
        counts.bytes_out += batch_bytes
        counts.bytes_kept += kept_bytes
        counts.measured_bytes_in = (counts.measured_bytes_in or 0) + (batch_bytes if bytes_in is None else bytes_in)
        n_rejected = pc.sum(rejected).as_py() or 0
        counts.docs_kept += table.num_rows - n_rejected
        counts.rejected_by_reason.update(r.split(":", 1)[0] for r in reasons if r is not None)
        self.kept.write_table(table.filter(pc.invert(rejected)))
        if n_rejected:
            dropped = table.append_column("reason", reason_array).append_column(
                "stage", pa.array([self.folder.stage] * table.num_rows, pa.string()))
            self.rejected.write_table(dropped.filter(rejected))

    def __enter__(self) -> "PartPair":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            # Closing after a failed write fails too ("Operation on closed file"): that second
            # error would hide the first (a full disk), so it is dropped.
            for writer in (self.kept, self.rejected):
                try:
                    writer.close()
                except Exception:
                    pass
            return
        self.kept.close()
        self.rejected.close()
        # Described here, by the process that wrote the part (a cluster worker, a forked one).
        for writer in (self.kept, self.rejected):
            entry = describe_file(writer.path, self.folder.tmp, rows=True)
            self.folder.counts.described[entry["path"]] = entry
