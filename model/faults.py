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
