"""The pretrain flow (flows/pretrain.py) and the training lines of the summary (flows/summary.py):
torchrun under Prefect with a progress artifact and a loss-curve artifact; a rerun on changed data
sets the old run aside instead of failing to resume it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from flows.pretrain import loss_curve_png, set_aside_stale_run
from flows.summary import training_lines
from pipeline.spec import TrainSpec
from tests.test_train import counting_docs, run_cli, write_token_shards

TRAIN = {"preset": "tiny", "nproc": 2, "steps": 6, "seq_len": 32, "batch_size": 4, "grad_accum": 1, "warmup_steps": 1,
         "log_every": 1, "eval_every": 3, "ckpt_every": 3, "extra_args": ["--precision", "fp32"]}


def tokens(root: Path, docs: int = 60) -> Path:
    return write_token_shards(root, {"train": counting_docs(docs, 30), "val": counting_docs(8, 30, seed=9)})


@pytest.mark.slow
def test_rerun_on_rebuilt_tokens_sets_the_old_run_aside(tmp_path):
    # The new corpus is a rebuild with more documents: another manifest.
    old, new, run = tokens(tmp_path / "old"), tokens(tmp_path / "new", docs=70), tmp_path / "run"
    done = run_cli(["--data", str(old), "--out", str(run), "--steps", "3", "--seq-len", "32", "--batch-size", "4",
                    "--grad-accum", "1", "--preset", "tiny", "--ckpt-every", "3", "--precision", "fp32"])
    assert done.returncode == 0, done.stderr[-2000:]
    spec = TrainSpec(**(TRAIN | {"seq_len": 32}))
    assert set_aside_stale_run(str(old), str(run), spec) is None  # same data and model: resumable
    assert (run / "checkpoints" / "step-000003").is_dir()
    # The trainer refuses to resume on other data...
    refused = run_cli(["--data", str(new), "--out", str(run), "--steps", "4", "--seq-len", "32", "--batch-size", "4",
                       "--grad-accum", "1", "--preset", "tiny", "--precision", "fp32"])
    assert refused.returncode != 0 and "loader state was saved with data" in refused.stderr
    # ...so the flow moves the old run aside first.
    reason = set_aside_stale_run(str(new), str(run), spec)
    assert reason and "token shards changed" in reason
    assert not (run / "checkpoints").exists() and (run / "previous" / "checkpoints" / "step-000003").is_dir()


@pytest.mark.slow
def test_pretrain_flow_reports_progress_loss_curve_and_mfu(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.pretrain import pretrain

    data, run = tokens(tmp_path / "tokens"), tmp_path / "run"
    state = pretrain(str(data), str(run), TRAIN, return_state=True)
    summary, flow_run_id = state.result(), state.state_details.flow_run_id
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["mfu"] > 0
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    async def artifacts() -> dict:
        async with get_client() as client:
            # The suite's server holds other tests' runs too: this flow run's artifacts only.
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key: a for a in found if a.key}

    found = asyncio.run(artifacts())
    assert float(found["pretrain-progress"].data) == pytest.approx(100.0)
    report = found["pretrain-report"].data
    assert "![loss curve](data:image/png;base64," in report and "| MFU |" in report and "| tokens/s |" in report

    lines = "\n".join(training_lines(run))
    assert "loss " in lines and "tokens/s" in lines and "MFU " in lines and "validation loss" in lines

    # The same flow again continues the run: nothing left to train, the summary says where it resumed.
    again = pretrain(str(data), str(run), TRAIN)
    assert again["resumed_from"].endswith("step-000006") and again["first_loss"] == summary["first_loss"]
    assert "resumed from" in "\n".join(training_lines(run))


def test_loss_curve_png_from_metrics(tmp_path):
    records = [{"step": s, "loss": 5.0 / s} | ({"val_loss": 4.0 / s} if s % 2 == 0 else {}) for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    png = loss_curve_png(tmp_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
