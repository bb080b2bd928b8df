"""Fault injection for the crash-and-resume tests (issue 8, "training faults").

    LLAMA_RECIPE_KILL_AT=step:7        SIGKILL this process in the middle of optimizer step 7
                                       (after its backward pass, before the weights change)
    LLAMA_RECIPE_KILL_AT=ckpt:8        SIGKILL while writing the step-8 checkpoint (after the
                                       sharded tensors are on disk, before it is committed)
    LLAMA_RECIPE_KILL_AT=delete:12       SIGKILL rank 0 while it deletes an old checkpoint after
                                       committing step 12's (after the first file is gone)
    LLAMA_RECIPE_KILL_AT=step:7@1      only on global rank 1 (default: every rank)

SIGKILL, not an exception: nothing runs after it (no finally, no atexit), exactly like `kill -9`
or the OOM killer, so the tests see what a real crash leaves on disk. Unset, this costs one dict
lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "LLAMA_RECIPE_KILL_AT"


def kill_point(point: str, step: int, rank: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, only_rank = spec.partition("@")
    if where == f"{point}:{step}" and (not only_rank or int(only_rank) == rank):
        print(f"[model.faults] {ENV}={spec}: killing rank {rank} (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Numerical faults for the stability tests (model/stability.py), real values in real tensors:
#
#   LLAMA_RECIPE_FAULT=grad-inf:5          after step 5's backward pass, set one gradient element
#                                          to inf (grad-nan: NaN) — on this rank's shard of it
#   LLAMA_RECIPE_FAULT=spike:9             before step 9's forward pass, multiply the output head's
#                                          weights by 30: the loss jumps as a real spike does
#   LLAMA_RECIPE_FAULT=error:4@1           raise a RuntimeError on rank 1 after step 4's backward pass
#                                          (a failure of one rank: the others must not hang)
#   LLAMA_RECIPE_FAULT=grad-inf:5@1,grad-nan:6,spike:9     several, comma-separated; @R: rank R only
#
# Each fires once per process: a step reached again after a rollback runs clean.

FAULT_ENV = "LLAMA_RECIPE_FAULT"
SPIKE_SCALE = -30.0
_fired: set[str] = set()


def _faults(point: str, step: int, rank: int) -> list[str]:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    found = []
    for item in spec.split(","):
        where, _, only_rank = item.partition("@")
        kind, _, at = where.partition(":")
        if at == str(step) and kind in point.split("|") and (not only_rank or int(only_rank) == rank) and item not in _fired:
            _fired.add(item)
            found.append(kind)
    return found


def inject_gradient_fault(model, step: int, rank: int) -> None:
    """grad-inf / grad-nan: one element of this rank's gradient of the first parameter that has one."""
    import torch

    for kind in _faults("grad-inf|grad-nan", step, rank):
        for param in model.parameters():
            grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
            if grad is not None and grad.numel():
                grad.view(-1)[0] = torch.inf if kind == "grad-inf" else torch.nan
                print(f"[model.faults] {FAULT_ENV}: {kind} at step {step} on rank {rank}", flush=True)
                break


def inject_error(step: int, rank: int) -> None:
    for kind in _faults("error", step, rank):
        raise RuntimeError(f"{FAULT_ENV}: {kind} at step {step} on rank {rank}")


def inject_weight_fault(model, step: int, rank: int) -> None:
    """spike: scale the output head (every rank its shard of it)."""
    import torch

    for kind in _faults("spike", step, rank):
        if model.output is None:  # a pipeline stage before the last (model/pipeline.py) has no head
            continue
        with torch.no_grad():
            weight = model.output.weight
            (weight.to_local() if hasattr(weight, "to_local") else weight).mul_(SPIKE_SCALE)
        print(f"[model.faults] {FAULT_ENV}: {kind} at step {step} on rank {rank} (output head x {SPIKE_SCALE:g})", flush=True)
