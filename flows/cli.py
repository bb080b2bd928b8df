"""The `llama-recipe` command."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The LLaMA-1 pretraining recipe: corpus build, mixture, tokenizer, token shards and training, as Prefect flows.",
)

RUNS = Path("runs")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _use_server(ephemeral: bool) -> str:
    """Point Prefect at the one server every command reports to (flows/server.py says which); one
    started here keeps its database and log in runs/prefect, as `llama-recipe ui` does."""
    if ephemeral:
        return "ephemeral"
    from flows.server import ServerError, use_server

    try:
        url = use_server(RUNS / "prefect", on_start=lambda home: typer.echo(f"prefect: starting a local server (home {home}) ..."))
    except ServerError as exc:
        _fail(str(exc))
    typer.echo(f"prefect: {url}  (UI: {url.removesuffix('/api')})")
    return url


@app.command()
def samples(
    out: Path = typer.Option(..., help="Folder to write the raw sample inputs to."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives byte-identical files."),
    scale: float = typer.Option(1.0, help="Size multiplier (1.0 is the demo size)."),
) -> None:
    """Write raw inputs for all seven sources in their real formats."""
    from pipeline.samples import write_samples

    manifest = write_samples(out, seed=seed, scale=scale)
    for source, info in manifest["sources"].items():
        typer.echo(f"{source:<14} {len(info['files']):>3} files  {info.get('documents', '?'):>6} documents")
    typer.echo(f"wrote {out} (manifest: {out / 'SAMPLES.json'})")


@app.command()
def stages() -> None:
    """List the stage names, one per line (`parts||`: its parts can run in --workers processes;
    `cluster`: and as jobs on a Dask or Ray cluster's workers, else the stage is one cluster job)."""
    from pipeline.stage import load_stages

    for name, cls in sorted(load_stages().items(), key=lambda kv: (kv[1].source or "", kv[0])):
        doc = (cls.description or (cls.__doc__ or "").strip().split("\n")[0]).strip()
        parallel = ("parts||" if cls.parallel_parts else "") + (" cluster" if cls.parallel_parts and cls.remote_parts else "")
        typer.echo(f"{name:<20} {cls.source or '-':<14} {parallel:<15} {doc}")


@app.command("run-stage")
def run_stage_command(
    name: str = typer.Argument(..., help="Stage name (see `llama-recipe stages`)."),
    input: List[Path] = typer.Option(..., "--input", "-i", help="Input files, globs or stage folders (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="The stage folder to write."),
    config: str = typer.Option("{}", help="Stage config as JSON, e.g. '{\"threshold\": 0.5}'."),
    ref: List[str] = typer.Option([], help="Referenced stage outputs as NAME=FOLDER (repeatable)."),
    workers: int = typer.Option(1, min=1, help="Processes for the stage's per-part passes (same output bytes)."),
    partitions: Optional[int] = typer.Option(None, min=1, help="Hash partitions of a partitioned dedup (default 64; "
                                             "more = less memory per reduce job; same output bytes)."),
) -> None:
    """Run one stage outside any flow, writing the stage-folder contract."""
    from pipeline.documents import StageError
    from pipeline.stage import get_stage, run_stage

    try:
        refs = dict(r.split("=", 1) for r in ref)
        stage = get_stage(name)(json.loads(config), refs)
        manifest = run_stage(stage, list(input), output, progress=lambda n, i, t: typer.echo(f"{n}: part {i}/{t}"),
                             workers=workers, partitions=partitions)
    except (StageError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"{name}: {manifest['docs_in']} in, {manifest['docs_kept']} kept, {manifest['docs_rejected']} rejected "
        f"{manifest['rejected_by_reason']} → {output}"
    )


@app.command()
def build(
    spec: Path = typer.Option(..., help="Build spec (YAML), or a name in data_specs/ such as `demo`."),
    out: Path = typer.Option(..., help="Build folder (stages/, mixture/, tokenizer/, tokens/)."),
    inputs: str = typer.Option(".", help="Folder the spec's input patterns are relative to; may be a URL (s3://bucket/raw)."),
    force: bool = typer.Option(False, help="Recompute every stage even when its output is up to date."),
    ephemeral: bool = typer.Option(False, help="Use Prefect's in-process ephemeral server instead of a local server."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes per stage (default: the spec's `workers`)."),
    dask: Optional[str] = typer.Option(None, help="Run the stages on this Dask scheduler (e.g. tcp://10.0.0.5:8786)."),
    ray: Optional[str] = typer.Option(None, help="Run the stages on this Ray cluster (e.g. ray://10.0.0.5:10001, or auto "
                                      "for the local `ray start --head`)."),
    publish: Optional[str] = typer.Option(None, help="Afterwards upload the build's folders to this URL (s3://bucket/builds/x)."),
) -> None:
    """Build the corpus of a spec: every source's stages, tokenizer, mixture, token shards. Unchanged
    stages (same config, code and input bytes) are reused."""
    from pipeline.documents import StageError
    from pipeline.spec import load_spec

    if dask and ray:
        _fail("--dask and --ray are mutually exclusive: run the stages on one cluster")
    try:
        load_spec(spec)
    except StageError as exc:
        _fail(str(exc))
    _use_server(ephemeral)
    from flows.corpus import build_corpus

    result = build_corpus(str(spec), inputs, str(out), force, workers, dask_address=dask, ray_address=ray,
                          publish_url=publish)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def rerun(
    stage: List[str] = typer.Argument(..., help="Stage(s) to recompute (tokenizer, mixture, token_shards too)."),
    build: Path = typer.Option(..., help="The build folder (made by `llama-recipe build --out`)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes per stage (default: the spec's `workers`)."),
    ephemeral: bool = typer.Option(False, help="Use Prefect's in-process ephemeral server instead of a local server."),
) -> None:
    """Recompute STAGE and every step downstream of it in an existing build; upstream stays untouched."""
    from pipeline.documents import StageError
    from pipeline.spec import load_spec

    try:
        from flows.corpus import read_build_record

        record = read_build_record(build)
        plan = load_spec(record["spec"]).downstream(stage)
    except StageError as exc:
        _fail(str(exc))
    typer.echo(f"recomputing {', '.join(sorted(plan))} in {build}")
    _use_server(ephemeral)
    from flows.corpus import build_corpus

    result = build_corpus(record["spec"], record["inputs"], str(build), workers=workers, rerun=list(stage))
    typer.echo(json.dumps(result, indent=2))


@app.command("calibrate-perplexity")
def calibrate_perplexity(
    build: Path = typer.Option(..., help="A build whose stages up to cc_perplexity are done (wikipedia_clean, cc_langid)."),
    spec: Optional[Path] = typer.Option(None, help="The spec to write the cutoffs into (default: the build's own spec)."),
    sample: List[Path] = typer.Option([], help="Reference pages: stage folders or parts (default: the build's stage "
                                      "before cc_perplexity)."),
    write: bool = typer.Option(True, "--write/--print-only", help="Write the cutoffs into the spec, or only print them."),
) -> None:
    """cc_net's fixed perplexity cutoffs for this build's model: the 30th/60th percentiles of its
    perplexity on a reference sample of pages, computed once and written into the spec's
    cc_perplexity config (head_cutoff, tail_cutoff, calibrated_model), so that later builds bucket
    every crawl against the same numbers."""
    from pipeline.commoncrawl.perplexity import WIKIPEDIA, CCPerplexity
    from pipeline.documents import StageError, is_complete
    from pipeline.spec import SPEC_DIR, load_spec, set_stage_config

    try:
        from flows.corpus import read_build_record

        spec_path = spec or Path(read_build_record(build)["spec"])
        if not spec_path.exists() and (SPEC_DIR / f"{spec_path}.yaml").exists():
            spec_path = SPEC_DIR / f"{spec_path}.yaml"
        sources = load_spec(spec_path).sources
        chain = list(sources["cc"].stages.items()) if "cc" in sources else []
        names = [name for name, _ in chain]
        if "cc_perplexity" not in names:
            raise StageError(f"{spec_path}: no cc_perplexity stage to calibrate")
        config = dict(chain)["cc_perplexity"]
        before = names[names.index("cc_perplexity") - 1]
        pages = list(sample) or [build / "stages" / before]
        for folder in [build / "stages" / WIKIPEDIA] + [p for p in pages if p.is_dir()]:
            if not is_complete(folder):
                raise StageError(f"{folder}: not a complete stage folder; build up to cc_perplexity first "
                                 "(`llama-recipe build` keeps the stages it finished)")
        stage = CCPerplexity(config, refs={WIKIPEDIA: build / "stages" / WIKIPEDIA})
        values = stage.calibrate(pages)
    except StageError as exc:
        _fail(str(exc))
    cutoffs = {key: values[key] for key in ("head_cutoff", "tail_cutoff", "calibrated_model")}
    typer.echo(f"cc_perplexity cutoffs from {values['reference_pages']} pages: head < {cutoffs['head_cutoff']} <= middle "
               f"< {cutoffs['tail_cutoff']} <= tail (model {cutoffs['calibrated_model'][:12]})")
    if write:
        set_stage_config(spec_path, "cc_perplexity", {"cutoffs": "fixed"} | cutoffs)
        typer.echo(f"written into {spec_path}")


@app.command()
def serve(
    spec: Path = typer.Option(Path("demo"), help="Build spec (YAML), or a name in data_specs/."),
    inputs: str = typer.Option(..., help="Folder the spec's input patterns are relative to; may be a URL (s3://bucket/raw)."),
    out: Path = typer.Option(..., help="Build folder each scheduled run updates (unchanged stages are reused)."),
    cron: Optional[str] = typer.Option(None, help="Cron schedule (UTC), e.g. '0 3 * * 0' (the default: Sundays at 03:00)."),
    interval: Optional[float] = typer.Option(None, min=1, help="Instead of --cron: run every INTERVAL seconds."),
    name: Optional[str] = typer.Option(None, help="Deployment name (default: scheduled-<spec name>)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes per stage (default: the spec's `workers`)."),
) -> None:
    """Serve the corpus build as a Prefect deployment on a schedule and run each scheduled build here
    (blocks; Ctrl-C stops serving and pauses the schedule). `llama-recipe doctor` shows the next run."""
    from pipeline.documents import StageError
    from pipeline.spec import load_spec

    if cron and interval:
        _fail("--cron and --interval are mutually exclusive: give one schedule")
    try:
        load_spec(spec)
    except StageError as exc:
        _fail(str(exc))
    _use_server(ephemeral=False)  # schedules need a real server (a scheduler)
    from flows.deploy import DEFAULT_CRON, serve_build

    serve_build(str(spec), str(inputs), str(out), cron=None if interval else (cron or DEFAULT_CRON),
                interval=interval, name=name, workers=workers)


@app.command()
def verify(build: Path = typer.Argument(..., help="A build folder (stages/, tokenizer/, mixture/, tokens/).")) -> None:
    """Check a build's ledger: every listed file's sha256, in = kept + rejected, a reason on every rejected row."""
    from pipeline.ledger import verify_build

    report = verify_build(build)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def ablate(
    spec: str = typer.Option(..., help="The base spec (YAML, or a name in data_specs/ such as `demo`)."),
    inputs: str = typer.Option(".", help="Folder (or URL) the specs' input patterns are relative to."),
    out: Path = typer.Option(..., help="Ablation folder: specs/, builds/, reference/, runs/, ablation.md."),
    variant: list[str] = typer.Option([], help="NAME=SPEC_FILE: a variant given as a whole spec (repeatable)."),
    vary: list[str] = typer.Option([], help="NAME:STAGE.KEY=VALUE (VALUE as YAML) or NAME:-STAGE (drop the stage): "
                                            "a variant of the base spec (repeatable; several per NAME)."),
    seeds: int = typer.Option(3, min=1, help="Training seeds per variant (0..seeds-1)."),
    proxy: str = typer.Option("cpu", help="Proxy model: cpu (tiny preset, minutes per run here) or gpu (150M, ~3B tokens)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps per run (default: the proxy's)."),
    eval_source: list[str] = typer.Option(["wikipedia"], help="Sources whose held-out documents of the base build "
                                                              "form the reference set (repeatable)."),
    workers: Optional[int] = typer.Option(None, min=1, help="Processes per stage (default: each spec's)."),
    ephemeral: bool = typer.Option(False, help="Use Prefect's in-process ephemeral server."),
) -> None:
    """Did the filter help? Build the base spec and each variant (unchanged stages reused), train one
    proxy model per variant and seed, and compare their losses on the same held-out documents."""
    from pipeline.documents import StageError

    from flows.ablate import parse_variants

    try:
        variants = parse_variants(variant, vary)
    except StageError as exc:
        _fail(str(exc))
    _use_server(ephemeral)
    from flows.ablate import ablate as ablate_flow

    try:
        report = ablate_flow(spec, inputs, str(out), variants, list(range(seeds)), proxy,
                             {"steps": steps} if steps else None, eval_source, workers, name=out.name)
    except StageError as exc:
        _fail(str(exc))
    typer.echo((out / "ablation.md").read_text())
    typer.echo(f"report: {out / 'ablation.md'} ({len(report['variants'])} variants)")


@app.command()
def inspect(
    build: Path = typer.Argument(..., help="A build folder, or a stage folder itself."),
    stage: Optional[str] = typer.Argument(None, help="The stage (cc_line_dedup, c4_quality, ...); omit for a stage folder."),
    reason: Optional[str] = typer.Option(None, help="Only this rejection reason (its name before ':', or the whole reason)."),
    kept: bool = typer.Option(False, "--kept", help="Also sample kept documents."),
    n: int = typer.Option(3, "-n", help="Documents per reason (and kept, and edited)."),
    seed: int = typer.Option(0, help="Which documents: the same seed gives the same samples."),
    parts: int = typer.Option(8, help="Parts read at most (a seeded choice); 0 reads every part."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a static HTML page here."),
) -> None:
    """What a stage removed and changed: sampled rejected documents per reason, and before/after diffs
    of documents whose text it edited."""
    from pipeline.documents import StageError
    from pipeline.inspection import print_terminal, stage_folder, stage_samples, to_html

    try:
        samples = stage_samples(stage_folder(build, stage), n=n, seed=seed, reason=reason, kept=kept, max_parts=parts)
    except StageError as exc:
        _fail(str(exc))
    if reason is not None and not samples.rejected:
        known = ", ".join(samples.manifest.get("rejected_by_reason", {})) or "none"
        _fail(f"{samples.stage}: no document rejected as {reason!r} in the parts read (reasons: {known})")
    print_terminal(samples)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(to_html(samples), encoding="utf-8")
        typer.echo(f"wrote {html}")


def trainer_options(pairs: list[str]) -> list[str]:
    """`--train KEY=VALUE` pairs as the trainer's own arguments, each KEY checked against its parser
    (dashes or underscores; flags take true/false)."""
    from model.train import build_parser

    known = build_parser()._option_string_actions
    args = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        option = "--" + key.strip().lstrip("-").replace("_", "-")
        if not sep or option not in known or option in ("--data", "--out", "-h", "--help"):
            raise ValueError(f"--train {pair}: expected KEY=VALUE with KEY a trainer option (python -m model.train --help; "
                             "--data and --out are --tokens and --out here)")
        if known[option].nargs == 0:  # a flag
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--train {pair}: {option} is a flag, give true or false")
            if value.lower() in ("true", "1", "yes"):
                args.append(option)
            elif "--no-" + option[2:] in known:  # a flag that defaults to on (--tensorboard / --no-tensorboard)
                args.append("--no-" + option[2:])
        else:
            args += [option, value]
    return args


@app.command()
def pretrain(
    tokens: str = typer.Option(..., help="Token-shard folder (a build's tokens/), or the URL of a published one."),
    out: Path = typer.Option(..., help="Run folder for metrics, checkpoints and summary."),
    spec: Optional[Path] = typer.Option(None, help="Take the training settings from this spec's `train` section."),
    preset: Optional[str] = typer.Option(None, help="Model preset (tiny, small, 7B, ...)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps (default: the preset's training tokens)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Micro-batch: sequences per process (default 8); accumulation follows."),
    nproc: Optional[int] = typer.Option(None, min=1, help="Processes per node for torchrun (GPUs per node)."),
    nnodes: int = typer.Option(1, min=1, help="Nodes; run this command on each, with its --node-rank."),
    node_rank: int = typer.Option(0, min=0, help="This node's rank, 0 to nnodes - 1."),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="HOST:PORT of node 0 for torchrun's c10d rendezvous (nnodes > 1)."),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 where the hardware has it), fp32 or bf16."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each transformer block."),
    activation_checkpointing: Optional[str] = typer.Option(None, help="none, selective or full."),
    keep_last: Optional[int] = typer.Option(None, min=0, help="Checkpoints kept: the newest N (trainer default 3; 0: all)."),
    keep_every: Optional[int] = typer.Option(None, min=0, help="Also keep checkpoints of steps that are multiples of N."),
    ckpt_every: Optional[int] = typer.Option(None, min=0, help="Checkpoint every N steps (trainer default 1000; 0: at the end)."),
    eval_every: Optional[int] = typer.Option(None, min=0, help="Validation loss every N steps (trainer default 1000; 0: at the end)."),
    batch_tokens: Optional[int] = typer.Option(None, min=1, help="Global batch in tokens per step (default: the preset's, hit exactly)."),
    dp_replicate: Optional[int] = typer.Option(None, min=1, help="Mesh: HSDP replicas (default 1)."),
    dp_shard: Optional[int] = typer.Option(None, min=1, help="Mesh: FSDP2 shard group size (default: what the others leave)."),
    tp: Optional[int] = typer.Option(None, min=1, help="Mesh: tensor + sequence parallel degree (GPUs of one node)."),
    pp: Optional[int] = typer.Option(None, min=1, help="Mesh: pipeline stages, the outermost dim (model/pipeline.py)."),
    train_options: Optional[list[str]] = typer.Option(
        None, "--train", help="Any trainer option as KEY=VALUE (python -m model.train --help), repeatable: "
        "--train spike_rollback=true --train max_skipped_steps=10."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and the torchrun line; launch nothing."),
    ephemeral: bool = typer.Option(False, help="Use Prefect's in-process ephemeral server."),
) -> None:
    """Launch the pretraining flow (torchrun) on token shards; resumes from OUT's newest checkpoint.
    Only the settings given here or in the spec reach the trainer; the others come from the preset."""
    from pipeline.spec import TrainSpec, load_spec

    train = load_spec(spec).train if spec else TrainSpec()
    options = {"--precision": precision, "--activation-checkpointing": activation_checkpointing,
               "--keep-last": keep_last, "--keep-every": keep_every, "--batch-tokens": batch_tokens,
               "--dp-replicate": dp_replicate, "--dp-shard": dp_shard, "--tp": tp, "--pp": pp}
    try:
        passed = trainer_options(train_options or [])
    except ValueError as exc:
        _fail(str(exc))
    extra = [*train.extra_args, *(a for k, v in options.items() if v is not None for a in (k, str(v))),
             *(["--compile"] if compile else []), *passed]
    overrides = {k: v for k, v in {"preset": preset, "steps": steps, "batch_size": batch_size, "nproc": nproc,
                                   "ckpt_every": ckpt_every, "eval_every": eval_every}.items() if v is not None}
    # model_copy(update=) marks the updated fields as set; extra_args only when it has something.
    train = train.model_copy(update=overrides | ({"extra_args": extra} if extra else {}))
    launch = {"nnodes": nnodes, "node_rank": node_rank, "rdzv_endpoint": rdzv_endpoint}
    from flows.pretrain import Launch, plan_text

    try:
        text = plan_text(tokens, str(out), train, Launch(**launch))
    except ValueError as exc:
        _fail(str(exc))
    if dry_run:
        typer.echo(text)
        return
    _use_server(ephemeral)
    from flows.pretrain import pretrain as pretrain_flow

    summary = pretrain_flow(tokens, str(out), train.model_dump(mode="json", exclude_unset=True), **launch)
    typer.echo(json.dumps(summary, indent=2))


@app.command("publish")
def publish_command(
    build: Path = typer.Argument(..., help="Build folder (llama-recipe build --out)."),
    url: str = typer.Argument(..., help="Where to: any fsspec URL (s3://bucket/builds/x, gs://..., file:///...)."),
) -> None:
    """Upload a build's committed folders to object storage; folders already there unchanged are
    skipped, each folder's manifest.json goes last. Credentials/endpoints: fsspec's configuration
    (e.g. AWS_ACCESS_KEY_ID, FSSPEC_S3_ENDPOINT_URL)."""
    from flows.corpus import read_build_record
    from pipeline.documents import StageError
    from pipeline.storage import publish

    try:
        read_build_record(build)  # refuses a folder that is not a build
    except StageError as exc:
        _fail(str(exc))
    try:
        report = publish(build, url, progress=typer.echo)
    except (StageError, OSError) as exc:
        _fail(f"publishing to {url}: {exc}")
    typer.echo(f"{len(report['uploaded'])} folders uploaded, {len(report['unchanged'])} unchanged "
               f"({report['files']} files, {report['bytes']:,} bytes)")


@app.command("model-info")
def model_info(preset: str = typer.Argument(..., help="7B, 13B, 33B, 65B or a small CPU preset.")) -> None:
    """Print a preset's architecture and exact parameter count (built on the meta device) as JSON."""
    from model.presets import model_info as info

    try:
        typer.echo(json.dumps(info(preset), indent=2))
    except KeyError as exc:
        _fail(str(exc))


@app.command("export-hf")
def export_hf(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (checkpoints/step-N) or a run folder (its newest)."),
    out: Path = typer.Argument(..., help="Folder to write the Hugging Face model to."),
    tokenizer: Optional[Path] = typer.Option(None, help="Tokenizer folder (default: the build's, beside the token shards)."),
    dtype: str = typer.Option("fp32", help="Weight dtype: fp32, bf16 or fp16."),
) -> None:
    """Write safetensors + config.json + tokenizer, loadable with transformers' LlamaForCausalLM."""
    from model.checkpoint import CheckpointError
    from model.export_hf import export_hf as export

    try:
        typer.echo(json.dumps(export(checkpoint, out, tokenizer, dtype), indent=2))
    except (CheckpointError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def ui(
    port: int = typer.Option(4200, help="Port on 127.0.0.1."),
    home: Path = typer.Option(RUNS / "prefect", help="Prefect home (SQLite database, server log) if one is started."),
    stop: bool = typer.Option(False, help="Stop the background server started from this home."),
) -> None:
    """Start the Prefect server and UI on 127.0.0.1 (in the background; reused by later commands),
    or use the one that answers; prints its health (as `llama-recipe doctor`)."""
    from flows.server import ServerError, find_server, health, start_server, stop_server

    if stop:
        typer.echo("stopped" if stop_server(home) else "no server started from this home")
        return
    try:
        url = find_server(port) or start_server(home, port=port)
    except ServerError as exc:
        _fail(str(exc))
    typer.echo(health(url).render())
    typer.echo(f"Prefect UI: {url.removesuffix('/api')}   (stop with: llama-recipe ui --stop)")


@app.command()
def doctor(
    port: int = typer.Option(4200, help="The local server's port (when PREFECT_API_URL is not set)."),
) -> None:
    """The Prefect server's health: version, database, services, errors in its log since it started,
    late runs, and each deployment's schedule with its next and last run. Exit status 1 if unhealthy."""
    from flows.server import ServerError, api_url, find_server, health

    try:
        url = find_server(port)
    except ServerError as exc:
        _fail(str(exc))
    report = health(url or api_url(port=port))
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(RUNS / "demo", help="Everything goes under this folder."),
    seed: int = typer.Option(0, help="Seed for the sample inputs."),
    scale: float = typer.Option(1.0, help="Sample size multiplier."),
    spec: Path = typer.Option(Path("demo"), help="Build spec (default: data_specs/demo.yaml)."),
    force: bool = typer.Option(False, help="Recompute stages even when up to date."),
    ephemeral: bool = typer.Option(False, help="Use Prefect's in-process ephemeral server."),
) -> None:
    """Offline end to end: samples, the full corpus build, tokenizer, token shards, a 2-process training run."""
    import shutil

    from pipeline.samples import generator_version, write_samples
    from pipeline.spec import load_spec

    started = time.time()
    spec_model = load_spec(spec)
    samples_dir = out / "samples"
    stamp = samples_dir / "SAMPLES.json"
    wanted = {"seed": seed, "scale": scale, "generator": generator_version()}
    if not stamp.exists() or {k: json.loads(stamp.read_text()).get(k) for k in wanted} != wanted:
        typer.echo(f"[1/3] writing sample inputs to {samples_dir} (seed {seed}, scale {scale})")
        shutil.rmtree(samples_dir, ignore_errors=True)  # no stale files from another size or version
        write_samples(samples_dir, seed=seed, scale=scale)
    else:
        typer.echo(f"[1/3] sample inputs already in {samples_dir}")
    url = _use_server(ephemeral)
    typer.echo("[2/3] corpus build → tokenizer → mixture → token shards → [3/3] pretraining (progress below)")
    from flows.recipe import recipe
    from flows.summary import render_summary

    recipe(str(spec), str(samples_dir), str(out), force)
    extra = {"prefect UI": url.removesuffix("/api") if url != "ephemeral" else "(ephemeral: no UI)"}
    extra["wall time"] = f"{time.time() - started:.0f} s"
    text = render_summary(spec_model, out, extra)
    (out / "SUMMARY.md").write_text(text)
    typer.echo("\n" + text)


def main() -> None:
    # Keep Prefect's own telemetry off everywhere the CLI runs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
