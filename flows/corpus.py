"""The corpus-build flow: one subflow per source, one task run per stage, then mixture, tokenizer and
token shards. Only wiring lives here; every stage's work is in pipeline/.

    build-corpus
      ├─ source wikipedia: wikipedia_ingest → wikipedia_clean
      ├─ source cc:        cc_ingest → cc_doc_dedup → cc_line_dedup → cc_langid → cc_perplexity* → cc_wikiref*
      ├─ source c4, github, books, arxiv, stackexchange: their ingest → cleaners
      ├─ mixture (Table 1) → tokenizer (SentencePiece BPE) → token shards
    (* reference the Wikipedia output: the KenLM model and the cited-URL list)

Task runs take and return paths and small summaries, never documents, and each task covers a whole
stage (all its shards): a build has tens of task runs, which Prefect's SQLite backend handles well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.documents import read_manifest
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.spec import load_spec
from pipeline.stage import get_stage, is_up_to_date, run_stage
from pipeline.token_shards import TokenShardsConfig, write_token_shards
from pipeline.tokenizer import TokenizerConfig, train_tokenizer


def stage_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("stage", "source", "docs_in", "docs_kept", "docs_rejected", "rejected_by_reason", "bytes_in", "bytes_kept", "wall_time_s")
    return {k: manifest.get(k) for k in keys}


def publish_stage_table(manifest: dict[str, Any]) -> None:
    """A table artifact per stage: what came in, what was kept, why the rest was rejected."""
    rows = [
        {"metric": "documents in", "value": manifest["docs_in"]},
        {"metric": "kept", "value": manifest["docs_kept"]},
        {"metric": "rejected", "value": manifest["docs_rejected"]},
    ]
    rows += [{"metric": f"rejected: {reason}", "value": n} for reason, n in manifest["rejected_by_reason"].items()]
    rows += [
        {"metric": "bytes in", "value": manifest["bytes_in"]},
        {"metric": "bytes kept", "value": manifest["bytes_kept"]},
        {"metric": "wall time (s)", "value": manifest["wall_time_s"]},
    ]
    key = manifest["stage"].replace("_", "-")
    create_table_artifact(key=key, table=rows, description=f"{manifest['stage']}: documents in, kept, rejected by reason")


@task(task_run_name="{stage_name}", cache_policy=NO_CACHE)
def stage_task(
    stage_name: str,
    config: dict[str, Any],
    inputs: list[str],
    output: str,
    refs: dict[str, str],
    force: bool = False,
) -> dict[str, Any]:
    logger = get_run_logger()
    stage = get_stage(stage_name)(config, refs)
    if not force and is_up_to_date(stage, inputs, output):
        logger.info("%s: up to date (same config, code and inputs) — reusing %s", stage_name, output)
        manifest = read_manifest(output)
    else:
        def progress(name: str, done: int, total: int) -> None:
            logger.info("%s: part %d/%d done", name, done, total)

        manifest = run_stage(stage, inputs, output, progress=progress)
        publish_stage_table(manifest)
    logger.info(
        "%s: %d in, %d kept, %d rejected %s",
        stage_name, manifest["docs_in"], manifest["docs_kept"], manifest["docs_rejected"], manifest["rejected_by_reason"],
    )
    return stage_summary(manifest)


@flow(name="source", flow_run_name="source-{source}")
def build_source(
    source: str,
    stages: dict[str, dict[str, Any]],
    raw_inputs: list[str],
    stages_dir: str,
    available_refs: dict[str, str],
    force: bool = False,
) -> dict[str, str]:
    """Run one source's chain of stages; returns {stage name: output folder}."""
    outputs: dict[str, str] = {}
    inputs = raw_inputs
    for name, config in stages.items():
        output = str(Path(stages_dir) / name)
        stage_cls, known = get_stage(name), outputs | available_refs
        refs = {ref: known[ref] for ref in stage_cls.references}
        refs |= {ref: known[ref] for ref in stage_cls.optional_references if ref in known}
        stage_task(name, config, inputs, output, refs, force)
        outputs[name] = output
        inputs = [output]
    return outputs


@task(task_run_name="mixture", cache_policy=NO_CACHE)
def mixture_task(final_outputs: dict[str, str], output: str, config: dict[str, Any]) -> dict[str, Any]:
    spec_config = MixtureConfig(**config)
    manifest = sample_mixture({s: Path(p) for s, p in final_outputs.items()}, Path(output), spec_config)
    publish_stage_table(manifest)
    return stage_summary(manifest)


@task(task_run_name="tokenizer", cache_policy=NO_CACHE)
def tokenizer_task(mixture_dir: str, output: str, config: dict[str, Any]) -> str:
    spec_config = TokenizerConfig(**config)
    train_tokenizer(Path(mixture_dir), Path(output), spec_config)
    return str(Path(output) / "artifacts" / "tokenizer.model")


@task(task_run_name="token-shards", cache_policy=NO_CACHE)
def token_shards_task(mixture_dir: str, tokenizer_model: str, output: str, config: dict[str, Any]) -> dict[str, Any]:
    spec_config = TokenShardsConfig(**config)
    manifest = write_token_shards(
        Path(mixture_dir), Path(tokenizer_model), Path(output), spec_config, read_manifest(mixture_dir)
    )
    return manifest["stats"]


def resolve_inputs(patterns: list[str], inputs_dir: Path) -> list[str]:
    return [p if Path(p).is_absolute() else str(inputs_dir / p) for p in patterns]


@flow(name="build-corpus", flow_run_name="build-corpus-{spec_path}")
def build_corpus(spec_path: str, inputs_dir: str, build_dir: str, force: bool = False) -> dict[str, Any]:
    """The whole corpus build of a spec: sources, mixture, tokenizer, token shards."""
    spec = load_spec(spec_path)
    build = Path(build_dir)
    stage_outputs: dict[str, str] = {}
    final_outputs: dict[str, str] = {}
    for source in spec.source_order():
        source_spec = spec.sources[source]
        # Pass only the outputs this source's stages reference, so the UI's graph shows the real
        # dependencies (wikipedia → cc) instead of every earlier source.
        wanted = {ref for name in source_spec.stages for ref in get_stage(name).references + get_stage(name).optional_references}
        outputs = build_source(
            source,
            source_spec.stages,
            resolve_inputs(source_spec.inputs, Path(inputs_dir)),
            str(build / "stages"),
            {name: path for name, path in stage_outputs.items() if name in wanted},
            force,
        )
        stage_outputs |= outputs
        final_outputs[source] = outputs[list(source_spec.stages)[-1]]
    mixture_dir = str(build / "mixture")
    mixture_task(final_outputs, mixture_dir, spec.mixture.model_dump(mode="json"))
    tokenizer_model = tokenizer_task(mixture_dir, str(build / "tokenizer"), spec.tokenizer.model_dump(mode="json"))
    tokens_dir = str(build / "tokens")
    token_shards_task(mixture_dir, tokenizer_model, tokens_dir, spec.token_shards.model_dump(mode="json"))
    return {"stages": stage_outputs, "mixture": mixture_dir, "tokenizer": tokenizer_model, "tokens": tokens_dir}
