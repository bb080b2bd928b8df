"""A run that survives NaNs and spikes (model/stability.py, issue 17): real training on CPU (gloo),
faults injected into real tensors by model/faults.py's LLAMA_RECIPE_FAULT — an inf or NaN gradient
skips the optimizer step on every rank and the run goes on, consecutive skips stop it, and a loss
spike is logged and, with --spike-rollback, rolled back to the newest checkpoint."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

import torch.distributed.checkpoint as dcp

from model.checkpoint import checkpoint_dir, load_model_state
from model.stability import SpikeDetector
from tests.test_train import counting_docs, run_subprocess, torchrun, write_token_shards
from tests.test_train_resume import explain, float32, records, tensorboard_scalars

ARGS = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "4", "--grad-accum", "2", "--lr", "2e-3", "--warmup", "2",
        "--log-every", "1", "--eval-every", "0", "--precision", "fp32", "--deterministic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), {"train": counting_docs(200, 40), "val": counting_docs(20, 40, seed=1)})


def train(data: Path, out: Path, *extra: str, fault: str | None = None, nproc: int | None = None):
    launcher = torchrun(nproc) if nproc else [sys.executable]
    return run_subprocess(launcher + ["-m", "model.train", "--data", str(data), "--out", str(out), *ARGS, *extra],
                          env={"LLAMA_RECIPE_FAULT": fault} if fault else None)


def optimizer_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (model and AdamW state), read in this process."""
    meta = FileSystemReader(ckpt).read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items() if isinstance(m, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=ckpt, no_dist=True)
    return state


@pytest.mark.slow
def test_an_inf_or_nan_gradient_skips_the_step_on_every_rank(data, tmp_path):
    """2 ranks (FSDP2): an inf in rank 1's gradient shard at step 3, a NaN on both at step 4. Both
    steps are skipped on both ranks — the weights and AdamW's state after step 4 are those after
    step 2, bit for bit — counted in metrics.jsonl, and training goes on."""
    out = tmp_path / "run"
    done = train(data, out, "--steps", "6", "--ckpt-every", "1", "--keep-last", "0", "--profile-steps", "3-4",
                 fault="grad-inf:3@1,grad-nan:4", nproc=2)
    assert done.returncode == 0, explain(done)
    # --profile-steps: a torch.profiler Chrome trace per rank, with the profiled steps as ranges.
    traces = sorted((out / "profile").iterdir())
    assert [t.name for t in traces] == ["steps-3-4-rank-00000.json", "steps-3-4-rank-00001.json"]
    events = json.loads(traces[1].read_text())["traceEvents"]
    assert {e["name"] for e in events if e.get("name", "").startswith("train step")} == {"train step 3", "train step 4"}
    assert any(e.get("name", "").startswith("Optimizer.zero_grad") for e in events)
    assert "step 3 skipped" in done.stdout and "step 4 skipped" in done.stdout
    got = {r["step"]: r for r in records(out)}
    assert [s for s, r in got.items() if r.get("skipped")] == [3, 4]
    assert got[3]["grad_norm"] is None and got[4]["grad_norm"] is None and math.isfinite(got[3]["loss"])
    assert [got[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]
    assert [got[s]["tokens_seen"] for s in range(1, 7)] == [1024 * s for s in range(1, 7)]  # the batches were consumed

    after = {step: optimizer_state(checkpoint_dir(out, step)) for step in (2, 3, 4, 5)}
    for step in (3, 4):
        assert after[step].keys() == after[2].keys()
        for name, tensor in after[2].items():
            assert torch.equal(after[step][name], tensor), (step, name)
    assert not torch.equal(after[5]["model.output.weight"], after[4]["model.output.weight"])  # step 5 trained
    _, weights, _ = load_model_state(checkpoint_dir(out, 6))
    assert all(torch.isfinite(t).all() for t in weights.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 2 and summary["last_loss"] < got[2]["loss"]


def test_consecutive_non_finite_steps_stop_the_run(data, tmp_path):
    out = tmp_path / "run"
    stopped = train(data, out, "--steps", "12", "--max-skipped-steps", "3", fault="grad-nan:3,grad-inf:4,grad-nan:5")
    assert stopped.returncode == 3, explain(stopped)
    assert ("3 consecutive steps (3-5) had a non-finite loss or gradient norm (--max-skipped-steps 3): stopped"
            in stopped.stderr)
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5] and records(out)[-1]["skipped_steps"] == 3
    assert not (out / "summary.json").exists()


@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_run_instead_of_hanging_the_others(data, tmp_path):
    """Rank 1 raises after step 4's backward pass while rank 0 goes on into the step's collectives:
    rank 1 exits with its error (no barrier in a teardown the others never reach) and torchrun stops
    rank 0 — seconds, not the process group's 30-minute timeout."""
    started = time.monotonic()
    failed = train(data, tmp_path / "run", "--steps", "12", fault="error:4@1", nproc=2)
    assert failed.returncode != 0
    assert "RuntimeError: LLAMA_RECIPE_FAULT: error at step 4 on rank 1" in failed.stdout + failed.stderr
    assert time.monotonic() - started < 120


SPIKE = ["--steps", "12", "--ckpt-every", "4", "--spike-window", "4"]


@pytest.mark.slow
def test_a_loss_spike_is_logged_and_rolled_back(data, tmp_path):
    """The output head is flipped and scaled before step 10's forward pass (a real, huge loss).
    Without --spike-rollback the spike is logged and the run carries the damage; with it the step
    is not applied, step 8's checkpoint is reloaded, and steps 9-12 train on the batches after the
    spike: the curve up to step 9 is the same, and it ends below the damaged run's, still falling."""
    logged, rolled = tmp_path / "logged", tmp_path / "rolled"
    # The rolled-back run writes its checkpoints in the background: the rollback waits for the newest.
    for out, extra in ((logged, []), (rolled, ["--spike-rollback", "--async-checkpoint"])):
        done = train(data, out, *SPIKE, *extra, fault="spike:10")
        assert done.returncode == 0, explain(done)
    before = records(logged)
    assert before[9]["loss_spike_z"] > 6 and before[9]["loss"] > 10 * before[8]["loss"]
    assert "loss spike at step 10" in done.stdout and "rolled back to step-000008" in done.stdout

    after = records(rolled)
    assert [r["step"] for r in after] == list(range(1, 13))  # cut back to step 8, then 9-12 again
    assert [r["loss"] for r in after[:8]] == [r["loss"] for r in before[:8]]
    assert after[8]["rolled_back_from"] == 10 and not any("loss_spike_z" in r for r in after)
    summary = json.loads((rolled / "summary.json").read_text())
    assert [(r["at_step"], r["to_step"]) for r in summary["rollbacks"]] == [(10, 8)]
    assert after[-1]["loss"] < after[7]["loss"] and after[-1]["loss"] < 0.5 * before[-1]["loss"]
    # TensorBoard, like metrics.jsonl, forgets the rolled-back steps 9-10 of the first pass.
    assert tensorboard_scalars(rolled, "train/loss") == [(r["step"], float32(r["loss"])) for r in after]


def test_spike_detector_zscore_over_the_window():
    spikes = SpikeDetector(window=4, zscore=6.0)
    assert [spikes.check(x) for x in (3.0, 2.8, 2.6, 2.4)] == [None] * 4  # filling the window
    assert spikes.check(2.3) is None  # lower: never a spike
    z = spikes.check(9.0)
    assert z == pytest.approx((9.0 - 2.525) / math.sqrt(sum((x - 2.525) ** 2 for x in (2.8, 2.6, 2.4, 2.3)) / 4))
    assert list(spikes.losses) == [2.8, 2.6, 2.4, 2.3]  # a spike does not join the window
    assert spikes.check(float("nan")) is None and SpikeDetector(0, 6.0).check(100.0) is None
    flat = SpikeDetector(window=3, zscore=6.0)
    for x in (2.0, 2.0, 2.0):
        flat.check(x)
    assert flat.check(2.05) is None and flat.check(2.2) > 6  # std floored at 1% of the mean
