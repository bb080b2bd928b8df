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

Asynchronous (--async-checkpoint, `Checkpointer`): dcp.async_save copies the state to CPU memory,
training goes on, and a thread writes the copy into the same .partial folder over a gloo process
group of its own. Rank 0 commits (meta.json, rename) once its write is done: DCP writes .metadata
last, after every rank has reported its shards written, so the same rule holds — a step-* folder
with meta.json is complete, a crash mid-write leaves only a .partial folder. One write is in flight
at a time (the next save, a rollback and the end of the run wait for it).

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
import time
import warnings
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

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
    state = _plain_tensors({"model": model_state, "optim": optim_state["state"]})
    for key, value in _leaves(state):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry {key} is {type(value).__name__}, not a tensor (DCP would pickle it)")
    return state, optim_state["param_groups"]


def _plain_tensors(tree: Any) -> Any:
    """`tree` with torchao's float8 weight wrapper taken off its tensors. Under --float8 tensorwise
    with FSDP2 (model/float8.py) each weight's local shard, and the AdamW moments made like it, are
    a tensor subclass (WeightWithDynamicFloat8CastTensor) that DCP would pickle — a checkpoint only
    a process with torchao could read, and not as plain weights. The plain tensor inside holds the
    data and shares its storage, so a save writes the same numbers and an in-place load fills the
    model's own weights."""
    if isinstance(tree, dict):
        return {key: _plain_tensors(value) for key, value in tree.items()}
    local = tree._local_tensor if isinstance(tree, DTensor) else tree
    inner = getattr(local, "_tensor", None)
    if type(local) in (torch.Tensor, torch.nn.Parameter) or not isinstance(inner, torch.Tensor):
        return tree
    if isinstance(tree, DTensor):
        return DTensor.from_local(inner, tree.device_mesh, tree.placements, run_check=False, shape=tree.shape, stride=tree.stride())
    return inner


def _whole_model_param_groups(param_groups: list[dict], env: DistEnv) -> list[dict]:
    """The optimizer's param groups with the parameter names of every rank: under pipeline parallel
    (model/pipeline.py) a rank's groups name only its stage's parameters, and meta.json must name
    them all for the checkpoint to load on another mesh (set_state_dict maps groups by name). The
    same groups a single process has; unchanged where every rank holds every name."""
    if not env.distributed:
        return param_groups
    every_rank: list[list[dict]] = [None] * env.world_size  # type: ignore[list-item]
    dist.all_gather_object(every_rank, param_groups)
    merged = []
    for groups in zip(*every_rank):
        names = list(dict.fromkeys(name for group in groups for name in group["params"]))  # in stage order, once
        merged.append(groups[0] | {"params": names})
    return merged


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


class _Writer(dcp.FileSystemWriter):
    """DCP's file writer, plus the "ckpt-write" kill point once this rank's shards are written and
    before DCP's .metadata is (in the background thread when the save is asynchronous)."""

    def __init__(self, path: Path, step: int, rank: int):
        super().__init__(path)
        self._step, self._rank = step, rank

    def write_data(self, plan, planner):
        written = super().write_data(plan, planner)
        kill_point("ckpt-write", self._step, self._rank)
        return written


@dataclass
class PendingCheckpoint:
    """A checkpoint whose tensors are written (or being written, by dcp.async_save's thread) into
    its .partial folder and that is not committed yet."""

    step: int
    partial: Path
    final: Path
    meta: dict[str, Any] | None  # rank 0: what meta.json will hold
    writing: Future | None  # None once this rank's part is written
    committed: bool = False

    def finish_writing(self) -> None:
        """Block until this rank's write is done; raises what the background write raised."""
        if self.writing is not None:
            self.writing.result()
            self.writing = None

    def written(self) -> bool:
        """Whether this rank's write is done, without blocking."""
        if self.writing is not None and self.writing.done():
            self.finish_writing()
        return self.writing is None


def start_checkpoint(
    run_dir: Path | str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    model_args: ModelArgs,
    env: DistEnv,
    extra: dict[str, Any] | None = None,
    asynchronous: bool = False,
    process_group: dist.ProcessGroup | None = None,
) -> PendingCheckpoint:
    """Collective: every rank calls it after optimizer step `step`. Writes the state of this moment
    into checkpoints/.step-N.partial/: synchronously, or (asynchronous) copies it to CPU memory and
    returns while dcp.async_save writes the copy from a thread — over `process_group`, a gloo group of
    its own, so the thread's collectives never interleave with training's. Commit with
    `commit_checkpoint` (collective) or, without waiting, `commit_if_written` (rank 0)."""
    final = checkpoint_dir(run_dir, step)
    partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
    if env.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "rng").mkdir(parents=True)
    barrier(env)
    state, param_groups = _tensor_state(model, optimizer)
    param_groups = _whole_model_param_groups(param_groups, env)
    writer = _Writer(partial, step, env.rank)
    writing = None
    if asynchronous and not env.distributed:  # the thread warns after _single_process's catch_warnings is gone
        warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
    with _single_process(env):
        if asynchronous:
            writing = dcp.async_save(state, storage_writer=writer, process_group=process_group, no_dist=not env.distributed)
        else:
            dcp.save(state, storage_writer=writer, no_dist=not env.distributed)
    _write_json(partial / "rng" / f"rank-{env.rank:05d}.json", _rng_state())
    meta = None
    if env.is_main:
        meta = {
            "step": step,
            "world_size": env.world_size,
            "model_args": asdict(model_args),
            "scheduler": scheduler.state_dict(),
            "optimizer_param_groups": param_groups,
        } | (extra or {})
    return PendingCheckpoint(step, partial, final, meta, writing)


def _commit(pending: PendingCheckpoint) -> None:
    """Rank 0, once every rank's shards and DCP's .metadata are in the .partial folder."""
    kill_point("ckpt", pending.step, 0)
    _write_json(pending.partial / META_FILE, pending.meta)  # last: its presence marks the folder complete
    if pending.final.exists():  # the same step saved by an earlier attempt of this run
        shutil.rmtree(pending.final)
    os.rename(pending.partial, pending.final)
    pending.committed = True


def commit_if_written(pending: PendingCheckpoint, env: DistEnv) -> bool:
    """Not collective: rank 0 commits an asynchronous checkpoint as soon as its write is done; any
    rank returns whether its own part is written (and raises what the write raised). Rank 0's write
    ends with DCP's finish step — .metadata, written after every rank reported its shards written —
    so rank 0 alone can tell that the whole checkpoint is on disk."""
    if not pending.written():
        return False
    if env.is_main and not pending.committed:
        _commit(pending)
    return True


def commit_checkpoint(pending: PendingCheckpoint, env: DistEnv) -> Path:
    """Collective: wait for this rank's write, then rank 0 commits (unless it already has)."""
    pending.finish_writing()
    barrier(env)
    if env.is_main and not pending.committed:
        _commit(pending)
    barrier(env)
    pending.committed = True
    return pending.final


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
    """Collective: a synchronous checkpoint after optimizer step `step`. Returns the committed folder."""
    return commit_checkpoint(start_checkpoint(run_dir, step, model, optimizer, scheduler, model_args, env, extra), env)


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


class Checkpointer:
    """A run's checkpoints: saved synchronously or in the background (--async-checkpoint, one write
    in flight at a time), committed atomically, the old ones pruned (rank 0).

    In the background: `save` copies the state to CPU memory and returns; each step `poll` lets rank
    0 commit the checkpoint as soon as its write is done (no collective); `wait` (collective) waits
    for the write and commits it — before the next save, before a rollback loads the newest
    checkpoint, and at the end of the run. The state is the one of the step saved, whatever
    training does meanwhile (the copy), so resuming from it is bit for bit the same as from a
    synchronous checkpoint."""

    def __init__(self, run_dir: Path | str, env: DistEnv, asynchronous: bool, keep_last: int, keep_every: int,
                 latest: Path | None = None):
        self.run_dir, self.env, self.asynchronous = Path(run_dir), env, asynchronous
        self.keep_last, self.keep_every = keep_last, keep_every
        self.latest = latest  # the newest committed checkpoint (as of the last wait on ranks other than 0)
        self.pending: PendingCheckpoint | None = None
        self._started = 0.0
        # dcp.async_save's thread runs collectives (planning, finish); on a group of its own they never
        # interleave with the training loop's. gloo: the staged copy is in CPU memory.
        self.group = dist.new_group(backend="gloo") if asynchronous and env.distributed else None

    def save(self, step: int, model, optimizer, scheduler, model_args: ModelArgs, extra: dict[str, Any]) -> None:
        """Collective: checkpoint the state after optimizer step `step`."""
        self.wait()
        self._started = time.perf_counter()
        self.pending = start_checkpoint(self.run_dir, step, model, optimizer, scheduler, model_args, self.env, extra,
                                        asynchronous=self.asynchronous, process_group=self.group)
        if not self.asynchronous:
            self.wait()

    def poll(self) -> None:
        """Not collective: commit a background write that has finished (rank 0)."""
        if self.pending is None or self.pending.committed:
            return
        if commit_if_written(self.pending, self.env) and self.env.is_main:
            self._committed()

    def wait(self) -> Path | None:
        """Collective: the write in flight, if any, finished and committed. Returns the newest checkpoint."""
        if self.pending is not None:
            already = self.pending.committed
            commit_checkpoint(self.pending, self.env)
            if not already:
                self._committed()
            self.latest, self.pending = self.pending.final, None
        return self.latest

    def _committed(self) -> None:
        self.latest = self.pending.final
        if not self.env.is_main:
            return
        if self.asynchronous:
            print(f"[model.train] checkpoint {self.latest.name} committed, written in the background in "
                  f"{time.perf_counter() - self._started:.1f} s", flush=True)
        for old in prune_checkpoints(self.run_dir, self.keep_last, self.keep_every, self.pending.step):
            print(f"[model.train] deleted checkpoint {old.name} (keep last {self.keep_last}, every {self.keep_every})", flush=True)
