"""Process group, device and FSDP2 sharding — everything the model file does not know about.

Launched by torchrun, each process reads WORLD_SIZE / RANK / LOCAL_RANK from its environment and
joins a process group: NCCL on GPUs, gloo on CPU. Run as plain `python -m model.train`, it is a
single process with no process group and an unwrapped model.

Sharding is FSDP2 (`torch.distributed.fsdp.fully_shard`, the per-parameter DTensor FSDP that
torchtitan uses): each TransformerBlock is one unit (its parameters are all-gathered just before
its forward and freed after), then the root takes the embedding, final norm and output head.
Checked on torch 2.13 CPU: fully_shard over a gloo DeviceMesh("cpu") trains, clips (the grad norm
comes back as a DTensor, identical on every rank) and gathers a full state dict on rank 0, so CPU
uses FSDP2 as well — no DDP fallback is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed() -> DistEnv:
    """Join the torchrun process group (if any) and pick this process's device."""
    if not launched_by_torchrun():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_mesh(env: DistEnv) -> DeviceMesh:
    return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp_shard",))


def apply_fsdp(model: nn.Module, env: DistEnv) -> nn.Module:
    """Shard `model` (a model.llama.Transformer, already on env.device) with FSDP2. A no-op for a
    single process. On CUDA, parameters compute in bf16 with fp32 gradient reduction and fp32 master
    weights (LLaMA's precision is not stated; bf16 is what Meta's later recipes and torchtitan use)."""
    if not env.distributed or env.world_size == 1:
        return model
    mesh = device_mesh(env)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if env.device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Average a Python float over ranks (identity for one process)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / env.world_size


def all_reduce_min(value: int, env: DistEnv) -> int:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def full_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP2's clip_grad_norm_ result) as a float."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t)
