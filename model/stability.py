"""What keeps a long run alive (model/train.py uses these): non-finite gradients skip the optimizer
step, a run of them stops the run, and loss spikes are detected (and optionally rolled back).

- Gradient norm: the global L2 norm of all gradients before clipping, the same number on every rank
  (under FSDP2 / tensor parallel the per-shard norms are all-reduced, under pipeline parallel the
  stages' norms too). If it — or the step's loss —
  is not finite (an inf or NaN anywhere, e.g. a bf16 overflow or a bad batch), the optimizer step
  is skipped: the weights and AdamW's moments stay as they were, the gradients are dropped. The
  step still counts: its batch was consumed and is not replayed (the data loader moves on, as it
  would for any step), and the lr schedule advances. metrics.jsonl logs the step with
  "skipped": true and a running "skipped_steps" count. After --max-skipped-steps consecutive
  skipped steps the run stops (exit status 3) with a message naming the newest checkpoint: a run
  that produces nothing but NaNs has diverged and burns compute.
- Loss spikes: each step's loss (the global mean) is compared with the last --spike-window finite,
  non-spike losses; a loss more than --spike-zscore standard deviations above their mean (the
  standard deviation floored at 1% of the mean, so a flat curve's noise is no spike) is a spike.
  It is always logged ("loss_spike_z" in metrics.jsonl). With --spike-rollback the step's update is
  not applied and the newest checkpoint is loaded (model, optimizer, lr schedule, RNG), but not its
  data position: training continues from the checkpoint's step on the batches after the spike, so
  the batches between the checkpoint and the spike are skipped — what PaLM did (§5.1: restart ~100
  steps before the spike, skip ~200-500 batches). metrics.jsonl is cut back to the checkpoint's
  step, the next record carries "rolled_back_from", and summary.json lists the rollbacks. After
  --max-rollbacks rollbacks the next spike stops the run. The window starts empty on resume.
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


class TrainingStopped(RuntimeError):
    """The run cannot usefully go on (consecutive non-finite steps, repeated loss spikes)."""


def clip_gradients(model: torch.nn.Module, max_norm: float, pp_group: dist.ProcessGroup | None = None) -> float:
    """The global gradient norm before clipping, as a float (identical on every rank); the
    gradients are clipped to max_norm only when it is finite (else the caller skips the step).
    pp_group: the pipeline's stages, each holding a part of the model (model/pipeline.py)."""
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if isinstance(total, DTensor):  # FSDP2 / tensor parallel: reduce the per-shard norms
        total = total.full_tensor()
    if pp_group is not None:  # this stage's norm -> the whole model's: sqrt of the stages' sum of squares
        total = total.pow(2)
        dist.all_reduce(total, group=pp_group)
        total = total.sqrt()
    norm = float(total)
    if math.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return norm


class SpikeDetector:
    """z-score of a step's loss against the last `window` finite, non-spike losses."""

    STD_FLOOR = 0.01  # of the window's mean

    def __init__(self, window: int, zscore: float):
        self.window, self.zscore = window, zscore
        self.losses: deque[float] = deque(maxlen=max(window, 1))

    def check(self, loss: float) -> float | None:
        """The loss's z-score when it is a spike, else None (and the loss joins the window)."""
        if self.window <= 0 or not math.isfinite(loss):
            return None
        if len(self.losses) == self.window:
            mean = sum(self.losses) / self.window
            std = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / self.window)
            z = (loss - mean) / max(std, self.STD_FLOOR * abs(mean), 1e-12)
            if z > self.zscore:
                return z
        self.losses.append(loss)
        return None
