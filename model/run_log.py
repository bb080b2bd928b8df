"""What a run logs: RUN_DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard event
files beside it (RUN_DIR/tensorboard/, torch.utils.tensorboard's writer), rank 0 only.

    tensorboard --logdir RUN_DIR/tensorboard          (or a folder of runs: one curve per run)

Both show the same steps: a run resumed from its step-400 checkpoint drops what the lost attempt
logged after step 400 — metrics.jsonl is rewritten without those records, and the event files get
TensorBoard's purge marker (SummaryWriter's purge_step), so TensorBoard hides the lost attempt's
later points instead of drawing two curves over one another. A loss-spike rollback does the same.

TensorBoard tags: train/loss, train/lr, train/grad_norm, train/skipped_steps, train/loss_spike_z,
perf/tokens_per_s, perf/mfu, perf/peak_mem_gib, val/loss, val/<source> (each source's held-out
documents) and val/reference (--eval-ref).
"""

from __future__ import annotations

import json
from pathlib import Path

TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "skipped_steps": "train/skipped_steps",
    "loss_spike_z": "train/loss_spike_z",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "peak_mem_gib": "perf/peak_mem_gib",
    "val_loss": "val/loss",
    "val_loss_reference": "val/reference",
}


def read_records(path: Path, upto: int) -> list[dict]:
    """metrics.jsonl's records up to step `upto` (none when the file is missing)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= upto]


class RunLog:
    """metrics.jsonl and the TensorBoard events of one run. Every rank can build one (the records
    kept from an earlier attempt are read on every rank); only `writer=True` (rank 0) writes."""

    def __init__(self, run_dir: Path, resumed_at: int | None, writer: bool, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(run_dir) / "tensorboard"
        # Records past the checkpoint belong to the lost attempt: the resumed run writes them again.
        self.history = read_records(self.path, resumed_at) if resumed_at is not None else []
        self.writer = writer
        self._file = None
        self._events = None
        self._tensorboard = tensorboard and writer
        if writer:
            self._open(resumed_at or 0)

    def _open(self, step: int) -> None:
        self._file = open(self.path, "w")
        self._file.writelines(json.dumps(r) + "\n" for r in self.history)
        self._file.flush()
        if self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # the `tensorboard` package is a dependency; a bare install may lack it
                print(f"[model.train] no TensorBoard event files ({exc}); metrics.jsonl has every record", flush=True)
                self._tensorboard = False
                return
            # purge_step: TensorBoard hides the points of earlier event files at and after this step.
            self._events = SummaryWriter(str(self.tensorboard_dir), purge_step=step + 1 if step else None)

    def write(self, record: dict) -> None:
        self.history.append(record)
        if not self.writer:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._events is not None:
            step = record["step"]
            for key, tag in TAGS.items():
                if record.get(key) is not None:
                    self._events.add_scalar(tag, record[key], step)
            for source, loss in (record.get("val_loss_by_source") or {}).items():
                self._events.add_scalar(f"val/{source}", loss, step)
            self._events.flush()

    def rewind(self, step: int) -> None:
        """Forget the records after `step` (a rollback to that step's checkpoint)."""
        self.history = [r for r in self.history if r["step"] <= step]
        if self.writer:
            self.close()
            self._open(step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._events is not None:
            self._events.close()
            self._events = None
