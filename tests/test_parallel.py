"""The device mesh (model/parallelize.py, issue 17): --pp x --dp-replicate x --dp-shard x --tp
processes, pipeline stages (model/pipeline.py), FSDP2 / HSDP on the data-parallel dims, tensor +
sequence parallel on attention and SwiGLU. On CPU with gloo and the real trainer under torchrun:
4 processes as 2 x 2 (data x tensor parallel, the head + loss split along the sequence) and as 4 x 1
(flat FSDP2) train the curve one process trains over the same global batch, and a DCP checkpoint
written on the 2 x 2 mesh resumes as 2 x 2 HSDP with the same curve. Pipeline parallel: 2 stages on
2 processes, 2 stages x FSDP2 over 2 and 2 stages x tensor parallel over 2 on 4 train the
one-process curve (and the validation losses where the data-parallel ranks are the same: one); a
2-stage checkpoint resumes on one process, and a one-process checkpoint as 2 stages x HSDP 2. Tolerance: float32 rounding — losses, gradient norms
and validation losses within a relative 1e-5 (measured: 1e-7 or bit for bit), weights within 1e-5
(measured: 1.2e-7)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import latest_checkpoint, load_model_state
from model.distributed import materialize
from model.llama import ModelArgs, Transformer
from model.parallelize import MeshDims, mesh_dims
from model.pipeline import keep_stage, stage_layers
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
    assert run["mesh"] == {"pp": 1, "dp_replicate": 8, "dp_shard": 8, "tp": 8} and run["tokens_per_step"] == 4 * 2**20
    lines = plan_lines(run)
    assert "parallel: mesh 8 x 8 x 8 (dp-replicate 8, dp-shard 8, tp 8): FSDP2 over 8, HSDP 8 replicas, tensor + sequence parallel over 8" in lines[1]
    assert "micro-batch 8 x accumulation 4 x 64 data-parallel ranks x 2048 tokens = 4,194,304 tokens per step" in lines[2]
    with pytest.raises(ValueError, match="--tp 3 must divide the model's attention heads"):
        resolve(TrainConfig(data=Path("."), out=Path("."), preset="7B", tp=3), None, 6)


def test_pipeline_mesh_dims_the_plan_and_its_refusals():
    assert mesh_dims(8, pp=2) == MeshDims(1, 4, 1, pp=2)
    dims = mesh_dims(16, pp=2, dp_replicate=2, tp=2)  # (pp, dp_replicate, dp_shard, tp) = (2, 2, 2, 2)
    assert dims == MeshDims(2, 2, 2, pp=2) and dims.world == 16 and dims.dp == 4
    # Rank 13 = stage 1, data-parallel rank 2: the same batches as rank 5 (stage 0) and its TP partner 12.
    assert (dims.pp_rank(13), dims.dp_rank(13)) == (1, 2) and dims.dp_rank(5) == dims.dp_rank(12) == 2
    with pytest.raises(ValueError, match="--pp 4 x --dp-replicate 1 x --tp 1 does not divide the 6 processes"):
        mesh_dims(6, pp=4)
    # 65B (80 layers) on 64 GPUs as 4 stages x FSDP2 over 16: 128 sequences per data-parallel rank.
    run = resolve(TrainConfig(data=Path("."), out=Path("."), preset="65B", pp=4), None, 64)
    assert run["mesh"] == {"pp": 4, "dp_replicate": 1, "dp_shard": 16, "tp": 1} and run["tokens_per_step"] == 4 * 2**20
    lines = plan_lines(run)
    assert ("parallel: mesh 4 x 1 x 16 x 1 (pp 4, dp-replicate 1, dp-shard 16, tp 1): pipeline 4 stages (1F1B, "
            "16 micro-batches, bubble 15.8%), FSDP2 over 16") in lines[1]
    assert "micro-batch 8 x accumulation 16 x 16 data-parallel ranks x 2048 tokens = 4,194,304 tokens per step" in lines[2]
    # The accumulation is the pipeline's micro-batches: derived >= pp (4 x 2, not 8 x 1, for 8 sequences on 2 stages).
    tiny = dict(data=Path("."), out=Path("."), preset="tiny", seq_len=64, batch_tokens=512)
    run = resolve(TrainConfig(**tiny, pp=2), 64, 2)
    assert (run["batch_size"], run["grad_accum"], run["tokens_per_step"]) == (4, 2, 512)
    for refused in (TrainConfig(**tiny, pp=2, grad_accum=1), TrainConfig(**(tiny | {"batch_tokens": None}), pp=2, batch_size=8, grad_accum=1)):
        with pytest.raises(ValueError, match="--grad-accum 1 with --pp 2: .* use --grad-accum 2 or more"):
            resolve(refused, 64, 2)
    with pytest.raises(ValueError, match="gives each of the 1 data-parallel ranks 2 sequences, fewer than the 4 micro-batches .* "
                                         "use --batch-tokens 256 or more, or --pp 2 or fewer"):
        resolve(TrainConfig(**(tiny | {"batch_tokens": 128}), pp=4), 64, 4)
    with pytest.raises(ValueError, match=r"--pp 3 must divide the model's 32 layers \(equal stages\): use --pp 2 or 4 or 8"):
        resolve(TrainConfig(data=Path("."), out=Path("."), preset="7B", pp=3), None, 6)
    dims = resolve(TrainConfig(data=Path("."), out=Path("."), preset="7B", pp=4, tp=8), None, 64)["mesh"]  # TP inside stages
    assert dims == {"pp": 4, "dp_replicate": 1, "dp_shard": 2, "tp": 8}


def test_a_pipeline_stage_keeps_its_blocks_under_their_names_and_one_process_weights():
    """Stage 1 of 2 keeps blocks 2-3, the final norm and the head, under Meta's names, and
    materialize draws the whole model's parameters in order: the stage's weights are one process's."""
    args = ModelArgs(dim=32, n_layers=4, n_heads=4, vocab_size=50, multiple_of=16, max_seq_len=16)
    whole = materialize(Transformer(args), torch.device("cpu"), seed=3)
    with torch.device("meta"):
        stage = Transformer(args)
    order = [(name, p.shape) for name, p in stage.named_parameters()]
    stage = materialize(keep_stage(stage, pp=2, stage=1), torch.device("cpu"), seed=3, whole_model=order)
    assert list(stage_layers(4, 2, 1)) == [2, 3] and stage.tok_embeddings is None and list(stage.layers) == ["2", "3"]
    names = dict(stage.named_parameters())
    assert {n.split(".")[1] for n in names if n.startswith("layers.")} == {"2", "3"} and "output.weight" in names
    for name, param in names.items():
        assert torch.equal(param, dict(whole.named_parameters())[name]), name
    # The stage runs on the previous stage's hidden state and ends in the fused head + loss.
    tokens = torch.randint(0, 50, (2, 16))
    first = keep_stage(materialize(Transformer(args), torch.device("cpu"), seed=3), pp=2, stage=0)
    assert stage(first(tokens), tokens).item() == pytest.approx(whole(tokens, tokens).item(), rel=1e-6)


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


def assert_same_validation(run: Path, reference: Path) -> None:
    got, want = records(run), {r["step"]: r for r in records(reference)}
    evaluated = [r for r in got if "val_loss" in r]
    assert evaluated and all(r["val_loss"] == pytest.approx(want[r["step"]]["val_loss"], rel=1e-5) for r in evaluated)


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
    """`llama-recipe pretrain` passes the mesh (--pp too), the checkpoint and eval intervals, and any trainer
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
    staged = CliRunner().invoke(app, [*base, "--preset", "65B", "--nproc", "8", "--nnodes", "8", "--rdzv-endpoint", "h:1",
                                      "--pp", "8", "--batch-size", "1"])
    assert staged.exit_code == 0, staged.output
    assert "pipeline 8 stages (1F1B, 256 micro-batches, bubble 2.7%), FSDP2 over 8" in staged.output and " --pp 8" in staged.output
    for bad, message in ((["--train", "nope=1"], "KEY a trainer option"), (["--train", "compile=maybe"], "is a flag"),
                         (["--preset", "7B", "--nproc", "3"], "does not split over 3 processes"),
                         (["--preset", "7B", "--nproc", "6", "--pp", "3"], "--pp 3 must divide the model's 32 layers")):
        refused = CliRunner().invoke(app, [*base, *bad])
        assert refused.exit_code != 0 and message in refused.output, refused.output


EVALUATED = ["--eval-every", "3"]  # validation at steps 3 and 6 (through the stages under --pp)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    """The reference for the pipeline runs: one process, micro-batch 4 x accumulation 2 — the same
    global batch, and the same validation batches as a pipeline on one data-parallel rank."""
    one = tmp_path_factory.mktemp("pipeline_reference") / "one"
    train(data, one, "--batch-size", "4", *EVALUATED)
    return one


@pytest.mark.slow
def test_pipeline_stages_train_the_single_process_curve_and_resume_across_meshes(data, one_process, tmp_path):
    """--pp 2 with the real trainer on gloo: the stages' curve is one process's over the same global
    batch, evaluation goes through the stages, and checkpoints cross meshes both ways."""
    pp = tmp_path / "pp"
    done = train(data, pp, "--pp", "2", *EVALUATED, nproc=2)
    assert "mesh 2 x 1 x 1 x 1 (pp 2, dp-replicate 1, dp-shard 1, tp 1): pipeline 2 stages (1F1B, 2 micro-batches" in done.stdout
    assert "micro-batch 4 x accumulation 2 x 1 data-parallel ranks" in done.stdout
    assert_same_curve(pp, one_process, list(range(1, 7)))
    assert_same_validation(pp, one_process)
    # 2 stages x FSDP2 over 2 ranks each: 2 data-parallel ranks x micro-batch 2 x 2 micro-batches.
    sharded = tmp_path / "pp_fsdp"
    done = train(data, sharded, "--pp", "2", nproc=4)
    assert "mesh 2 x 1 x 2 x 1 (pp 2, dp-replicate 1, dp-shard 2, tp 1)" in done.stdout
    assert "micro-batch 2 x accumulation 2 x 2 data-parallel ranks" in done.stdout
    assert_same_curve(sharded, one_process, list(range(1, 7)))
    # The 2-stage checkpoint of step 3 (each stage wrote its own keys) continues on one process ...
    run = resumed_from(pp, "step-000003", tmp_path / "pp_to_one")
    done = train(data, run, *EVALUATED)
    assert "at step 3" in done.stdout and "micro-batch 4 x accumulation 2 x 1 processes" in done.stdout
    assert_same_curve(run, one_process, list(range(1, 7)))
    assert_same_validation(run, one_process)
    # ... and the one-process checkpoint continues as 2 stages x HSDP 2 replicas.
    run = resumed_from(one_process, "step-000003", tmp_path / "one_to_pp_hsdp")
    done = train(data, run, "--pp", "2", "--dp-replicate", "2", nproc=4)
    assert "at step 3" in done.stdout and "mesh 2 x 2 x 1 x 1 (pp 2, dp-replicate 2, dp-shard 1, tp 1)" in done.stdout
    assert_same_curve(run, one_process, list(range(1, 7)))


@pytest.mark.slow
def test_tensor_parallel_inside_pipeline_stages_trains_the_single_process_curve(data, one_process, tmp_path):
    """--pp 2 --tp 2 on 4 processes: each stage tensor + sequence parallel over 2 ranks, each rank
    passing its half of the sequence to the same rank of the next stage; the curve, the weights and
    the validation losses are one process's."""
    run = tmp_path / "pp_tp"
    done = train(data, run, "--pp", "2", "--tp", "2", *EVALUATED, nproc=4)
    assert "mesh 2 x 1 x 1 x 2 (pp 2, dp-replicate 1, dp-shard 1, tp 2): pipeline 2 stages" in done.stdout
    assert "tensor + sequence parallel over 2" in done.stdout and "could not be resolved" not in done.stderr
    assert_same_curve(run, one_process, list(range(1, 7)))
    assert_same_validation(run, one_process)
