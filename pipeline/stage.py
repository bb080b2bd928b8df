"""Stages: small classes found by name, each a streaming function over Documents.

A stage declares
  - `name` (the registry key, also its folder name in a build), `source` and `Config` (a pydantic
    model: the thresholds, each with the paper/tool it follows in a comment),
  - `reads`: "raw" (it turns raw files into Documents with `read(path)`) or "documents" (it
    filters/annotates Documents with `process(docs, part)`),
  - `columns`: the annotation columns it adds, with their Arrow types,
  - optionally `references`: other stages' outputs it needs (e.g. Wikipedia text for the KenLM
    model), and `prepare(inputs)`: a pass over all its input parts before the streaming pass
    (hash groups, model training, percentiles), returning statistics for the manifest.

A documents stage that decides per text (language id, perplexity, classifiers, exact dedup, and
the text-rewriting line dedup and C4 cleaning) implements `judge(texts, part, first_row)` instead of
`process`: it sees a batch of texts and returns a `Judgement` (reasons, new columns, meta additions,
optionally new texts). run_stage then moves the documents as Arrow columns, never as Python
objects, which is most of the cost of a fast stage; `process` (the in-memory API tests use) applies
the same judgement to Documents.

`run_stage` applies a stage to inputs and writes the stage-folder contract of pipeline.documents:
one kept + one rejected part per input part, counts that reconcile, an atomic manifest.

Parallel parts: a stage whose parts are independent once `prepare` has run says so with
`parallel_parts = True`; `run_stage(..., workers=N)` then processes its parts in N forked worker
processes (fork: the prepared models and indexes are shared copy-on-write, never pickled). Each
part's kept/rejected files are the same bytes whatever N is. Statistics a stage gathers while
processing go through `self.tally` (additive), so the parent can sum them over the workers.
`prepare` can spread its own per-part pass the same way with `self.map_parts`.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from pipeline.documents import (
    INPUTS_READ,
    Document,
    DocumentCounts,
    PartFolder,
    RemoteFile,
    StageError,
    as_input,
    job_input,
    StageFolder,
    code_version_of,
    annotation_types_of,
    is_complete,
    kept_parts,
    open_parquet,
    read_manifest,
    read_documents,
    read_schema,
    dependency_digest,
    invalid_text_field,
    stage_identity,
    without_surrogates,
)
from pipeline.executor import LocalExecutor
from pipeline.storage import is_remote, list_remote, local_input

# Modules that define stages; importing them fills the registry.
STAGE_MODULES = (
    "pipeline.commoncrawl.ingest",
    "pipeline.commoncrawl.line_dedup",
    "pipeline.commoncrawl.langid",
    "pipeline.commoncrawl.perplexity",
    "pipeline.commoncrawl.wikiref",
    "pipeline.commoncrawl.doc_dedup",
    "pipeline.sources.c4",
    "pipeline.sources.github",
    "pipeline.sources.wikipedia",
    "pipeline.sources.books",
    "pipeline.sources.arxiv",
    "pipeline.sources.stackexchange",
)

_REGISTRY: dict[str, type["Stage"]] = {}
JUDGED_BATCH = 1024  # rows per judge() call


@dataclass
class Judgement:
    """A judging stage's verdict on a batch of texts: for row i, `reasons[i]` (None = kept),
    `columns[name][i]` (the stage's annotation columns), `meta.get(i)` (keys added to its meta) and,
    for a stage that edits texts (line dedup), `texts[i]` (the new text)."""

    reasons: list[str | None]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    texts: list[str] | None = None


class StageConfig(BaseModel):
    """Base for stage configs: unknown keys are an error, so a typo in a spec fails at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReaderConfig(StageConfig):
    """Base of the raw readers' configs (stages with reads = "raw")."""

    # A lone UTF-16 surrogate in a record (JSON's "\ud800" escape; real web JSON has them) is not
    # Unicode text and no UTF-8 writer accepts it. "reject" (default): the record becomes a rejected
    # row, invalid_text:surrogate (or invalid_text:surrogate:<field> for another field). "replace":
    # each lone surrogate becomes U+FFFD and the record goes on (counted as invalid_text_replaced).
    invalid_text: Literal["reject", "replace"] = "reject"


class Stage:
    name: ClassVar[str]
    source: ClassVar[str | None] = None
    reads: ClassVar[str] = "documents"  # or "raw"
    raw_patterns: ClassVar[tuple[str, ...]] = ()  # for raw readers given a directory
    columns: ClassVar[dict[str, pa.DataType]] = {}
    references: ClassVar[tuple[str, ...]] = ()  # names of other stages whose output it needs
    optional_references: ClassVar[tuple[str, ...]] = ()  # used when the build runs them
    Config: ClassVar[type[StageConfig]] = StageConfig
    description: ClassVar[str] = ""
    # True when process(part) depends only on the part and on what prepare() computed (no state
    # carried from one part to the next): run_stage may then process parts in worker processes.
    parallel_parts: ClassVar[bool] = False
    # True when a worker on another machine can rebuild what the parts need: the stage's config and
    # references, what prepare() wrote into the artifacts folder and the small `worker_state()`.
    # Then a cluster executor runs the parts as jobs; otherwise the whole stage is one cluster job.
    remote_parts: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
                raise RuntimeError(f"two stages named {cls.name!r}")
            _REGISTRY[cls.name] = cls

    def __init__(self, config: dict[str, Any] | StageConfig | None = None, refs: dict[str, Path] | None = None):
        self.config = config if isinstance(config, StageConfig) else self.Config(**(config or {}))
        self.refs = {k: Path(v) for k, v in (refs or {}).items()}
        missing = [r for r in self.references if r not in self.refs]
        if missing:
            raise StageError(f"{self.name} needs the output of {', '.join(missing)} (pass refs=...)")
        self.artifacts: Path | None = None  # set by run_stage: where prepare() may write models
        self.workers = 1  # set by run_stage: processes available to map_parts and to the parts
        self.executor: Any = None  # set by run_stage for a remote_parts stage on a cluster (map_parts)
        self.pass_workers: dict[str, int] = {}  # who ran map_parts' jobs on the cluster (timing.json)
        self.counters: dict[str, Any] = {}  # additive statistics gathered by process(): see tally

    def tally(self, key: str, amount: Any = 1) -> None:
        """Add to an additive statistic (an int, a float, a Counter or a numpy array). Counters of
        parts processed in worker processes are summed, so they must only ever be added to."""
        _add_counters(self.counters, {key: amount})

    def map_parts(self, method: str, items: list[Any]) -> Iterator[Any]:
        """`getattr(self, method)(item)` for each item, in order: the per-part and per-partition
        passes of a prepare() (hashing every part, reducing every partition). On a cluster (run_stage
        given an executor, a `remote_parts` stage) each call is a job on a worker that rebuilds the
        stage from `worker_state()`, so what a pass leaves for the next must be files in
        `self.artifacts`; on this machine, `self.workers` forked processes."""
        if self.executor is not None and items:
            jobs = [MethodJob(*self._job_fields(), method=method, item=item) for item in items]
            for result, who in self.executor.map(run_method_job, jobs):
                self.pass_workers[who] = self.pass_workers.get(who, 0) + 1
                yield result
            return
        yield from _map_forked(self, method, items, self.workers)

    def _job_fields(self) -> tuple[str, str, dict[str, Any], dict[str, str], str, dict[str, Any]]:
        return (self.name, type(self).__module__, self.config.model_dump(mode="json"),
                {k: str(v) for k, v in self.refs.items()}, str(self.artifacts), self.worker_state())

    # Subclasses implement one of these.
    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        return {}

    def read_input(self, path: Path | RemoteFile) -> Iterator[Document]:
        """The documents of one raw input wherever it lies: a remote object is first copied into
        this process's scratch space (pipeline/storage.py, local_input), then given to `read`."""
        with self.local_input(path) as local:
            yield from self.read(local)

    def local_input(self, path: Path | RemoteFile):
        """storage.local_input, recording what was read of a remote input for this stage's manifest."""
        record_dir = None if self.artifacts is None else Path(self.artifacts).parent / INPUTS_READ
        return local_input(path, record_dir)

    def read(self, path: Path) -> Iterator[Document]:
        raise NotImplementedError

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        """Judge rows first_row.. of part `part` by their texts (see the module docstring)."""
        raise NotImplementedError

    @classmethod
    def judges(cls) -> bool:
        return cls.judge is not Stage.judge

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if not self.judges():
            raise NotImplementedError
        row = 0
        while batch := list(islice(docs, JUDGED_BATCH)):
            verdict = self.judge([doc.text for doc in batch], part, row)
            for i, doc in enumerate(batch):
                for name, values in verdict.columns.items():
                    doc.columns[name] = values[i]
                doc.meta.update(verdict.meta.get(i, {}))
                if verdict.texts is not None:
                    doc.text = verdict.texts[i]
                if verdict.reasons[i] is not None:
                    doc.reject(verdict.reasons[i])
                yield doc
            row += len(batch)

    def worker_state(self) -> dict[str, Any]:
        """What prepare() computed that a part job needs besides the artifacts folder (small: it
        travels with every job), for `restore` in a worker process on any machine."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """In a worker: set up from `worker_state()` and `self.artifacts` what prepare() set up."""

    def extra_inputs(self) -> list[Path]:
        """Files a stage reads besides its inputs and references (e.g. provided reference pages);
        their bytes count in the stage's identity and manifest."""
        return []

    # Used by tests and the CLI: apply the stage to in-memory documents.
    def __call__(self, docs: Iterator[Document] | list[Document], part: int = 0) -> list[Document]:
        return list(self.process(iter(docs), part))

    @classmethod
    def code_version(cls) -> str:
        """Package version plus a digest of the module that defines the stage (and of the modules of
        its base classes, e.g. pipeline/exact_dedup.py): a change to the stage's code changes its
        identity (used for reuse decisions and recorded in the manifest)."""
        modules = dict.fromkeys(k.__module__ for k in cls.__mro__ if issubclass(k, Stage) and k is not Stage)
        return code_version_of(*(inspect.getfile(sys.modules[m]) for m in modules))


def load_stages() -> dict[str, type[Stage]]:
    for module in STAGE_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def get_stage(name: str) -> type[Stage]:
    stages = load_stages()
    if name not in stages:
        raise StageError(f"unknown stage {name!r}; known: {', '.join(sorted(stages))}")
    return stages[name]


# ---------------------------------------------------------------------------------------------


def expand_raw_inputs(paths: list[Path | str | RemoteFile], patterns: tuple[str, ...]) -> list[Path | RemoteFile]:
    """Files for a raw reader: globs expanded, directories searched with the stage's patterns; a
    URL (s3://, https://, ...) listed in the store the same way, as RemoteFiles (never fetched here:
    the worker that reads one copies it, pipeline/storage.py)."""
    files: list[Path | RemoteFile] = []
    for p in paths:
        if isinstance(p, RemoteFile):
            files.append(p)
            continue
        if is_remote(p):
            files += list_remote(str(p), patterns)
            continue
        p = Path(p)
        if any(ch in str(p) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise StageError(f"{p}: no file matches this pattern")
            files += matches
        elif p.is_dir():
            matches = sorted({m for pat in patterns for m in p.rglob(pat) if m.is_file()})
            if not matches:
                raise StageError(f"{p}: no input file ({', '.join(patterns)}) in this folder")
            files += matches
        elif p.is_file():
            files.append(p)
        else:
            raise StageError(f"{p}: input file not found")
    return files


def expand_document_inputs(paths: list[Path | str]) -> list[Path]:
    """Parquet parts for a documents stage: stage folders (their kept parts) or Parquet files."""
    parts: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if not is_complete(p):
                raise StageError(f"{p}: incomplete stage folder (no manifest.json); rerun the stage that writes it")
            parts += kept_parts(p)
        elif p.is_file():
            parts.append(p)
        else:
            raise StageError(f"{p}: input not found")
    return parts


def input_files(stage: Stage, inputs: list[Path | str]) -> list[Path]:
    """The files a stage streams: raw files for readers, Parquet parts for the others."""
    files = expand_raw_inputs(inputs, stage.raw_patterns) if stage.reads == "raw" else expand_document_inputs(inputs)
    if not files:
        raise StageError(f"{stage.name}: no input")
    return files


def dependencies(stage: Stage, files: list[Path]) -> list[Path]:
    """Every file the stage's output depends on: its input files, its references' manifests and
    its extra inputs. Their bytes make the stage's identity."""
    refs = [ref if ref.is_file() else ref / "manifest.json" for ref in stage.refs.values()]
    return files + refs + stage.extra_inputs()


def planned_identity(stage: Stage, inputs: list[Path | str]) -> str:
    return stage_identity(
        stage.config.model_dump(mode="json"),
        stage.code_version(),
        [dependency_digest(p) for p in dependencies(stage, input_files(stage, inputs))],
    )


def is_up_to_date(stage: Stage, inputs: list[Path | str], output: Path | str) -> bool:
    """True when `output` is a complete folder made by this stage, config, code and input bytes."""
    if not is_complete(output):
        return False
    return read_manifest(output).get("identity") == planned_identity(stage, inputs)


ProgressFn = Callable[[str, int, int], None]

# The object forked worker processes call: set in the parent just before the pool is created, so
# children inherit it (with its loaded models) instead of receiving a pickled copy.
_FORKED_TARGET: Any = None


def _call_forked(args: tuple[str, Any]) -> Any:
    method, item = args
    return getattr(_FORKED_TARGET, method)(item)


def _map_forked(target: Any, method: str, items: list[Any], workers: int) -> Iterator[Any]:
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield getattr(target, method)(item)
        return
    global _FORKED_TARGET
    _FORKED_TARGET = target
    try:
        pool = LocalExecutor(workers, label=getattr(target, "name", method))
        yield from pool.map(_call_forked, [(method, item) for item in items])
    finally:
        _FORKED_TARGET = None


def _add_counters(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        total[key] = value if key not in total else total[key] + value


def checked_record(stage: Stage, doc: Document) -> bool:
    """A raw reader's document made writable: a lone surrogate anywhere in it rejects it, or is
    replaced by U+FFFD per the reader's `invalid_text` (then True: count it)."""
    field = invalid_text_field(doc)
    if field is None:
        return False
    doc.id, doc.text, doc.meta = without_surrogates(doc.id), without_surrogates(doc.text), without_surrogates(doc.meta)
    if getattr(stage.config, "invalid_text", "reject") == "replace":
        return True
    if doc.reason is None:
        doc.reject("invalid_text:surrogate" if field == "text" else f"invalid_text:surrogate:{field}")
    return False


class _PartRunner:
    """Writes one part of a stage folder; in a worker process it returns what the parent must add
    to its ledger: the part's document counts and the stage's counters."""

    def __init__(self, stage: Stage, folder: StageFolder, files: list[Path]):
        self.stage, self.folder, self.files = stage, folder, files

    def write_part(self, index: int) -> tuple[DocumentCounts, dict[str, Any]]:
        """Write part `index`. An exception that escapes the stage's code fails the stage with one
        line naming the stage, the input file and the record (1-based) it was at; write errors
        (OSError) are the stage folder's to report (disk full, read-only)."""
        stage, folder, path = self.stage, self.folder, self.files[index]
        folder.counts, stage.counters = DocumentCounts(), {}
        self.record = "0"
        try:
            if stage.reads == "raw":
                self._write_documents(index, self._checked_records(stage.read_input(path)), dict(stage.columns))
            elif stage.judges():
                self._write_judged_part(index, path)
            else:
                types = annotation_types_of(read_schema(path)) | dict(stage.columns)
                self._write_documents(index, stage.process(self._counted(read_documents(path)), index), types)
        except (StageError, OSError):
            raise
        except Exception as exc:
            raise StageError(f"{stage.name}: {path}: record {self.record}: {type(exc).__name__}: {exc}") from exc
        folder.mark_done(index, folder.counts, stage.counters)
        return folder.counts, stage.counters

    def _counted(self, docs: Iterator[Document]) -> Iterator[Document]:
        for number, doc in enumerate(docs, 1):
            self.record = str(number)
            self.folder.count_input(doc)
            yield doc

    def _checked_records(self, docs: Iterator[Document]) -> Iterator[Document]:
        """A raw reader's documents, each checked before it is written: a lone surrogate anywhere
        in it rejects it (or is replaced, per the reader's `invalid_text`), so no record can stop
        the writer."""
        self.record = "1"
        for number, doc in enumerate(docs, 1):
            if checked_record(self.stage, doc):
                self.stage.tally("invalid_text_replaced")
            yield doc
            self.record = str(number + 1)  # the next one, while the reader reads it

    def _write_documents(self, index: int, docs: Iterator[Document], types: dict[str, pa.DataType]) -> None:
        with self.folder.part(index, types) as part:
            for doc in docs:
                part.write(doc)

    def _write_judged_part(self, index: int, path: Path) -> None:
        stage = self.stage
        parquet = open_parquet(path)
        types = annotation_types_of(parquet.schema_arrow) | dict(stage.columns)
        row = 0
        with self.folder.part(index, types) as part:
            for batch in parquet.iter_batches(batch_size=JUDGED_BATCH):
                self.record = f"{row + 1}-{row + batch.num_rows}"  # a judged batch
                table = pa.Table.from_batches([batch])
                verdict = stage.judge(table["text"].to_pylist(), index, row)
                bytes_in = None
                if verdict.texts is not None:
                    bytes_in = pc.sum(pc.binary_length(table["text"])).as_py() or 0
                    table = table.set_column(table.schema.get_field_index("text"), "text",
                                             pa.array(verdict.texts, pa.string()))
                for name, values in verdict.columns.items():
                    column = pa.array(values, stage.columns[name])
                    at = table.schema.get_field_index(name)
                    table = table.set_column(at, name, column) if at >= 0 else table.append_column(name, column)
                if verdict.meta:
                    table = table.set_column(table.schema.get_field_index("meta"), "meta",
                                             _meta_with(table["meta"].to_pylist(), verdict.meta))
                part.write_judged(table, verdict.reasons, bytes_in)
                row += table.num_rows


def _meta_with(metas: list[str | None], additions: dict[int, dict[str, Any]]) -> pa.Array:
    """The meta JSON column with keys added to some rows (serialized as PartWriter does)."""
    for i, extra in additions.items():
        meta = (json.loads(metas[i]) if metas[i] else {}) | extra
        metas[i] = json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else None
    return pa.array(metas, pa.string())


@dataclass(frozen=True)
class StageJob:
    """A stage as a cluster job: paths and config only (pipeline/executor.py); a worker rebuilds
    the stage from it once per process."""

    stage: str
    module: str  # where the stage class lives: a worker imports it (a stage outside STAGE_MODULES too)
    config: dict[str, Any]
    refs: dict[str, str]
    artifacts: str
    state: dict[str, Any]

    def rebuild(self) -> Stage:
        key = json.dumps([self.stage, self.config, self.refs, self.artifacts, self.state], sort_keys=True, default=str)
        stage = _WORKER_STAGES.get(key)
        if stage is None:
            _WORKER_STAGES.clear()  # one stage at a time per process: its models can be large
            importlib.import_module(self.module)
            stage = get_stage(self.stage)(self.config, {k: Path(v) for k, v in self.refs.items()})
            stage.artifacts = Path(self.artifacts)
            stage.restore(self.state)
            _WORKER_STAGES[key] = stage
        return stage


@dataclass(frozen=True)
class PartJob(StageJob):
    """Write one part of the stage into its folder's temporary directory."""

    tmp: str = ""
    files: tuple[str | RemoteFile, ...] = ()  # local paths as str, remote inputs as listed
    index: int = 0


@dataclass(frozen=True)
class MethodJob(StageJob):
    """One call of a prepare() pass (`Stage.map_parts`)."""

    method: str = ""
    item: Any = None


_WORKER_STAGES: dict[str, Stage] = {}  # per worker process: a stage is rebuilt once, not per part


def run_part_job(job: PartJob) -> tuple[DocumentCounts, dict[str, Any], str]:
    """In a worker process (any machine): write part `job.index` into the stage's temporary folder;
    return its counts, the stage's counters and who ran it."""
    from pipeline.executor import worker_id

    stage = job.rebuild()
    folder = PartFolder(job.stage, Path(job.tmp))
    counts, counters = _PartRunner(stage, folder, [as_input(f) for f in job.files]).write_part(job.index)
    return counts, counters, worker_id()


def run_method_job(job: MethodJob) -> tuple[Any, str]:
    """In a worker process: one call of a prepare() pass; its result and who ran it."""
    from pipeline.executor import worker_id

    return getattr(job.rebuild(), job.method)(job.item), worker_id()


def run_stage_job(name: str, config: dict[str, Any], refs: dict[str, str], inputs: list[str], output: str,
                  workers: int = 1, partitions: int | None = None) -> dict[str, Any]:
    """A whole stage as one cluster job (a stage whose parts cannot run apart yet)."""
    return run_stage(get_stage(name)(config, refs), inputs, output, workers=workers, partitions=partitions)


def run_stage(
    stage: Stage,
    inputs: list[Path | str],
    output: Path | str,
    progress: ProgressFn | None = None,
    workers: int = 1,
    executor: Any = None,
    partitions: int | None = None,
) -> dict[str, Any]:
    """Run one stage on its inputs and write its stage folder. Returns the manifest.

    `workers` > 1: the stage's own per-part passes (map_parts) use that many processes, and so do
    its parts when the stage has `parallel_parts`; the folder's bytes do not depend on it.
    `executor` (pipeline/executor.py, a cluster): the parts of a `remote_parts` stage run there as
    jobs, one per part, and write into this folder's temporary directory (a shared filesystem).
    `partitions`: the hash partitions of a partitioned stage (pipeline/exchange.py; same bytes)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = input_files(stage, inputs)
    config = stage.config.model_dump(mode="json")
    if workers < 1:
        raise StageError(f"{stage.name}: workers must be >= 1, got {workers}")
    if partitions is not None:
        if partitions < 1:
            raise StageError(f"{stage.name}: partitions must be >= 1, got {partitions}")
        if hasattr(stage, "partitions"):
            stage.partitions = partitions
    with StageFolder(
        output,
        stage.name,
        config,
        inputs=dependencies(stage, files),
        code_version=stage.code_version(),
        source=stage.source,
        resume=True,
    ) as folder:
        stage.artifacts = folder.artifacts_dir
        stage.workers = workers
        stage.executor = executor if executor is not None and stage.remote_parts else None
        started = time.perf_counter()
        stats = stage.prepare(files) or {}
        if stats:  # a stage with a first pass (hashing, model training): its share of the wall time
            folder.timings["prepare_wall_time_s"] = time.perf_counter() - started
        total_counts, total_counters = DocumentCounts(), dict(stage.counters)
        # Parts a crashed run of this identity finished (an adopted folder) are not written again;
        # prepare() above did run again: its files are not kept across runs.
        done = folder.done_parts()
        todo = [index for index in range(len(files)) if index not in done]
        if done:
            folder.timings["parts_resumed"] = len(done)
        if executor is not None and stage.parallel_parts and stage.remote_parts:
            jobs = [PartJob(*stage._job_fields(), tmp=str(folder.tmp), files=tuple(job_input(f) for f in files), index=index)
                    for index in todo]
            written = ((counts, counters, who) for counts, counters, who in executor.map(run_part_job, jobs))
        else:
            runner = _PartRunner(stage, folder, files)
            part_workers = workers if stage.parallel_parts else 1
            forked = part_workers > 1 and len(todo) > 1
            written = ((counts, counters, "forked" if forked else "local")
                       for counts, counters in _map_forked(runner, "write_part", todo, part_workers))
        results = (done[index] + ("resumed",) if index in done else next(written) for index in range(len(files)))
        for index, (counts, counters, who) in enumerate(results):
            if who != "local":
                folder.register_part(index)  # written by another process (or a crashed run): record it here
            if who not in ("local", "forked", "resumed"):
                folder.part_workers[who] = folder.part_workers.get(who, 0) + 1
            total_counts.add(counts)
            _add_counters(total_counters, counters)
            if progress:
                progress(stage.name, index + 1, len(files))
        folder.counts, stage.counters = total_counts, total_counters
        folder.pass_workers = dict(stage.pass_workers)
        folder.stats.update(stats)
        folder.stats.update(getattr(stage, "final_stats", lambda: {})())
        if "invalid_text_replaced" in stage.counters:  # a reader with invalid_text: replace
            folder.stats["invalid_text_replaced"] = stage.counters["invalid_text_replaced"]
        if not any((folder.tmp / "artifacts").iterdir()):
            (folder.tmp / "artifacts").rmdir()
    return read_manifest(output)
