"""The device mesh (model/parallelize.py, issue 17): --dp-replicate x --dp-shard x --tp processes,
FSDP2 / HSDP on the data-parallel dims, tensor + sequence parallel on attention and SwiGLU. On CPU
with gloo and the real trainer under torchrun: 4 processes as 2 x 2 (data x tensor parallel, the
head + loss split along the sequence) and as 4 x 1 (flat FSDP2) train the curve one process trains
over the same global batch, and a DCP checkpoint written on the 2 x 2 mesh resumes as 2 x 2 HSDP with
the same curve. Tolerance: float32 rounding —
losses and gradient norms within a relative 1e-5 (measured: 1e-7), weights within 1e-5."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import latest_checkpoint, load_model_state
from model.parallelize import MeshDims, mesh_dims
from model.train import TrainConfig, plan_lines, resolve
from tests.test_train import counting_docs, run_subprocess, torchrun, write_token_shards
from tests.test_train_resume import explain, records

ARGS = ["--preset", "tiny", "--steps", "6", "--seq-len", "64", "--batch-tokens", "512", "--lr", "2e-3", "--warmup", "2",
        "--log-every", "1", "--eval-every", "0", "--ckpt-every", "3", "--precision", "fp32"]


def test_mesh_dims_and_the_plan():
    assert mesh_dims(8) == MeshDims(1, 8, 1)
    assert mesh_dims(64, dp_replicate=4, tp=8) == MeshDims(4, 2, 8)
    assert mesh_dims(16, dp_replicate=2, dp_shard=4, tp=2).dp_rank(13) == 6  # ranks 12, 13 share the batch of dp rank 6
    with pytest.raises(ValueError, match="= 8 processes, but the run has 4"):
        mesh_dims(4, dp_replicate=2, dp_shard=2, tp=2)
    with pytest.raises(ValueError, match="--dp-replicate 1 x --tp 3 does not divide the 4 processes"):
        mesh_dims(4, tp=3)
    cfg = TrainConfig(data=Path("."), out=Path("."), preset="65B", dp_replicate=8, tp=8)  # 8 nodes x 8 GPUs
    run = resolve(cfg, None, 512)
    assert run["mesh"] == {"dp_replicate": 8, "dp_shard": 8, "tp": 8} and run["tokens_per_step"] == 4 * 2**20
    lines = plan_lines(run)
    assert "parallel: mesh 8 x 8 x 8 (dp-replicate 8, dp-shard 8, tp 8): FSDP2 over 8, HSDP 8 replicas, tensor + sequence parallel over 8" in lines[1]
    assert "micro-batch 8 x accumulation 4 x 64 data-parallel ranks x 2048 tokens = 4,194,304 tokens per step" in lines[2]
    with pytest.raises(ValueError, match="--tp 3 must divide the model's attention heads"):
        resolve(TrainConfig(data=Path("."), out=Path("."), preset="7B", tp=3), None, 6)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), {"train": counting_docs(200, 40), "val": counting_docs(20, 40, seed=1)})


def train(data: Path, out: Path, *extra: str, nproc: int | None = None):
    launcher = torchrun(nproc) if nproc else [sys.executable]
    done = run_subprocess(launcher + ["-m", "model.train", "--data", str(data), "--out", str(out), *ARGS, *extra], timeout=240)
    assert done.returncode == 0, explain(done)
    return done


def assert_same_curve(run: Path, reference: Path, steps: list[int]) -> None:
    got, want = records(run), {r["step"]: r for r in records(reference)}
    assert [r["step"] for r in got] == steps
    for r in got:
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=1e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(want[r["step"]]["grad_norm"], rel=1e-5), r["step"]
        assert r["tokens_seen"] == want[r["step"]]["tokens_seen"] and r["lr"] == want[r["step"]]["lr"]
    _, weights, _ = load_model_state(latest_checkpoint(run))
    _, expected, _ = load_model_state(latest_checkpoint(reference))
    assert max((weights[k] - v).abs().max().item() for k, v in expected.items()) < 1e-5


def resumed_from(run: Path, step: str, out: Path) -> Path:
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / step, out / "checkpoints" / step)
    shutil.copy(run / "metrics.jsonl", out / "metrics.jsonl")
    return out


@pytest.mark.slow
def test_tensor_parallel_and_hsdp_train_the_single_process_curve_and_resume_across_meshes(data, tmp_path):
    one = tmp_path / "one"
    train(data, one)  # micro-batch 8 on 1 process
    tp = tmp_path / "tp"
    done = train(data, tp, "--tp", "2", nproc=4)  # 2 data-parallel ranks x micro-batch 4, each split over 2 TP ranks
    assert "mesh 1 x 2 x 2" in done.stdout and "micro-batch 4 x accumulation 1 x 2 data-parallel ranks" in done.stdout
    assert_same_curve(tp, one, list(range(1, 7)))
    # Flat FSDP2 over the 4 processes (4 x 1), from scratch: the same curve.
    flat = tmp_path / "flat"
    done = train(data, flat, nproc=4)
    assert "world 4 on cpu" in done.stdout and "parallel: mesh" not in done.stdout  # no plan line: plain FSDP2
    assert "micro-batch 2 x accumulation 1 x 4 processes" in done.stdout
    assert_same_curve(flat, one, list(range(1, 7)))
    # The TP run's step-3 checkpoint (2-D DTensor shards) continues as HSDP 2 x 2.
    run = resumed_from(tp, "step-000003", tmp_path / "hsdp")
    done = train(data, run, "--dp-replicate", "2", nproc=4)
    assert "at step 3" in done.stdout and "micro-batch 2 x accumulation 1 x 4 processes" in done.stdout
    assert_same_curve(run, one, list(range(1, 7)))


def test_pretrain_cli_passes_mesh_dims_intervals_and_any_trainer_option(tmp_path):
    """`llama-recipe pretrain` passes the mesh, the checkpoint and eval intervals, and any trainer
    option as --train KEY=VALUE (checked against the trainer's parser); the plan shows the mesh."""
    from typer.testing import CliRunner

    from flows.cli import app

    base = ["pretrain", "--tokens", str(tmp_path / "tokens"), "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(app, [*base, "--preset", "65B", "--nproc", "8", "--nnodes", "8", "--rdzv-endpoint", "h:1",
                                      "--tp", "8", "--batch-size", "1", "--ckpt-every", "500", "--eval-every", "250",
                                      "--train", "spike_rollback=true", "--train", "max-skipped-steps=10", "--train", "compile=false",
                                      "--train", "async_checkpoint=true", "--train", "tensorboard=false"])
    assert result.exit_code == 0, result.output
    assert "plan: parallel: mesh 1 x 8 x 8 (dp-replicate 1, dp-shard 8, tp 8)" in result.output
    assert "micro-batch 1 x accumulation 256 x 8 data-parallel ranks x 2048 tokens = 4,194,304 tokens per step" in result.output
    command = next(line for line in result.output.splitlines() if line.startswith("torchrun: ")).split()
    trainer = command[command.index("model.train") + 1:]
    assert trainer[trainer.index("--tp") + 1] == "8" and trainer[trainer.index("--ckpt-every") + 1] == "500"
    assert trainer[trainer.index("--eval-every") + 1] == "250" and trainer[trainer.index("--max-skipped-steps") + 1] == "10"
    assert "--spike-rollback" in trainer and "--compile" not in trainer
    assert "--async-checkpoint" in trainer and "--no-tensorboard" in trainer
    for bad, message in ((["--train", "nope=1"], "KEY a trainer option"), (["--train", "compile=maybe"], "is a flag"),
                         (["--preset", "7B", "--nproc", "3"], "does not split over 3 processes")):
        refused = CliRunner().invoke(app, [*base, *bad])
        assert refused.exit_code != 0 and message in refused.output, refused.output
