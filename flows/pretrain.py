"""The pretraining flow: the trainer (model/train.py) launched through torchrun, its output streamed
into the Prefect logs, its exit status the task's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.spec import TrainSpec


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


def run_torchrun(tokens_dir: str, run_dir: str, train: TrainSpec, log=print, timeout_s: float | None = None) -> dict[str, Any]:
    """Run the trainer to completion, streaming its lines to `log`; returns its summary.json."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
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
            if timeout_s and time.time() - started > timeout_s:
                process.kill()
                raise TimeoutError(f"training exceeded {timeout_s:.0f} s")
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"torchrun exited with status {code}")
    return json.loads((Path(run_dir) / "summary.json").read_text())


@task(task_run_name="torchrun-{train.preset}", cache_policy=NO_CACHE)
def torchrun_task(tokens_dir: str, run_dir: str, train: TrainSpec) -> dict[str, Any]:
    logger = get_run_logger()
    return run_torchrun(tokens_dir, run_dir, train, log=logger.info)


@flow(name="pretrain", flow_run_name="pretrain-{run_dir}")
def pretrain(tokens_dir: str, run_dir: str, train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain on a token-shard folder with torchrun (gloo on CPU, NCCL on GPU)."""
    return torchrun_task(tokens_dir, run_dir, TrainSpec(**(train or {})))
