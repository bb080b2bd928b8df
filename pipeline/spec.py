"""Build specs: the declarative description of a corpus build (data_specs/*.yaml), validated at load.

A spec names, per source, its raw inputs and its chain of stages with their configs, then the
mixture (Table 1), the tokenizer, the token shards and the training run. Everything is checked
when the spec is loaded — unknown stages, config keys, sources, shares that do not sum to one — so
a typo fails in the first second of a build, not after hours.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.documents import SOURCES, StageError
from pipeline.mixture import MixtureConfig
from pipeline.stage import Stage, load_stages
from pipeline.token_shards import TokenShardsConfig
from pipeline.tokenizer import TokenizerConfig

SPEC_DIR = Path(__file__).resolve().parents[1] / "data_specs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    # Glob patterns of raw input files, relative to the build's inputs folder unless absolute.
    inputs: list[str]
    # Stage name -> config overrides, in the order the stages run.
    stages: dict[str, dict[str, Any]]

    @field_validator("stages", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (v or {}) for k, v in value.items()}
        return value


class TrainSpec(Strict):
    preset: str = "tiny"
    nproc: int = 2  # torchrun --nproc_per_node
    steps: int = 200
    seq_len: int = 256
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    lr: float | None = None  # None: the preset's (Table 2 for the paper's sizes)
    warmup_steps: int = 20  # the paper: 2000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    ckpt_every: int = 100
    extra_args: list[str] = Field(default_factory=list)


# The build's steps after the sources, in order (each reads the one before; the tokenizer reads every
# source's final stage).
BUILD_STEPS = ("tokenizer", "mixture", "token_shards")


class BuildSpec(Strict):
    name: str
    description: str = ""
    sources: dict[str, SourceSpec]
    # Processes per stage on this machine: the per-part passes of stages whose parts are
    # independent (`llama-recipe stages` marks them) run in this many forked workers; the output
    # bytes do not depend on it. 0 = one per CPU core.
    workers: int = Field(default=1, ge=0)
    # Hash partitions of the partitioned dedups (pipeline/exchange.py): a reduce job holds 1/partitions
    # of a stage's hashes, so raise it when workers have less memory than a dump's hashes / 64. The
    # output bytes do not depend on it.
    partitions: int = Field(default=64, ge=1)
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    token_shards: TokenShardsConfig = Field(default_factory=TokenShardsConfig)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @model_validator(mode="after")
    def _check_stages(self) -> "BuildSpec":
        registry = load_stages()
        producers: dict[str, str] = {}
        for source, spec in self.sources.items():
            if source not in SOURCES:
                raise ValueError(f"unknown source {source!r}; sources are {', '.join(SOURCES)}")
            if not spec.stages:
                raise ValueError(f"source {source!r} has no stages")
            for position, (name, config) in enumerate(spec.stages.items()):
                if name not in registry:
                    raise ValueError(f"{source}: unknown stage {name!r}; see `llama-recipe stages`")
                stage_cls = registry[name]
                if stage_cls.source not in (None, source):
                    raise ValueError(f"{source}: stage {name!r} belongs to source {stage_cls.source!r}")
                if (position == 0) != (stage_cls.reads == "raw"):
                    raise ValueError(f"{source}: {name!r} — the first stage of a source reads raw files, the others read documents")
                try:
                    stage_cls.Config(**config)
                except ValidationError as exc:
                    raise ValueError(f"{source}.{name}: invalid config: {exc}") from exc
                producers[name] = source
        for source, spec in self.sources.items():
            for name in spec.stages:
                for ref in registry[name].references:
                    if ref not in producers:
                        raise ValueError(f"{source}.{name} needs stage {ref!r}, which no source of this spec runs")
        for source in self.mixture.sources:
            if source not in self.sources:
                raise ValueError(f"mixture names source {source!r}, which the spec does not build")
        return self

    # -- the DAG
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def downstream(self, stage_names: set[str] | list[str]) -> set[str]:
        """The given steps and every step whose input depends on them: later stages of their
        source, stages that reference any of those (cc_perplexity on wikipedia_clean), and the
        build steps after the sources (tokenizer → mixture → token_shards), which read every
        source's final stage."""
        registry = load_stages()
        after_sources = list(BUILD_STEPS)
        unknown = set(stage_names) - {name for spec in self.sources.values() for name in spec.stages} - set(after_sources)
        if unknown:
            raise StageError(f"{self.name}: no stage {', '.join(sorted(unknown))} in this spec "
                             f"(its stages, or {', '.join(after_sources)})")
        steps = [s for s in stage_names if s in after_sources]
        if steps:  # a build step and the steps after it
            stage_names = [s for s in stage_names if s not in after_sources]
            first = min(after_sources.index(s) for s in steps)
            tail = set(after_sources[first:])
            if not stage_names:
                return tail
            return self.downstream(stage_names) | tail
        found = set(stage_names)
        while True:
            grown = set(found)
            for spec in self.sources.values():
                chain = list(spec.stages)
                for position, name in enumerate(chain):
                    cls = registry[name]
                    if (position and chain[position - 1] in grown) or found & set(cls.references + cls.optional_references):
                        grown.add(name)
            if grown == found:
                return found | set(after_sources)
            found = grown

    def stage_classes(self) -> dict[str, type[Stage]]:
        registry = load_stages()
        return {name: registry[name] for spec in self.sources.values() for name in spec.stages}

    def source_order(self) -> list[str]:
        """Sources ordered so that a source whose stages reference another's output runs after it."""
        registry = load_stages()
        producer = {name: src for src, spec in self.sources.items() for name in spec.stages}
        needs = {
            src: {producer[ref] for name in spec.stages for ref in registry[name].references} - {src}
            for src, spec in self.sources.items()
        }
        order: list[str] = []
        while len(order) < len(needs):
            ready = [s for s in self.sources if s not in order and needs[s] <= set(order)]
            if not ready:
                raise StageError(f"circular stage references between sources: {needs}")
            order += ready
        return order


def spec_path(path: Path | str) -> Path:
    """A spec file's path; a bare name like `demo` means data_specs/demo.yaml."""
    path = Path(path)
    if not path.exists() and (SPEC_DIR / f"{path}.yaml").exists():
        path = SPEC_DIR / f"{path}.yaml"
    if not path.is_file():
        raise StageError(f"{path}: spec file not found")
    return path


def load_spec(path: Path | str) -> BuildSpec:
    """Load and validate a spec file; a bare name like `demo` means data_specs/demo.yaml."""
    path = spec_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return BuildSpec(**(raw or {}))
    except ValidationError as exc:
        raise StageError(f"{path}: invalid spec:\n{exc}") from exc


def _yaml_value(value: Any) -> str:
    """One config value as it goes after `key: ` on a line: strings quoted, lists and mappings inline."""
    if isinstance(value, str):
        return json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def set_stage_config(path: Path | str, stage: str, values: dict[str, Any]) -> None:
    """Set config keys of one stage in a spec file, in place: the file's other lines and comments
    stay as they are (a spec is a commented document; a YAML round trip would drop them). The
    result must load, or the file is left unchanged."""
    path = Path(path)
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    key = re.compile(rf"^(\s*){re.escape(stage)}:(.*?)(\s+#.*)?$")
    at = next((i for i, line in enumerate(lines) if key.match(line.rstrip("\n"))), None)
    if at is None:
        raise StageError(f"{path}: no stage {stage!r} to configure")
    indent, rest, comment = key.match(lines[at].rstrip("\n")).groups()
    rendered = {name: _yaml_value(value) for name, value in values.items()}
    if rest.strip():  # a flow mapping on the key's line, e.g. `cc_perplexity: {}`
        current = yaml.safe_load(rest) or {}
        merged = {name: _yaml_value(value) for name, value in current.items()} | rendered
        block = [f"{indent}  {name}: {value}\n" for name, value in merged.items()]
        lines[at : at + 1] = [f"{indent}{stage}:{comment or ''}\n"] + block
    else:
        end, child = at + 1, None
        while end < len(lines):
            text = lines[end]
            if text.strip() and not text.lstrip().startswith("#"):
                depth = len(text) - len(text.lstrip())
                if depth <= len(indent):
                    break
                child = child if child is not None else text[:depth]
            end += 1
        child = child if child is not None else indent + "  "
        for name, value in rendered.items():
            entry = re.compile(rf"^{re.escape(child)}{re.escape(name)}:(.*?)(\s+#.*)?$")
            found = next((i for i in range(at + 1, end) if entry.match(lines[i].rstrip("\n"))), None)
            if found is not None:
                trailing = entry.match(lines[found].rstrip("\n")).group(2) or ""
                lines[found] = f"{child}{name}: {value}{trailing}\n"
            else:
                last = max((i for i in range(at + 1, end) if lines[i].strip()), default=at)
                lines.insert(last + 1, f"{child}{name}: {value}\n")
                end += 1
    path.write_text("".join(lines))
    try:
        load_spec(path)
    except StageError:
        path.write_text(original)
        raise
