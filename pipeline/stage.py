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

`run_stage` applies a stage to inputs and writes the stage-folder contract of pipeline.documents:
one kept + one rejected part per input part, counts that reconcile, an atomic manifest.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from pipeline.documents import (
    Document,
    StageError,
    StageFolder,
    code_version_of,
    annotation_types_of,
    is_complete,
    kept_parts,
    read_manifest,
    read_documents,
    read_schema,
    sha256_file,
    stage_identity,
)

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


class StageConfig(BaseModel):
    """Base for stage configs: unknown keys are an error, so a typo in a spec fails at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    # Subclasses implement one of these.
    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        return {}

    def read(self, path: Path) -> Iterator[Document]:
        raise NotImplementedError

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        raise NotImplementedError

    def extra_inputs(self) -> list[Path]:
        """Files a stage reads besides its inputs and references (e.g. provided reference pages);
        their bytes count in the stage's identity and manifest."""
        return []

    # Used by tests and the CLI: apply the stage to in-memory documents.
    def __call__(self, docs: Iterator[Document] | list[Document], part: int = 0) -> list[Document]:
        return list(self.process(iter(docs), part))

    @classmethod
    def code_version(cls) -> str:
        """Package version plus a digest of the module that defines the stage: a change to the
        stage's code changes its identity (used for reuse decisions and recorded in the manifest)."""
        return code_version_of(inspect.getfile(sys.modules[cls.__module__]))


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


def expand_raw_inputs(paths: list[Path | str], patterns: tuple[str, ...]) -> list[Path]:
    """Files for a raw reader: globs expanded, directories searched with the stage's patterns."""
    files: list[Path] = []
    for p in paths:
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
        [sha256_file(p) for p in dependencies(stage, input_files(stage, inputs))],
    )


def is_up_to_date(stage: Stage, inputs: list[Path | str], output: Path | str) -> bool:
    """True when `output` is a complete folder made by this stage, config, code and input bytes."""
    if not is_complete(output):
        return False
    return read_manifest(output).get("identity") == planned_identity(stage, inputs)


def _counted(docs: Iterator[Document], folder: StageFolder) -> Iterator[Document]:
    for doc in docs:
        folder.count_input(doc)
        yield doc


ProgressFn = Callable[[str, int, int], None]


def run_stage(
    stage: Stage,
    inputs: list[Path | str],
    output: Path | str,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run one stage on its inputs and write its stage folder. Returns the manifest."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = input_files(stage, inputs)
    config = stage.config.model_dump(mode="json")
    with StageFolder(
        output,
        stage.name,
        config,
        inputs=dependencies(stage, files),
        code_version=stage.code_version(),
        source=stage.source,
    ) as folder:
        stage.artifacts = folder.artifacts_dir
        stats = stage.prepare(files) or {}
        for index, path in enumerate(files):
            if stage.reads == "raw":
                docs = stage.read(path)
                types = dict(stage.columns)
            else:
                types = annotation_types_of(read_schema(path)) | dict(stage.columns)
                docs = stage.process(_counted(read_documents(path), folder), index)
            with folder.part(index, types) as part:
                for doc in docs:
                    part.write(doc)
            if progress:
                progress(stage.name, index + 1, len(files))
        folder.stats.update(stats)
        folder.stats.update(getattr(stage, "final_stats", lambda: {})())
        if not any((folder.tmp / "artifacts").iterdir()):
            (folder.tmp / "artifacts").rmdir()
    return read_manifest(output)
