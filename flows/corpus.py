"""The corpus-build flow: one subflow per source, one task run per stage, then tokenizer, mixture and
token shards. Only wiring lives here; every stage's work is in pipeline/.

    build-corpus
      ├─ source wikipedia: wikipedia_ingest → wikipedia_clean
      ├─ source cc:        cc_ingest → cc_doc_dedup → cc_line_dedup → cc_langid → cc_perplexity* → cc_wikiref*
      ├─ source c4, github, books, arxiv, stackexchange: their ingest → cleaners
      ├─ tokenizer (SentencePiece BPE) → mixture (Table 1, exact token targets) → token shards
      └─ publish (with publish_url: the committed folders to object storage, pipeline/storage.py)
    (* reference the Wikipedia output: the KenLM model and the cited-URL list)

Task runs take and return paths and small summaries, never documents, and each task covers a whole
stage (all its shards): a build has tens of task runs, which Prefect's SQLite backend handles well.
On a Dask or Ray cluster the stage tasks still run here, in the flow's process, and send their
stage's parts to the cluster as plain jobs (pipeline/executor.py): the workers need no Prefect.
"""

from __future__ import annotations

import contextvars
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.charts import chart_markdown
from pipeline.documents import BUILD_RECORD, StageError, read_manifest, read_timing
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.spec import BUILD_STEPS, load_spec
from pipeline.executor import Executor, executor_for
from pipeline.stage import get_stage, is_up_to_date, run_stage, run_stage_job
from pipeline.inspection import stage_samples, to_markdown
from pipeline.storage import absolute, join, publish
from pipeline.token_shards import TokenShardsConfig, write_token_shards
from pipeline.tokenizer import TokenizerConfig, tokenizer_model_path, train_tokenizer




# The cluster of the running build, by address: stage tasks find it here (an executor is not a
# task parameter Prefect could record). Opened and closed by build_corpus.
_CLUSTERS: dict[str, Executor] = {}


def stage_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("stage", "source", "docs_in", "docs_kept", "docs_rejected", "rejected_by_reason", "bytes_in", "bytes_kept")
    return {k: manifest.get(k) for k in keys}


def publish_stage(manifest: dict[str, Any], timing: dict[str, float], reused: bool = False) -> None:
    """What the UI shows of a stage run: a table artifact (documents in, kept, rejected by reason,
    bytes, throughput, wall time) and, for the stages that have one, a chart (markdown artifact).
    A reused stage publishes them too, so every build run shows every stage's counts."""
    wall = timing.get("wall_time_s", 0.0)
    rows = [{"metric": "reused (up to date, not recomputed)", "value": "yes"}] if reused else []
    rows += [
        {"metric": "documents in", "value": manifest["docs_in"]},
        {"metric": "kept", "value": manifest["docs_kept"]},
        {"metric": "rejected", "value": manifest["docs_rejected"]},
    ]
    rows += [{"metric": f"rejected: {reason}", "value": n} for reason, n in manifest["rejected_by_reason"].items()]
    rows += [
        {"metric": "bytes in", "value": manifest["bytes_in"]},
        {"metric": "bytes kept", "value": manifest["bytes_kept"]},
        {"metric": "wall time (s)", "value": round(wall, 2)},
        {"metric": "throughput (MB/s)", "value": round(manifest["bytes_in"] / 1e6 / wall, 2) if wall else None},
        {"metric": "throughput (docs/s)", "value": round(manifest["docs_in"] / wall, 1) if wall else None},
    ]
    key = manifest["stage"].replace("_", "-")
    create_table_artifact(key=key, table=rows, description=f"{manifest['stage']}: documents in, kept, rejected by reason")
    chart = chart_markdown(manifest)
    if chart:
        create_markdown_artifact(key=f"{key}-chart", markdown=chart, description=f"{manifest['stage']}: chart")


class StageProgress:
    """A progress artifact (parts done / parts) updated while a stage runs, plus a log line per part."""

    def __init__(self, stage_name: str):
        self.stage_name = stage_name
        self.logger = get_run_logger()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=f"{stage_name.replace('_', '-')}-progress", description=f"{stage_name}: parts done"
        )

    def __call__(self, name: str, done: int, total: int) -> None:
        self.logger.info("%s: part %d/%d done", name, done, total)
        update_progress_artifact(self.artifact_id, progress=100.0 * done / max(total, 1))


def _log_counts(manifest: dict[str, Any]) -> None:
    get_run_logger().info(
        "%s: %d in, %d kept, %d rejected %s", manifest["stage"], manifest["docs_in"], manifest["docs_kept"],
        manifest["docs_rejected"], manifest["rejected_by_reason"],
    )


@task(task_run_name="{stage_name}", cache_policy=NO_CACHE)
def stage_task(
    stage_name: str,
    config: dict[str, Any],
    inputs: list[str],
    output: str,
    refs: dict[str, str],
    force: bool = False,
    workers: int = 1,
    cluster: str | None = None,
    partitions: int | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    stage = get_stage(stage_name)(config, refs)
    executor = _CLUSTERS.get(cluster) if cluster else None
    if not force and is_up_to_date(stage, inputs, output):
        logger.info("%s: up to date (same config, code and inputs) — reusing %s", stage_name, output)
        manifest = read_manifest(output)
        publish_stage(manifest, read_timing(output), reused=True)
    elif executor is not None and not (stage.parallel_parts and stage.remote_parts):
        # Its parts cannot run apart on other machines yet: the whole stage is one cluster job.
        # Dask's workers are daemon processes, which may not fork: one process there.
        logger.info("%s: the whole stage runs as one %s job", stage_name, executor.name)
        manifest = executor.call(run_stage_job, stage_name, config, refs, inputs, output,
                                 workers if executor.name == "ray" else 1, partitions)
        publish_stage(manifest, read_timing(output))
    else:
        manifest = run_stage(stage, inputs, output, progress=StageProgress(stage_name), workers=workers,
                             executor=executor, partitions=partitions)
        publish_stage(manifest, read_timing(output))
    publish_samples(output)
    _log_counts(manifest)
    return stage_summary(manifest)


def publish_samples(output: str) -> None:
    """The stage's `<stage>-samples` artifact: a few rejected documents per reason and before/after
    diffs of edited ones (pipeline/inspection.py; `llama-recipe inspect` prints the same)."""
    try:
        samples = stage_samples(Path(output))
    except Exception as exc:  # a view of the folder, never a reason to fail the stage
        get_run_logger().warning("%s: no samples artifact (%s: %s)", output, type(exc).__name__, exc)
        return
    create_markdown_artifact(key=f"{samples.stage.replace('_', '-')}-samples", markdown=to_markdown(samples),
                             description=f"{samples.stage}: what it removed and changed (samples)")


@flow(name="source", flow_run_name="source-{source}")
def build_source(
    source: str,
    stages: dict[str, dict[str, Any]],
    raw_inputs: list[str],
    stages_dir: str,
    available_refs: dict[str, str],
    force: list[str] | None = None,
    workers: int = 1,
    cluster: str | None = None,
    partitions: int | None = None,
) -> dict[str, str]:
    """Run one source's chain of stages (recomputing those named in `force`); returns {stage name:
    output folder}. Each stage is one task run, one after the other; with a `cluster` its parts run
    on the cluster's workers."""
    outputs: dict[str, str] = {}
    inputs = raw_inputs  # URLs too: listed by the stage, each object read by the worker that needs it
    for name, config in stages.items():
        output = str(Path(stages_dir) / name)
        stage_cls, known = get_stage(name), outputs | available_refs
        refs = {ref: known[ref] for ref in stage_cls.references}
        refs |= {ref: known[ref] for ref in stage_cls.optional_references if ref in known}
        stage_task.submit(name, config, inputs, output, refs, name in (force or []), workers, cluster, partitions).result()
        outputs[name] = output
        inputs = [output]
    return outputs


@task(task_run_name="publish", cache_policy=NO_CACHE)
def publish_task(build_dir: str, url: str) -> dict[str, Any]:
    """Upload the build's committed folders to `url` (unchanged ones skipped, manifests last)."""
    report = publish(Path(build_dir), url, progress=get_run_logger().info)
    rows = [{"folder": f, "state": "uploaded"} for f in report["uploaded"]] + [{"folder": f, "state": "unchanged"} for f in report["unchanged"]]
    create_table_artifact(key="publish", table=rows, description=f"published to {url}: {report['files']} files, {report['bytes']:,} bytes uploaded")
    return report


def _reused(step: str, manifest: dict[str, Any], output: str, started: float) -> bool:
    """True (and logged) when a build step found its folder up to date instead of writing it."""
    timing = read_timing(output)
    fresh = timing and Path(output, "timing.json").stat().st_mtime >= started
    if not fresh:
        get_run_logger().info("%s: up to date (same config, code and inputs) — reusing %s", step, output)
    return not fresh


@task(task_run_name="tokenizer", cache_policy=NO_CACHE)
def tokenizer_task(final_outputs: dict[str, str], output: str, config: dict[str, Any], shares: dict[str, float],
                   force: bool = False, workers: int = 1, cluster: str | None = None) -> str:
    started = time.time()
    manifest = train_tokenizer({s: Path(p) for s, p in final_outputs.items()}, Path(output), TokenizerConfig(**config),
                               shares, reuse=not force, workers=workers,
                               executor=_CLUSTERS.get(cluster) if cluster else None)
    reused = _reused("tokenizer", manifest, output, started)
    create_markdown_artifact(key="tokenizer", markdown=_tokenizer_markdown(manifest) + ("\n(reused: up to date)\n" if reused else ""),
                             description="tokenizer")
    return str(Path(output) / "artifacts" / "tokenizer.model")


def _tokenizer_markdown(manifest: dict[str, Any]) -> str:
    stats, config = manifest["stats"], manifest["config"]
    return (f"### Tokenizer\n\nSentencePiece {config.get('model_type', 'bpe').upper()}, {stats['vocab_size']} pieces "
            f"(asked {stats['requested_vocab_size']}), split digits {config.get('split_digits')}, byte fallback "
            f"{config.get('byte_fallback')}; bos/eos/unk {stats['bos_id']}/{stats['eos_id']}/{stats['unk_id']}.\n")


@task(task_run_name="mixture", cache_policy=NO_CACHE)
def mixture_task(final_outputs: dict[str, str], tokenizer_model: str, output: str, config: dict[str, Any],
                 force: bool = False, workers: int = 1, cluster: str | None = None) -> dict[str, Any]:
    started = time.time()
    manifest = sample_mixture({s: Path(p) for s, p in final_outputs.items()}, Path(tokenizer_model), Path(output),
                              MixtureConfig(**config), reuse=not force, workers=workers,
                              executor=_CLUSTERS.get(cluster) if cluster else None, progress=StageProgress("mixture"))
    publish_stage(manifest, read_timing(output), reused=_reused("mixture", manifest, output, started))
    for warning in manifest["stats"]["warnings"]:
        get_run_logger().warning("mixture: %s", warning)
    return stage_summary(manifest)


@task(task_run_name="token-shards", cache_policy=NO_CACHE)
def token_shards_task(mixture_dir: str, tokenizer_model: str, output: str, config: dict[str, Any],
                      force: bool = False, workers: int = 1, cluster: str | None = None) -> dict[str, Any]:
    started = time.time()
    manifest = write_token_shards(Path(mixture_dir), Path(tokenizer_model), Path(output), TokenShardsConfig(**config),
                                  reuse=not force, workers=workers, executor=_CLUSTERS.get(cluster) if cluster else None,
                                  progress=StageProgress("token_shards"))
    publish_stage(manifest, read_timing(output), reused=_reused("token-shards", manifest, output, started))
    return manifest["stats"]


def resolve_inputs(patterns: list[str], inputs_dir: str) -> list[str]:
    """A spec's input patterns under the inputs folder, which may be a URL (s3://bucket/raw)."""
    return [join(inputs_dir, p) for p in patterns]


def record_build(build: Path, spec_path: str, inputs_dir: str) -> None:
    """BUILD.json: what `llama-recipe rerun` needs to run this build again (spec, inputs)."""
    build.mkdir(parents=True, exist_ok=True)
    record = {"spec": str(Path(spec_path).resolve()) if Path(spec_path).exists() else spec_path,
              "inputs": absolute(inputs_dir)}
    (build / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_build_record(build: Path) -> dict[str, str]:
    path = Path(build) / BUILD_RECORD
    if not path.is_file():
        raise StageError(f"{build}: no {BUILD_RECORD}; is this a build folder (llama-recipe build --out)?")
    return json.loads(path.read_text())


def _run_sources(spec, inputs_dir: str, build: Path, forced: set[str], workers: int, cluster: str | None) -> dict[str, str]:
    """Every source's subflow; returns {stage name: output folder}. A source starts once the sources
    before it in `spec.source_order()` whose outputs it references are done. Locally (no cluster)
    the sources run one after the other, each stage using the machine's `workers` processes; on a
    Dask or Ray cluster the independent sources run at the same time (threads here submitting their
    stages' jobs to the cluster), so the cluster works on several stages at once. Same outputs."""
    order = spec.source_order()
    produced_by = {stage: source for source in order for stage in spec.sources[source].stages}

    wanted = {source: {ref for name in spec.sources[source].stages
                       for ref in get_stage(name).references + get_stage(name).optional_references}
              for source in order}

    def needs(source: str) -> list[str]:
        # Only earlier sources: exactly the outputs a one-after-the-other run would have at hand.
        earlier = order[:order.index(source)]
        return [s for s in earlier if any(produced_by.get(ref) == s for ref in wanted[source])]

    def run(source: str, upstream: dict[str, str]) -> dict[str, str]:
        source_spec = spec.sources[source]
        return build_source(
            source,
            source_spec.stages,
            resolve_inputs(source_spec.inputs, inputs_dir),
            str(build / "stages"),
            # Only the outputs this source's stages reference, so the UI's graph shows the real
            # dependencies (wikipedia → cc) instead of every earlier source.
            {name: path for name, path in upstream.items() if name in wanted[source]},
            sorted(forced & set(source_spec.stages)),
            workers,
            cluster,
            spec.partitions,
        )

    outputs: dict[str, dict[str, str]] = {}
    if cluster is None:
        for source in order:
            outputs[source] = run(source, {k: v for s in needs(source) for k, v in outputs[s].items()})
        return {k: v for source in order for k, v in outputs[source].items()}

    def after(source: str, dependencies: list[Future]) -> dict[str, str]:
        return run(source, {k: v for future in dependencies for k, v in future.result().items()})

    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=len(order), thread_name_prefix="source") as pool:
        for source in order:
            # Each thread runs the subflow inside this flow run's context (Prefect keeps it in
            # contextvars, which threads do not inherit).
            futures[source] = pool.submit(contextvars.copy_context().run, after, source, [futures[s] for s in needs(source)])
        return {k: v for source in order for k, v in futures[source].result().items()}


@flow(name="build-corpus", flow_run_name="build-corpus-{spec_path}")
def build_corpus(spec_path: str, inputs_dir: str, build_dir: str, force: bool = False,
                 workers: int | None = None, rerun: list[str] | None = None,
                 dask_address: str | None = None, ray_address: str | None = None,
                 publish_url: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """The whole corpus build of a spec: sources, tokenizer, mixture, token shards. Steps whose
    config, code and inputs are unchanged are reused. `force` recomputes everything; `rerun`
    recomputes the named stages and everything downstream of them (upstream stays untouched);
    `workers` overrides the spec's processes per stage; `dask_address` (or `ray_address`) runs the
    stages on a Dask (or Ray) cluster. `inputs_dir` may be a URL (fetched, pipeline/storage.py);
    `publish_url` uploads the finished build's folders to an object store. `tokenizer` (a tokenizer
    folder of another build) is used instead of training one: an ablation's variants share one
    tokenizer, so that their losses are comparable token for token (flows/ablate.py)."""
    spec = load_spec(spec_path)
    workers = workers or spec.worker_count()
    build = Path(build_dir)
    record_build(build, spec_path, inputs_dir)
    everything = {name for source in spec.sources.values() for name in source.stages} | set(BUILD_STEPS)
    forced = everything if force else spec.downstream(rerun) if rerun else set()
    if forced:
        get_run_logger().info("recomputing: %s", ", ".join(sorted(forced)))
    # One connection to the cluster for the whole build, shared by the sources' stage tasks.
    executor = executor_for(dask_address, ray_address)
    cluster = f"{executor.name}:{dask_address or ray_address}" if executor else None
    if executor is not None:
        _CLUSTERS[cluster] = executor
    try:
        stage_outputs = _run_sources(spec, inputs_dir, build, forced, workers, cluster)
        final_outputs = {source: stage_outputs[list(source_spec.stages)[-1]] for source, source_spec in spec.sources.items()}
        # The tokenizer comes first: the mixture counts real tokens with it to meet exact targets.
        shares = {source: spec_share.share for source, spec_share in spec.mixture.sources.items()}
        if tokenizer is not None:
            tokenizer_model = str(tokenizer_model_path(tokenizer))
            get_run_logger().info("tokenizer: using %s (not trained on this build)", tokenizer_model)
        else:
            tokenizer_model = tokenizer_task(final_outputs, str(build / "tokenizer"), spec.tokenizer.model_dump(mode="json"),
                                             shares, "tokenizer" in forced, workers, cluster)
        # The tokenizer's sample, the mixture's and the token shards' passes run on the cluster's workers as well.
        mixture_dir = str(build / "mixture")
        mixture_task(final_outputs, tokenizer_model, mixture_dir, spec.mixture.model_dump(mode="json"), "mixture" in forced,
                     workers, cluster)
        tokens_dir = str(build / "tokens")
        token_shards_task(mixture_dir, tokenizer_model, tokens_dir, spec.token_shards.model_dump(mode="json"),
                          "token_shards" in forced, workers, cluster)
    finally:
        if executor is not None:
            _CLUSTERS.pop(cluster, None)
            executor.close()
    result = {"stages": stage_outputs, "mixture": mixture_dir, "tokenizer": tokenizer_model, "tokens": tokens_dir}
    if publish_url:
        publish_task(str(build), publish_url)
        result["published"] = publish_url
    return result
