"""The pretraining flow: the trainer (model/train.py) launched through torchrun, its output streamed
into the Prefect logs, its exit status the task's state. In the Prefect UI the task shows a progress
artifact (updated as steps complete) and, at the end, a markdown artifact with the loss curve and
the run's figures (loss, tokens/s, MFU, peak memory). Rerunning the flow on the same run folder
resumes from its newest complete checkpoint (the trainer's default).

What reaches the trainer: only the `train` settings the user set (a spec's `train:` keys, the CLI's
options); every other value comes from the trainer's own defaults, i.e. the preset (context,
micro-batch, accumulation to the preset's tokens per step, warmup, lr, steps from the preset's token
budget). The plan is resolved before launch by the trainer's own `resolve` on the very arguments
torchrun will pass, and logged with the torchrun line (`llama-recipe pretrain --dry-run` prints both
and stops).

Several nodes: the same flow runs on every node with `nnodes`, its `node_rank` and the
`rdzv_endpoint` HOST:PORT of node 0 (torchrun's c10d rendezvous); the run folder must be on a
filesystem all nodes share (checkpoints are written by every rank). Only node 0 sets a stale run
aside and writes the report."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pipeline.spec import TrainSpec
from pipeline.storage import fetch_folder, is_remote


class Launch(BaseModel):
    """Where torchrun runs: one node (standalone) or one of `nnodes` meeting at `rdzv_endpoint`."""

    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)
    rdzv_endpoint: str | None = None  # HOST:PORT of node 0, needed when nnodes > 1
    rdzv_id: str | None = None  # the same on every node; default: the run folder's name

    def torchrun_args(self, run_dir: str) -> list[str]:
        if self.nnodes == 1 and not self.rdzv_endpoint:
            return ["--standalone"]
        if not self.rdzv_endpoint:
            raise ValueError(f"{self.nnodes} nodes need a rendezvous endpoint: --rdzv-endpoint HOST:PORT of node 0")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node rank {self.node_rank} outside {self.nnodes} nodes")
        return ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", self.rdzv_id or f"llama-recipe-{Path(run_dir).name}"]


# TrainSpec field -> the trainer's option (model/train.py), passed only when the user set the field.
TRAINER_OPTIONS = {
    "preset": "--preset",
    "steps": "--steps",
    "seq_len": "--seq-len",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "lr": "--lr",
    "warmup_steps": "--warmup",
    "seed": "--seed",
    "log_every": "--log-every",
    "eval_every": "--eval-every",
    "ckpt_every": "--ckpt-every",
}


def trainer_args(tokens_dir: str, run_dir: str, train: TrainSpec) -> list[str]:
    """The trainer's arguments: the data, the run folder, and the fields of `train` that were set
    (TrainSpec's model_fields_set: a spec's keys, the CLI's options), then its extra_args."""
    args = ["--data", tokens_dir, "--out", run_dir]
    for field, option in TRAINER_OPTIONS.items():
        value = getattr(train, field)
        if field in train.model_fields_set and value is not None:
            args += [option, str(value)]
    return args + list(train.extra_args)


def torchrun_command(tokens_dir: str, run_dir: str, train: TrainSpec, launch: Launch | None = None) -> list[str]:
    launch = launch or Launch()
    return [
        sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(run_dir),
        "--nproc-per-node", str(train.nproc), "-m", "model.train", *trainer_args(tokens_dir, run_dir, train),
    ]


def resolve_plan(tokens_dir: str, run_dir: str, train: TrainSpec, launch: Launch | None = None) -> dict[str, Any]:
    """What the trainer will run, resolved from the arguments torchrun will pass, by the trainer's
    own parse_args and resolve: the same values its rank 0 prints. The vocabulary comes from the
    token shards when they are here (the paper presets fix their own); a checkpoint in run_dir
    that the run will continue from keeps its global batch, as in the trainer."""
    from model.checkpoint import read_meta
    from model.data import TokenDataError, TokenShards
    from model.train import checkpoint_to_resume, parse_args, resolve

    launch = launch or Launch()
    cfg = parse_args(trainer_args(tokens_dir, run_dir, train))
    try:
        vocab = TokenShards(tokens_dir).vocab_size if not is_remote(tokens_dir) else None
    except TokenDataError:
        vocab = None
    ckpt = checkpoint_to_resume(cfg)
    resumed = read_meta(ckpt).get("run") if ckpt is not None else None
    return resolve(cfg, vocab, launch.nnodes * train.nproc, resumed) | {"resume_from": str(ckpt) if ckpt else None}


def plan_text(tokens_dir: str, run_dir: str, train: TrainSpec, launch: Launch | None = None) -> str:
    """The plan and the torchrun line, as `llama-recipe pretrain --dry-run` prints them."""
    from model.train import plan_lines

    launch = launch or Launch()
    plan = resolve_plan(tokens_dir, run_dir, train, launch)
    nodes = f"{launch.nnodes} nodes x {train.nproc} processes" if launch.nnodes > 1 else f"1 node x {train.nproc} processes"
    lines = [f"plan: {line}" for line in plan_lines(plan)]
    lines.insert(1, f"plan: launch: {nodes}" + (f", rendezvous at {launch.rdzv_endpoint}" if launch.rdzv_endpoint else ""))
    if plan["resume_from"]:
        lines.append(f"plan: resumes from {plan['resume_from']}")
    command = torchrun_command(tokens_dir, run_dir, train, launch)
    return "\n".join([*lines, "torchrun: " + " ".join(["torchrun", *command[3:]])])


STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")


def run_torchrun(
    tokens_dir: str,
    run_dir: str,
    train: TrainSpec,
    log: Callable[[str], Any] = print,
    timeout_s: float | None = None,
    progress: Callable[[int, int], Any] | None = None,
    launch: Launch | None = None,
) -> dict[str, Any]:
    """Run the trainer to completion, streaming its lines to `log` and (step, total) to `progress`;
    returns its summary.json (on a node other than 0: that node's part, {"node_rank": n}, when
    the run folder is not shared)."""
    launch = launch or Launch()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if launch.node_rank == 0:
        stale = set_aside_stale_run(tokens_dir, run_dir, train)
        if stale:
            log(stale)
    for line in plan_text(tokens_dir, run_dir, train, launch).splitlines()[:-1]:
        log(line)
    command = torchrun_command(tokens_dir, run_dir, train, launch)
    # Threads per process: share the cores between the ranks instead of oversubscribing them.
    threads = max(1, (os.cpu_count() or 1) // train.nproc)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log("launching: " + " ".join(command))
    started = time.time()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log(line.rstrip())
            match = STEP_LINE.match(line)
            if match and progress is not None:
                progress(int(match[1]), int(match[2]))
            if timeout_s and time.time() - started > timeout_s:
                process.kill()
                raise TimeoutError(f"training exceeded {timeout_s:.0f} s")
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"torchrun exited with status {code}")
    summary = Path(run_dir) / "summary.json"
    if launch.node_rank > 0 and not summary.is_file():
        return {"node_rank": launch.node_rank}
    return json.loads(summary.read_text())


def set_aside_stale_run(tokens_dir: str, run_dir: str, train: TrainSpec) -> str | None:
    """The trainer resumes from the newest checkpoint in run_dir, and refuses one written for other
    data or another model. When the corpus was rebuilt or the preset changed since (a rerun of the
    demo after editing its spec), the old run is moved to run_dir/previous/ and training starts
    afresh. Returns why, or None when the run folder can be resumed (or is new)."""
    from model.checkpoint import latest_checkpoint, read_meta
    from model.data import TokenShards

    run = Path(run_dir)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return None
    from model.presets import get_preset
    from model.train import parse_args

    meta = read_meta(ckpt)
    digest = TokenShards(tokens_dir).manifest_digest
    # The preset and context the run will use, from the arguments the trainer will get.
    cfg = parse_args(trainer_args(tokens_dir, run_dir, train))
    seq_len = cfg.seq_len or get_preset(cfg.preset).max_seq_len
    reasons = []
    if not str(meta.get("data_loader", {}).get("data", "")).endswith(digest):
        reasons.append("the token shards changed")
    if meta.get("config", {}).get("preset") != cfg.preset or meta.get("run", {}).get("seq_len") != seq_len:
        reasons.append("the preset or sequence length changed")
    if not reasons:
        return None
    previous = run / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for name in ("checkpoints", "metrics.jsonl", "tensorboard", "summary.json", "loss_curve.png"):
        if (run / name).exists():
            (run / name).rename(previous / name)
    return f"{' and '.join(reasons)} since {ckpt}: moved that run to {previous}, training afresh"


def loss_curve_png(run_dir: Path) -> bytes:
    """The training and validation loss against the step, from metrics.jsonl, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker threads

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss", color="black", alpha=0.6)
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        axes.plot(*zip(*val), "o-", label="validation loss", color="black")
    # One curve per source's held-out documents, and the fixed reference set (model/train.py).
    sources = sorted({s for r in records for s in r.get("val_loss_by_source", {})})
    for source in sources:
        points = [(r["step"], r["val_loss_by_source"][source]) for r in records if source in r.get("val_loss_by_source", {})]
        axes.plot(*zip(*points), ".--", label=f"val: {source}")
    reference = [(r["step"], r["val_loss_reference"]) for r in records if "val_loss_reference" in r]
    if reference:
        axes.plot(*zip(*reference), "s-", label="reference set")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def report_markdown(summary: dict[str, Any], png: bytes) -> str:
    mfu = summary.get("mfu")
    rows = [
        ("loss", f"{summary['first_loss']:.3f} → {summary['last_loss']:.3f}" if summary.get("first_loss") is not None else "-"),
        ("validation loss", f"{summary['val_loss']:.3f}" if summary.get("val_loss") is not None else "-"),
        *((f"validation loss: {source}", f"{loss:.3f}") for source, loss in (summary.get("val_loss_by_source") or {}).items()),
        *([("reference set loss", f"{summary['val_loss_reference']:.3f}")] if summary.get("val_loss_reference") is not None else []),
        ("steps / tokens", f"{summary['steps']} / {summary['tokens']:,}"),
        ("tokens/s", f"{summary['tokens_per_s']:,.0f} ({summary['world_size']} × {summary['device']}, {summary.get('precision')})"),
        ("MFU", f"{100 * mfu:.1f}% ({summary['run'].get('peak_flops_source')})" if mfu is not None else "-"),
        ("peak memory", f"{summary.get('peak_mem_gib', 0):.2f} GiB per process"),
        ("parameters", f"{summary['parameters']:,} ({summary['preset']})"),
        ("resumed from", summary.get("resumed_from") or "-"),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    image = base64.b64encode(png).decode()
    return f"## Pretraining\n\n![loss curve](data:image/png;base64,{image})\n\n{table}\n"


@task(task_run_name="torchrun-{train.preset}", cache_policy=NO_CACHE)
def torchrun_task(tokens_dir: str, run_dir: str, train: TrainSpec, launch: Launch | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    artifact_id = create_progress_artifact(0.0, key="pretrain-progress", description=f"training steps done ({run_dir})")
    shown = {"percent": 0.0, "time": 0.0}

    def progress(step: int, total: int) -> None:
        percent = 100.0 * step / total
        # At most about one update a second (a server round trip each), and always the last one.
        if step == total or (percent > shown["percent"] and time.time() - shown["time"] > 1.0):
            update_progress_artifact(artifact_id, percent)
            shown.update(percent=percent, time=time.time())

    launch = launch or Launch()
    summary = run_torchrun(tokens_dir, run_dir, train, log=logger.info, progress=progress, launch=launch)
    if launch.node_rank > 0:
        return summary  # node 0 reports the run
    png = loss_curve_png(Path(run_dir))
    (Path(run_dir) / "loss_curve.png").write_bytes(png)
    create_markdown_artifact(report_markdown(summary, png), key="pretrain-report", description="loss curve and throughput")
    return summary


@task(task_run_name="fetch-tokens", cache_policy=NO_CACHE)
def fetch_tokens_task(url: str, run_dir: str) -> str:
    """A published token-shard folder (s3://.../tokens) into RUN_DIR/tokens, checked file by file
    against its manifest; an up-to-date copy is not fetched again."""
    return str(fetch_folder(url, Path(run_dir) / "tokens", progress=get_run_logger().info))


@flow(name="pretrain", flow_run_name="pretrain-{run_dir}")
def pretrain(
    tokens_dir: str,
    run_dir: str,
    train: dict[str, Any] | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """Pretrain on a token-shard folder with torchrun (gloo on CPU, NCCL on GPU). The folder may be
    a URL of a published build's tokens/ (pipeline/storage.py). `train` holds only the settings
    the user set (the others come from the preset); with nnodes > 1, run it on every node with its
    node_rank and node 0's rdzv_endpoint HOST:PORT."""
    launch = Launch(nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    if is_remote(tokens_dir):
        tokens_dir = fetch_tokens_task(tokens_dir, run_dir)
    return torchrun_task(tokens_dir, run_dir, TrainSpec(**(train or {})), launch)
