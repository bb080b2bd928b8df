"""The one Document schema, its Parquet form, and the stage-folder contract.

Every stage of the corpus build reads and writes the same thing:

    <stage folder>/
        kept/part-00000.parquet ...      documents that passed (zstd Parquet)
        rejected/part-00000.parquet ...  same columns plus `reason` and `stage`
        artifacts/ ...                   models and indexes a stage trained (optional)
        manifest.json                    written last: its presence means "complete"

A stage folder is assembled under a temporary name beside the final one and renamed into place
only after its manifest is written, so a crash never leaves a half stage that looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

SOURCES = ("cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")
BASE_COLUMNS = ("id", "text", "source", "meta")
REJECT_COLUMNS = ("reason", "stage")
MANIFEST = "manifest.json"
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


class StageError(RuntimeError):
    """A stage cannot run at all (missing input, incomplete upstream folder, bad config)."""


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


def read_documents(path: Path | str, columns: list[str] | None = None) -> Iterator[Document]:
    """Stream the documents of one Parquet part, a batch at a time (memory ~ one batch)."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for truncated/non-parquet files
        raise StageError(f"{path}: not a readable Parquet file ({exc})") from exc
    for batch in pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
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


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


PACKAGE_VERSION = "0.1.0"


def code_version_of(module_file: str | Path) -> str:
    """Package version plus a digest of the module's source: editing a stage changes its identity."""
    return f"{PACKAGE_VERSION}+{hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:12]}"


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


def kept_parts(stage_dir: Path | str) -> list[Path]:
    """The kept Parquet parts of a complete stage folder, in part order."""
    manifest = read_manifest(stage_dir)
    return [Path(stage_dir) / out["path"] for out in manifest["outputs"]]


def rejected_parts(stage_dir: Path | str) -> list[Path]:
    manifest = read_manifest(stage_dir)
    return [Path(stage_dir) / out["path"] for out in manifest.get("rejected_outputs", [])]


def _describe(path: Path, root: Path) -> dict[str, Any]:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _display_path(path: Path, base: Path) -> str:
    """Inputs are recorded relative to the build folder when inside it, so a moved build stays valid."""
    path = path.resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


class StageFolder:
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
    ):
        self.output = Path(output)
        self.stage = stage
        self.config = config
        self.inputs = [Path(p) for p in inputs]
        self.code_version = code_version
        self.kind = kind
        self.source = source
        self.tmp = self.output.parent / f".{self.output.name}.tmp-{os.getpid()}"
        self.stats: dict[str, Any] = {}
        self.docs_in = 0
        self.docs_kept = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_kept = 0
        self.measured_bytes_in: int | None = None  # set by count_input for documents stages
        self._outputs: list[Path] = []
        self._rejected: list[Path] = []
        self._started = 0.0

    # -- lifecycle
    def __enter__(self) -> "StageFolder":
        self._started = time.time()
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self._commit()

    @property
    def artifacts_dir(self) -> Path:
        path = self.tmp / "artifacts"
        path.mkdir(exist_ok=True)
        return path

    def part(self, index: int, annotation_types: dict[str, pa.DataType] | None = None) -> "PartPair":
        kept = self.tmp / "kept" / f"part-{index:05d}.parquet"
        rejected = self.tmp / "rejected" / f"part-{index:05d}.parquet"
        self._outputs.append(kept)
        self._rejected.append(rejected)
        return PartPair(self, kept, rejected, annotation_types or {})

    def count_input(self, doc: Document) -> None:
        """Measure the text a documents stage reads, before the stage edits it (line dedup and the
        cleaners shorten texts); without this, bytes_in is measured on what comes out."""
        self.measured_bytes_in = (self.measured_bytes_in or 0) + len(doc.text.encode("utf-8", "surrogatepass"))

    def count(self, doc: Document) -> None:
        """Account for one document that came out of the stage (kept or rejected)."""
        self.docs_in += 1
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        self.bytes_in += size
        if doc.reason is None:
            self.docs_kept += 1
            self.bytes_kept += size
        else:
            self.rejected_by_reason[doc.reason.split(":", 1)[0]] += 1

    # -- commit
    def manifest(self) -> dict[str, Any]:
        base = self.output.parent
        docs_rejected = sum(self.rejected_by_reason.values())
        inputs = [
            {"path": _display_path(p, base), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            if p.is_file()
            else {"path": _display_path(p, base)}
            for p in self.inputs
        ]
        return {
            "contract_version": CONTRACT_VERSION,
            "stage": self.stage,
            "kind": self.kind,
            "source": self.source,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "code_version": self.code_version,
            "identity": stage_identity(self.config, self.code_version, [i.get("sha256", i["path"]) for i in inputs]),
            "inputs": inputs,
            "outputs": [_describe(p, self.tmp) | {"rows": pq.ParquetFile(p).metadata.num_rows} for p in self._outputs],
            "rejected_outputs": [
                _describe(p, self.tmp) | {"rows": pq.ParquetFile(p).metadata.num_rows} for p in self._rejected
            ],
            "artifacts": [
                _describe(p, self.tmp) for p in sorted((self.tmp / "artifacts").rglob("*")) if p.is_file()
            ]
            if (self.tmp / "artifacts").exists()
            else [],
            "docs_in": self.docs_in,
            "docs_kept": self.docs_kept,
            "docs_rejected": docs_rejected,
            "rejected_by_reason": dict(self.rejected_by_reason.most_common()),
            "bytes_in": self.bytes_in if self.measured_bytes_in is None else self.measured_bytes_in,
            "bytes_kept": self.bytes_kept,
            "wall_time_s": round(time.time() - self._started, 3),
            "stats": self.stats,
        }

    def _commit(self) -> None:
        manifest = self.manifest()
        if manifest["docs_in"] != manifest["docs_kept"] + manifest["docs_rejected"]:
            raise StageError(f"{self.stage}: counts do not reconcile: {manifest['docs_in']} in")
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        # Replace any previous version: move it aside first so the final name is never half-written.
        old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
        if self.output.exists():
            self.output.rename(old)
        self.tmp.rename(self.output)
        if old.exists():
            shutil.rmtree(old)


class PartPair:
    """The kept and rejected Parquet parts that one input shard becomes."""

    def __init__(self, folder: StageFolder, kept: Path, rejected: Path, annotation_types: dict[str, pa.DataType]):
        self.folder = folder
        self.kept = PartWriter(kept, arrow_schema(annotation_types))
        self.rejected = PartWriter(rejected, arrow_schema(annotation_types, rejected=True), stage=folder.stage)

    def write(self, doc: Document) -> None:
        self.folder.count(doc)
        (self.kept if doc.reason is None else self.rejected).write(doc)

    def __enter__(self) -> "PartPair":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.kept.close()
        self.rejected.close()
