"""Checkpoints and resume (model/checkpoint.py, model/train.py): DCP round trip, atomic commits, and
runs killed with SIGKILL — in the middle of a step, in the middle of a checkpoint write — that
resume from the newest complete checkpoint and reproduce the uninterrupted loss curve bit for bit
(issue 6 item 4, issue 8 item 3). Also resume on another world size, and a two-node rendezvous."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from model.checkpoint import (
    Checkpointer,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    remove_partial,
    save_checkpoint,
)
from model.distributed import DistEnv, apply_activation_checkpointing
from model.llama import ModelArgs, Transformer
from model.train import keep_global_batch, lr_scheduler, param_groups
from tests.test_train import REPO, counting_docs, run_subprocess, torchrun, write_token_shards

ENV1 = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
ARGS = ModelArgs(dim=32, n_layers=2, n_heads=2, vocab_size=40, max_seq_len=16)


def trained(args: ModelArgs = ARGS, steps: int = 2, mode: str = "none"):
    torch.manual_seed(0)
    model = apply_activation_checkpointing(Transformer(args), mode)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-5)
    scheduler = lr_scheduler(optimizer, 1, 10, 0.1)
    for _ in range(steps):
        tokens = torch.randint(0, args.vocab_size, (2, 16))
        model(tokens, tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model, optimizer, scheduler


def test_checkpoint_round_trip_in_one_process(tmp_path):
    model, optimizer, scheduler = trained(mode="selective")  # wrapper names must not leak into the checkpoint
    ckpt = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, ARGS, ENV1, extra={"tokens_seen": 64})
    rng_after_save = torch.get_rng_state()
    saved = FileSystemReader(ckpt).read_metadata().state_dict_metadata
    assert "model.layers.0.attention.wq.weight" in saved and "optim.layers.1.feed_forward.w2.weight.exp_avg_sq" in saved
    assert all(isinstance(m, TensorStorageMetadata) for m in saved.values())  # nothing pickled

    fresh_model, fresh_opt, fresh_sched = trained(steps=0)
    torch.manual_seed(123)  # another RNG position: the load must restore the saved one
    meta = load_checkpoint(ckpt, fresh_model, fresh_opt, fresh_sched, ARGS, ENV1)
    assert meta["step"] == 2 and meta["tokens_seen"] == 64
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    for (name, a), b in zip(model.state_dict().items(), fresh_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh_sched.last_epoch == 2 and fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for a, b in zip(optimizer.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))

    # Only committed folders count: a crashed save's .partial folder and a folder without meta.json do not.
    (tmp_path / "checkpoints" / ".step-000004.partial").mkdir()
    shutil.copytree(ckpt, tmp_path / "checkpoints" / "step-000006")
    (tmp_path / "checkpoints" / "step-000006" / "meta.json").unlink()
    assert latest_checkpoint(tmp_path) == ckpt
    assert [p.name for p in remove_partial(tmp_path)] == [".step-000004.partial"]

    args, state, _ = load_model_state(ckpt)
    assert args == ARGS and set(state) == set(Transformer(ARGS).state_dict())

    with pytest.raises(CheckpointError, match="saved for model"):
        other = ModelArgs(**{**ARGS.__dict__, "n_layers": 3})
        load_checkpoint(ckpt, *trained(other, steps=0), other, ENV1)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_model_state(tmp_path / "checkpoints" / "step-000006")


def test_an_async_checkpoint_holds_the_state_of_its_step_while_training_goes_on(tmp_path):
    """--async-checkpoint: save() returns once the state is copied; weights changed meanwhile do
    not reach the files; the checkpoint is committed (meta.json, renamed) once the thread is done."""
    model, optimizer, scheduler = trained()
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    checkpoints = Checkpointer(tmp_path, ENV1, asynchronous=True, keep_last=1, keep_every=0)
    checkpoints.save(2, model, optimizer, scheduler, ARGS, {"tokens_seen": 64})
    with torch.no_grad():  # training goes on while the thread writes
        for param in model.parameters():
            param.add_(1.0)
    assert latest_checkpoint(tmp_path) in (None, tmp_path / "checkpoints" / "step-000002")  # never a half one
    assert checkpoints.wait() == tmp_path / "checkpoints" / "step-000002" == latest_checkpoint(tmp_path)
    fresh_model, fresh_opt, fresh_sched = trained(steps=0)
    assert load_checkpoint(latest_checkpoint(tmp_path), fresh_model, fresh_opt, fresh_sched, ARGS, ENV1)["step"] == 2
    for name, tensor in fresh_model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    checkpoints.save(3, model, optimizer, scheduler, ARGS, {"tokens_seen": 96})  # waits for nothing, prunes step 2
    checkpoints.wait()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a tag as TensorBoard shows it: its own reader, purges applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def float32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()  # TensorBoard stores scalars as float32


# ---------------------------------------------------------------------------------------------
# Killed and resumed runs: torchrun, 2 processes, FSDP2 over gloo, fp32, one thread each.

STEPS = 12
TRAIN_ARGS = ["--preset", "tiny", "--steps", str(STEPS), "--seq-len", "64", "--batch-size", "4", "--grad-accum", "2",
              "--lr", "2e-3", "--warmup", "2", "--log-every", "1", "--eval-every", "6", "--ckpt-every", "4",
              "--precision", "fp32", "--deterministic"]


def train_cmd(data: Path, out: Path, *extra: str, nproc: int | None = 2) -> list[str]:
    launcher = torchrun(nproc) if nproc else [sys.executable]
    return launcher + ["-m", "model.train", "--data", str(data), "--out", str(out), *TRAIN_ARGS, *extra]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


CURVE = ("step", "loss", "lr", "grad_norm", "tokens_seen")


def curve(run: Path) -> list[tuple]:
    return [tuple(r[k] for k in CURVE) + (r.get("val_loss"),) for r in records(run)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), {"train": counting_docs(200, 40), "val": counting_docs(20, 40, seed=1)})


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    done = run_subprocess(train_cmd(data, out))
    assert done.returncode == 0, explain(done)
    assert [r["step"] for r in records(out)] == list(range(1, STEPS + 1))
    return out


def explain(result: subprocess.CompletedProcess) -> str:
    """The end of the output plus every line that names an error (torchrun's summary alone hides them)."""
    errors = [line for line in result.stderr.splitlines() if any(w in line for w in ("Error", "error:", "terminate", "Abort"))]
    return "\n".join(errors[:40]) + "\n...\n" + result.stdout[-2000:] + result.stderr[-2000:]


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "killing rank" in result.stdout and "SIGKILL" in result.stdout + result.stderr


def assert_same_weights(a: Path, b: Path) -> None:
    _, state_a, _ = load_model_state(latest_checkpoint(a))
    _, state_b, _ = load_model_state(latest_checkpoint(b))
    for name, tensor in state_a.items():
        assert torch.equal(tensor, state_b[name]), name


@pytest.mark.slow
def test_killed_in_the_middle_of_a_step_resumes_bit_for_bit(data, reference, tmp_path):
    out = tmp_path / "run"
    # Rank 1 dies after step 7's backward pass; rank 0 is left waiting in a collective until
    # torchrun tears the group down. The newest complete checkpoint is step 4.
    killed = run_subprocess(train_cmd(data, out), env={"LLAMA_RECIPE_KILL_AT": "step:7@1"})
    assert_killed(killed)
    assert latest_checkpoint(out).name == "step-000004"
    assert [r["step"] for r in records(out)] == list(range(1, 7))  # what the lost attempt logged

    resumed = run_subprocess(train_cmd(data, out))  # the same command: resume is automatic
    assert resumed.returncode == 0, explain(resumed)
    assert "resumed from" in resumed.stdout and "step-000004 at step 4" in resumed.stdout
    assert curve(out) == curve(reference)  # every loss, lr, grad norm and val loss, exactly
    assert_same_weights(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-000004") and summary["first_loss"] == records(reference)[0]["loss"]


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_bit_for_bit(data, reference, tmp_path):
    out = tmp_path / "run"
    # Both ranks die after writing their step-8 shards, before the checkpoint is committed.
    killed = run_subprocess(train_cmd(data, out), env={"LLAMA_RECIPE_KILL_AT": "ckpt:8"})
    assert_killed(killed)
    partial = out / "checkpoints" / ".step-000008.partial"
    assert (partial / ".metadata").is_file() and not (partial / "meta.json").exists()
    assert latest_checkpoint(out).name == "step-000004"  # the half-written one is never taken

    resumed = run_subprocess(train_cmd(data, out))
    assert resumed.returncode == 0, explain(resumed)
    assert "removed the incomplete checkpoint .step-000008.partial" in resumed.stdout
    assert not partial.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000008", "step-000012"]
    assert curve(out) == curve(reference)
    assert_same_weights(out, reference)


@pytest.mark.slow
def test_async_checkpoints_resume_bit_for_bit_after_a_kill_in_the_background_write(data, reference, tmp_path):
    """--async-checkpoint: both ranks die inside dcp.async_save's thread, once their step-8 shards
    are written and before DCP's .metadata is. The step-4 checkpoint, also written in the
    background, was committed; the half one never is. The resumed run reproduces the synchronous
    reference bit for bit, and TensorBoard shows each step once, the lost attempt's points purged."""
    out = tmp_path / "run"
    killed = run_subprocess(train_cmd(data, out, "--async-checkpoint"), env={"LLAMA_RECIPE_KILL_AT": "ckpt-write:8"})
    assert_killed(killed)
    assert "checkpoint step-000004 committed, written in the background" in killed.stdout
    partial = out / "checkpoints" / ".step-000008.partial"
    assert partial.is_dir() and not (partial / ".metadata").exists() and not (partial / "meta.json").exists()
    assert latest_checkpoint(out).name == "step-000004"

    resumed = run_subprocess(train_cmd(data, out, "--async-checkpoint"))
    assert resumed.returncode == 0, explain(resumed)
    assert "removed the incomplete checkpoint .step-000008.partial" in resumed.stdout
    assert "step-000004 at step 4" in resumed.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000008", "step-000012"]
    assert curve(out) == curve(reference)
    assert_same_weights(out, reference)
    want = records(reference)
    assert tensorboard_scalars(out, "train/loss") == [(r["step"], float32(r["loss"])) for r in want]
    assert tensorboard_scalars(out, "val/loss") == [(r["step"], float32(r["val_loss"])) for r in want if "val_loss" in r]


def without_batch_options(args: list[str]) -> list[str]:
    drop = {i + d for i, a in enumerate(args) if a in ("--batch-size", "--grad-accum") for d in (0, 1)}
    return [a for i, a in enumerate(args) if i not in drop]


def continued_from_step_4(reference: Path, run: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-000004", run / "checkpoints" / "step-000004")
    shutil.copy(reference / "metrics.jsonl", run / "metrics.jsonl")  # cut back to step 4 on resume
    return run


@pytest.mark.slow
def test_resume_on_another_world_size(data, reference, tmp_path):
    """DCP reshards: the 2-rank step-4 checkpoint continues in one process, its micro-batch and
    accumulation derived again to keep the global batch (4 x 2 x 2 ranks -> 4 x 4 x 1), and a
    1-process checkpoint continues on 2 ranks. Only the order of floating-point sums differs, so
    the curve matches to float32 rounding."""
    two_to_one = continued_from_step_4(reference, tmp_path / "two_to_one")
    launcher = [sys.executable, "-m", "model.train", "--data", str(data), "--out", str(two_to_one)]
    done = run_subprocess(launcher + without_batch_options(TRAIN_ARGS))
    assert done.returncode == 0, explain(done)
    assert "world 1" in done.stdout and "at step 4" in done.stdout
    assert ("global batch kept across world sizes: micro-batch 4 x accumulation 2 x 2 before, 4 x 4 x 1 now, "
            "1,024 tokens per step") in done.stdout

    one_to_two = tmp_path / "one_to_two"
    first = run_subprocess(train_cmd(data, one_to_two, "--batch-size", "8", "--ckpt-every", "6", nproc=None),
                           env={"LLAMA_RECIPE_KILL_AT": "step:7"})
    assert_killed(first)
    done = run_subprocess(train_cmd(data, one_to_two))
    assert done.returncode == 0, explain(done)
    assert "world 2" in done.stdout and "step-000006 at step 6" in done.stdout

    want = records(reference)
    for run in (two_to_one, one_to_two):
        got = records(run)
        assert [r["step"] for r in got] == list(range(1, STEPS + 1))
        assert [r["tokens_seen"] for r in got] == [r["tokens_seen"] for r in want]  # no sequence skipped or repeated
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
        assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in want], rel=1e-12)


def test_resume_refuses_a_batch_that_changes_the_global_batch(data, reference, tmp_path):
    """A --batch-size that cannot give the checkpoint's 1,024 tokens per step on this world size is
    refused before training, naming values that would; so is a world size that cannot."""
    run = continued_from_step_4(reference, tmp_path / "run")
    refused = run_subprocess([sys.executable, "-m", "model.train", "--data", str(data), "--out", str(run),
                              *without_batch_options(TRAIN_ARGS), "--batch-size", "3"])
    assert refused.returncode == 2
    assert ("--batch-size 3 on 1 processes cannot give the checkpoint's global batch of 1,024 tokens per step "
            "(16 sequences of 64): use --batch-size 1 --grad-accum 16 or --batch-size 2 --grad-accum 8 or "
            "--batch-size 4 --grad-accum 4") in refused.stderr
    assert records(run)[-1]["step"] > 4  # nothing trained, nothing cut
    with pytest.raises(ValueError, match="does not split over 3 processes; world sizes that keep it: 1, 2, 4, 8"):
        keep_global_batch(1024, 64, 3, None, None, 4)
    assert keep_global_batch(1024, 64, 4, None, None, 4) == (4, 1)
    assert keep_global_batch(1024, 64, 1, None, 2, 4) == (8, 2)  # accumulation given: the micro-batch follows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_with_train(path: Path, train: dict) -> Path:
    """The demo spec with another `train` section."""
    raw = yaml.safe_load((REPO / "data_specs" / "demo.yaml").read_text())
    path.write_text(yaml.safe_dump(raw | {"train": train}, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_node_rendezvous_through_the_cli(prefect_server, data, reference, tmp_path):
    """Two `llama-recipe pretrain` commands, one process each, meeting at a c10d rendezvous endpoint
    as two nodes would (--nnodes 2 --node-rank N --rdzv-endpoint): the same 2-rank run as the
    single-node reference, so the same loss curve."""
    extra = [a for a in TRAIN_ARGS if a not in ("--preset", "tiny")]
    spec = spec_with_train(tmp_path / "spec.yaml", {"preset": "tiny", "nproc": 1, "extra_args": extra})
    out, port = tmp_path / "run", free_port()
    cli = str(Path(sys.executable).parent / "llama-recipe")
    launchers = [
        subprocess.Popen([cli, "pretrain", "--tokens", str(data), "--out", str(out), "--spec", str(spec), "--nnodes", "2",
                          "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}"],
                         cwd=REPO, env=run_env() | {"PREFECT_API_URL": prefect_server}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for rank in (0, 1)
    ]
    outputs = []
    for proc in launchers:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in launchers:
                os.killpg(p.pid, 9)
            pytest.fail("two-node rendezvous timed out")
    assert all(p.returncode == 0 for p in launchers), "\n".join(o[-3000:] for o in outputs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["run"]["world_size"] == 2
    assert curve(out) == curve(reference)


def run_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "LLAMA_RECIPE_KILL_AT"} | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
