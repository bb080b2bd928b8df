"""The pretraining flow: the trainer (model/train.py) launched through torchrun, its output streamed
into the Prefect logs, its exit status the task's state. In the Prefect UI the task shows a progress
artifact (updated as steps complete) and, at the end, a markdown artifact with the loss curve and
the run's figures (loss, tokens/s, MFU, peak memory). Rerunning the flow on the same run folder
resumes from its newest complete checkpoint (the trainer's default)."""

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

from pipeline.spec import TrainSpec
from pipeline.storage import fetch_folder, is_remote


def torchrun_command(tokens_dir: str, run_dir: str, train: TrainSpec) -> list[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", str(train.nproc),
        "-m", "model.train",
        "--data", tokens_dir,
        "--out", run_dir,
        "--preset", train.preset,
        "--steps", str(train.steps),
        "--seq-len", str(train.seq_len),
        "--batch-size", str(train.batch_size),
        "--grad-accum", str(train.grad_accum),
        "--warmup", str(train.warmup_steps),
        "--seed", str(train.seed),
        "--log-every", str(train.log_every),
        "--eval-every", str(train.eval_every),
        "--ckpt-every", str(train.ckpt_every),
    ]
    if train.lr is not None:
        command += ["--lr", str(train.lr)]
    return command + list(train.extra_args)


STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")


def run_torchrun(
    tokens_dir: str,
    run_dir: str,
    train: TrainSpec,
    log: Callable[[str], Any] = print,
    timeout_s: float | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Run the trainer to completion, streaming its lines to `log` and (step, total) to `progress`;
    returns its summary.json."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    stale = set_aside_stale_run(tokens_dir, run_dir, train)
    if stale:
        log(stale)
    command = torchrun_command(tokens_dir, run_dir, train)
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
    return json.loads((Path(run_dir) / "summary.json").read_text())


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
    meta = read_meta(ckpt)
    digest = TokenShards(tokens_dir).manifest_digest
    reasons = []
    if not str(meta.get("data_loader", {}).get("data", "")).endswith(digest):
        reasons.append("the token shards changed")
    if meta.get("config", {}).get("preset") != train.preset or meta.get("run", {}).get("seq_len") != train.seq_len:
        reasons.append("the preset or sequence length changed")
    if not reasons:
        return None
    previous = run / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for name in ("checkpoints", "metrics.jsonl", "summary.json", "loss_curve.png"):
        if (run / name).exists():
            (run / name).rename(previous / name)
    return f"{' and '.join(reasons)} since {ckpt}: moved that run to {previous}, training afresh"


def loss_curve_png(run_dir: Path) -> bytes:
    """The training and validation loss against the step, from metrics.jsonl, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker threads

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss")
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        axes.plot(*zip(*val), "o-", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def report_markdown(summary: dict[str, Any], png: bytes) -> str:
    mfu = summary.get("mfu")
    rows = [
        ("loss", f"{summary['first_loss']:.3f} → {summary['last_loss']:.3f}" if summary.get("first_loss") is not None else "-"),
        ("validation loss", f"{summary['val_loss']:.3f}" if summary.get("val_loss") is not None else "-"),
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
def torchrun_task(tokens_dir: str, run_dir: str, train: TrainSpec) -> dict[str, Any]:
    logger = get_run_logger()
    artifact_id = create_progress_artifact(0.0, key="pretrain-progress", description=f"training steps done ({run_dir})")
    shown = {"percent": 0.0, "time": 0.0}

    def progress(step: int, total: int) -> None:
        percent = 100.0 * step / total
        # At most about one update a second (a server round trip each), and always the last one.
        if step == total or (percent > shown["percent"] and time.time() - shown["time"] > 1.0):
            update_progress_artifact(artifact_id, percent)
            shown.update(percent=percent, time=time.time())

    summary = run_torchrun(tokens_dir, run_dir, train, log=logger.info, progress=progress)
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
def pretrain(tokens_dir: str, run_dir: str, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain on a token-shard folder with torchrun (gloo on CPU, NCCL on GPU). The folder may be
    a URL of a published build's tokens/ (pipeline/storage.py)."""
    if is_remote(tokens_dir):
        tokens_dir = fetch_tokens_task(tokens_dir, run_dir)
    return torchrun_task(tokens_dir, run_dir, TrainSpec(**(train or {})))
