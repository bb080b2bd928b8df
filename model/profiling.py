"""--profile-steps A-B: a torch.profiler trace of training steps A to B, one Chrome trace file per
rank (RUN_DIR/profile/steps-A-B-rank-NNNNN.json; open in chrome://tracing or Perfetto, or with
TensorBoard's profiler plugin). CPU activity, plus CUDA kernels on GPU; each step is a
`train step N` range, and FSDP2's all-gathers and reduce-scatters appear as their collectives."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


def parse_steps(spec: str) -> tuple[int, int]:
    """"A-B" or "A" -> (A, B), 1 <= A <= B."""
    first, _, last = spec.partition("-")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"--profile-steps {spec!r}: expected A-B (steps) or A") from None
    if not 1 <= a <= b:
        raise ValueError(f"--profile-steps {spec!r}: expected 1 <= A <= B")
    return a, b


class StepProfiler:
    def __init__(self, spec: str | None, out: Path, rank: int):
        self.steps = parse_steps(spec) if spec else None
        self.out, self.rank, self.active, self.range = Path(out) / "profile", rank, None, None

    def begin(self, step: int) -> None:
        if self.steps and step == self.steps[0] and self.active is None:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.active = profile(activities=activities, record_shapes=True)
            self.active.__enter__()
        if self.active is not None:
            if self.range is not None:  # a step left by a rollback (model/stability.py)
                self.range.__exit__(None, None, None)
            self.range = record_function(f"train step {step}")
            self.range.__enter__()

    def end(self, step: int) -> Path | None:
        """After step `step`: the trace file once the last profiled step is done, else None."""
        if self.active is None:
            return None
        self.range.__exit__(None, None, None)
        self.range = None
        if step < self.steps[1]:
            return None
        self.active.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"steps-{self.steps[0]}-{self.steps[1]}-rank-{self.rank:05d}.json"
        self.active.export_chrome_trace(str(path))
        self.active, self.steps = None, None
        return path
