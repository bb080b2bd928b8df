"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, atomic, resumable on any world size.

    <run dir>/checkpoints/step-000100/
        .metadata, __0_0.distcp, ...   DCP: the model's and the optimizer's tensors ("model.<name>",
                                       "optim.<name>.exp_avg", ...), each rank writing its own shards
        rng/rank-00000.json            each rank's RNG states (torch CPU and CUDA, Python, NumPy)
        meta.json                      step, tokens seen, model args, the lr scheduler, the optimizer's
                                       param groups, the data loader position, the run's settings

Atomic: everything is written into checkpoints/.step-000100.partial/ and rank 0 renames that to
step-000100/ once every rank's shards and meta.json are in it. So a folder named step-* holding a
meta.json is complete, and a crash at any moment leaves at most a .partial folder, which the next
start removes. (On several nodes the run folder must be on a shared filesystem, as for any DCP save.)

Retention (`prune_checkpoints`, rank 0 after each commit): the newest `keep_last` complete
checkpoints stay, and every one whose step is a multiple of `keep_every`; other complete ones are
deleted, oldest first. A deletion first renames step-000100/ to .step-000100.deleting/ (atomic: from
then on it is no checkpoint) and only then removes its files, so a crash in the middle leaves a
.deleting folder that no resume takes and the next start removes, never a half checkpoint under a
valid name. Folders named step-* without meta.json are not touched.

Only tensors go through DCP: its loader unpickles non-tensor entries with
torch.load(weights_only=False), so the param groups (floats and names) and everything else that is
not a tensor are JSON. Nothing in this project calls torch.load without weights_only=True.

Resharding: DCP records every tensor's global shape and each shard's offsets, and a load reads
whichever slices the loading process holds, so a checkpoint written by 2 ranks loads into 1, 3 or 8
ranks, or into a plain unsharded model (export, evaluation).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from model.distributed import DistEnv, barrier
from model.faults import kill_point
from model.llama import ModelArgs, Transformer

META_FILE = "meta.json"
DCP_METADATA = ".metadata"
PARTIAL_SUFFIX = ".partial"
DELETING_SUFFIX = ".deleting"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (missing, incomplete, other model)."""


def checkpoint_dir(run_dir: Path | str, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def is_complete(path: Path | str) -> bool:
    path = Path(path)
    return path.name.startswith("step-") and (path / META_FILE).is_file() and (path / DCP_METADATA).is_file()


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """The newest complete checkpoint of a run folder (by step number), or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def complete_checkpoints(run_dir: Path | str) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    return sorted((p for p in (Path(run_dir) / "checkpoints").glob("step-*") if is_complete(p)), key=step_of)


def remove_partial(run_dir: Path | str) -> list[Path]:
    """Delete what crashed saves and crashed deletions left behind (rank 0, before anyone saves).
    Returns what it removed."""
    folder = Path(run_dir) / "checkpoints"
    leftovers = sorted([*folder.glob(f".step-*{PARTIAL_SUFFIX}"), *folder.glob(f".step-*{DELETING_SUFFIX}")])
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def retained(steps: list[int], keep_last: int, keep_every: int) -> set[int]:
    """The steps that stay: the newest keep_last (0: all of them) and the multiples of keep_every."""
    keep = set(steps if keep_last <= 0 else sorted(steps)[-keep_last:])
    return keep | {s for s in steps if keep_every > 0 and s % keep_every == 0}


def prune_checkpoints(run_dir: Path | str, keep_last: int, keep_every: int, step: int = 0) -> list[Path]:
    """Delete the complete checkpoints that `retained` does not keep, oldest first (rank 0 only,
    after a commit; `step` is the step just saved, for the "delete" kill point). Returns them."""
    found = complete_checkpoints(run_dir)
    keep = retained([step_of(p) for p in found], keep_last, keep_every)
    removed = []
    for path in found:
        if step_of(path) in keep:
            continue
        doomed = path.with_name(f".{path.name}{DELETING_SUFFIX}")
        os.rename(path, doomed)  # atomic: no longer a checkpoint before any byte of it goes
        for file in sorted(f for f in doomed.rglob("*") if f.is_file()):
            file.unlink()
            kill_point("delete", step, 0)
        shutil.rmtree(doomed)
        removed.append(path)
    return removed


def _tensor_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """(the tensors DCP saves and loads in place, the optimizer's JSON-able param groups).
    get_state_dict gives sharded DTensors under FSDP2 and drops the activation-checkpoint and
    torch.compile wrappers from the names, so keys are Meta's parameter names in every setup."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state["state"]}
    for key, value in _leaves(state):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry {key} is {type(value).__name__}, not a tensor (DCP would pickle it)")
    return state, optim_state["param_groups"]


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def _rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        "python": [version, list(internal), gauss],
        "numpy": numpy_state,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes().hex()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=np.array(numpy_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray.fromhex(state["cuda"]), dtype=torch.uint8))


@contextlib.contextmanager
def _single_process(env: DistEnv | None):
    """Without a process group DCP warns that it is "assuming the intent" of one process: it is."""
    with warnings.catch_warnings():
        if env is None or not env.distributed:
            warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
        yield


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path | str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    model_args: ModelArgs,
    env: DistEnv,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it after optimizer step `step`. Returns the committed folder."""
    final = checkpoint_dir(run_dir, step)
    partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
    if env.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "rng").mkdir(parents=True)
    barrier(env)
    state, param_groups = _tensor_state(model, optimizer)
    with _single_process(env):
        dcp.save(state, checkpoint_id=partial, no_dist=not env.distributed)
    _write_json(partial / "rng" / f"rank-{env.rank:05d}.json", _rng_state())
    barrier(env)
    kill_point("ckpt", step, env.rank)
    if env.is_main:
        meta = {
            "step": step,
            "world_size": env.world_size,
            "model_args": asdict(model_args),
            "scheduler": scheduler.state_dict(),
            "optimizer_param_groups": param_groups,
        } | (extra or {})
        _write_json(partial / META_FILE, meta)  # last: its presence marks the folder complete
        if final.exists():  # the same step saved by an earlier attempt of this run
            shutil.rmtree(final)
        os.rename(partial, final)
    barrier(env)
    return final


def read_meta(ckpt_dir: Path | str) -> dict[str, Any]:
    ckpt_dir = Path(ckpt_dir)
    if not is_complete(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: not a complete checkpoint (needs {META_FILE} and {DCP_METADATA})")
    return json.loads((ckpt_dir / META_FILE).read_text())


def load_checkpoint(
    ckpt_dir: Path | str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    model_args: ModelArgs,
    env: DistEnv,
) -> dict[str, Any]:
    """Collective: load a checkpoint into an already built (and sharded) model, its optimizer and
    scheduler, and this rank's RNG states. Any world size. Returns the checkpoint's meta."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    if meta["model_args"] != asdict(model_args):
        raise CheckpointError(f"{ckpt_dir}: saved for model {meta['model_args']}, this run builds {asdict(model_args)}")
    state, _ = _tensor_state(model, optimizer)  # the shapes and shards to fill; creates the optimizer state
    with _single_process(env):
        dcp.load(state, checkpoint_id=ckpt_dir, no_dist=not env.distributed)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict={"state": state["optim"], "param_groups": meta["optimizer_param_groups"]},
    )
    scheduler.load_state_dict(meta["scheduler"])
    rng = ckpt_dir / "rng" / f"rank-{env.rank:05d}.json"
    if rng.is_file():  # absent when resuming on more ranks than saved: those keep their seeded state
        _set_rng_state(json.loads(rng.read_text()))
    barrier(env)
    return meta


def load_model_state(ckpt_dir: Path | str) -> tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]:
    """(model args, full float32 model state dict under Meta's names, meta) of a checkpoint, read
    in this process alone (no process group), whatever world size wrote it. For export and eval."""
    meta = read_meta(ckpt_dir)
    args = ModelArgs(**meta["model_args"])
    with torch.device("meta"):
        shapes = Transformer(args).state_dict()
    state = {name: torch.empty(t.shape, dtype=t.dtype) for name, t in shapes.items()}
    with _single_process(None):
        dcp.load({"model": state}, checkpoint_id=Path(ckpt_dir), no_dist=True)
    return args, state, meta
