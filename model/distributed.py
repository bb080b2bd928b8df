"""Process group, device, mixed precision, activation checkpointing, torch.compile and FSDP2
sharding — everything the model file does not know about.

Launched by torchrun (one node, or several with `--nnodes N --rdzv-endpoint HOST:PORT`), each
process reads WORLD_SIZE / RANK / LOCAL_RANK from its environment and joins a process group: NCCL
on GPUs, gloo on CPU. Run as plain `python -m model.train`, it is a single process with no
process group and an unwrapped model.

Sharding is FSDP2 (`torch.distributed.fsdp.fully_shard`, the per-parameter DTensor FSDP that
torchtitan uses): each TransformerBlock is one unit (its parameters are all-gathered just before
its forward and freed after), then the root takes the embedding, final norm and output head.
Checked on torch 2.13 CPU: fully_shard over a gloo DeviceMesh("cpu") trains, clips (the grad norm
comes back as a DTensor, identical on every rank) and saves/loads sharded DCP checkpoints, so
CPU uses FSDP2 as well — no DDP fallback is needed.

Order of wrapping, as in torchtitan: activation checkpointing, then torch.compile, then FSDP2.

Construction, as in torchtitan: the model is built on the meta device (shapes only, no memory),
wrapped and sharded, and only then materialized (`materialize`: `to_empty` on the device, then the
model's own initialization), so a rank never holds more than its shard plus one full parameter —
65B's 261 GB of fp32 weights are never on one rank. The weights do not depend on the world size:
each parameter is drawn whole, in the same order from the same seed as a single process draws it,
and a rank keeps its slice.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from model.llama import Transformer, init_parameter
from model.loss import compile_loss_kernel


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
        # Every rank arrives before any tears down: a rank that destroys its gloo group while another
        # still works (rank 0 writing the summary) could abort in gloo's teardown ("terminate called
        # without an active exception", seen in the FSDP and resume tests).
        dist.barrier()
        dist.destroy_process_group()


def device_mesh(env: DistEnv) -> DeviceMesh:
    return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp_shard",))


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the hardware computes in bf16 (CUDA with bf16 support; a CPU with
    AVX512-BF16/AMX, which oneDNN reports), else "fp32"."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str, sharded: bool):
    """The forward's mixed-precision context. bf16 autocast keeps fp32 master weights, fp32
    optimizer state and an fp32 residual stream (matmuls in bf16). On CUDA under FSDP2 the
    MixedPrecisionPolicy casts the parameters instead (bf16 all-gathers, half the traffic), so no
    autocast is needed there."""
    if precision == "bf16" and not (sharded and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Activation checkpointing. "selective" is per operator (torch's selective checkpoint contexts):
# the outputs of the matmuls and of attention are kept, everything else in the block (RMSNorm,
# RoPE, SiLU, the SwiGLU product, residual adds, dtype casts) is recomputed in the backward pass.
# That is the trade §2.4 of the paper describes ("we save the activations that are expensive to
# compute, such as the outputs of linear layers"): most of the memory of full recomputation is
# saved for a few percent of extra compute. "full" recomputes the whole block from its input.

_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_mm.default,  # the float8 matmuls (--float8, model/float8.py)
}


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Wrap every TransformerBlock. Parameter names do not change for checkpoints: the
    state-dict helpers of torch.distributed.checkpoint drop the wrapper's prefix."""
    if mode == "none":
        return model
    if mode not in ("selective", "full"):
        raise ValueError(f"activation checkpointing {mode!r}: expected none, selective or full")
    for key, block in model.layers.items():
        context = {"context_fn": partial(create_selective_checkpoint_contexts, _keep_matmuls)} if mode == "selective" else {}
        model.layers[key] = checkpoint_wrapper(block, preserve_rng_state=False, **context)
    return model


def compile_blocks(model: nn.Module) -> nn.Module:
    """torch.compile each TransformerBlock in place (torchtitan's granularity: the blocks are
    identical, so one compiled graph serves all of them, and FSDP2's hooks stay outside it), and
    the per-chunk softmax kernel of the fused head + loss (model/loss.py)."""
    for block in model.layers.values():
        block.compile()
    model.loss_kernel = compile_loss_kernel()
    return model


def apply_fsdp(model: nn.Module, env: DistEnv, precision: str = "fp32", mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard `model` (a model.llama.Transformer, on the meta device or on env.device) with FSDP2 over
    `mesh`: by default a 1-D device mesh of all ranks (all nodes: torchrun gives every process its
    global rank); model/parallelize.py passes the data-parallel part of its mesh (2-D for HSDP:
    replicate x shard). A no-op for a single process.

    - Each block is one unit; the root takes the embedding, final norm and output head.
    - The last block keeps its parameters gathered after forward: backward needs them at once.
    - Explicit prefetch: block i+1's all-gather is issued when block i's forward starts, and in
      backward block i-1's when block i's starts, so communication overlaps compute.
    - On CUDA with bf16, parameters are all-gathered and computed in bf16, gradients reduced in
      fp32, master weights and optimizer state stay fp32. On CPU (gloo) parameters stay fp32 and
      bf16 comes from autocast (see autocast()).
    """
    if not env.distributed or env.world_size == 1:
        return model
    mesh = mesh if mesh is not None else device_mesh(env)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if env.device.type == "cuda" and precision == "bf16"
        else MixedPrecisionPolicy()
    )
    blocks = list(model.layers.values())
    for index, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
        following.set_modules_to_backward_prefetch([block])
    return model


@torch.no_grad()
def materialize(model: Transformer, device: torch.device, seed: int,
                whole_model: list[tuple[str, torch.Size]] | None = None) -> Transformer:
    """Allocate a meta-device model (sharded by apply_fsdp or not) on `device` and initialize it
    (Transformer.init_weights's distributions, drawn after torch.manual_seed(seed)): the same
    weights on any world size. A sharded parameter is drawn whole (one at a time, so a rank briefly holds one
    full parameter) and this rank keeps its slice: DTensor's own random ops are not
    sharding-invariant on CPU. `whole_model`: the (name, shape) of every parameter of the whole
    model in order, when `model` is one pipeline stage of it (model/pipeline.py): every one is
    drawn, in that order, and the stage keeps its own, so the stages' weights are one process's."""
    model.to_empty(device=device)
    torch.manual_seed(seed)
    own = {_plain_name(name): param for name, param in model.named_parameters()}
    order = whole_model if whole_model is not None else [(name, param.shape) for name, param in own.items()]
    for name, shape in order:
        param = own.get(name)
        if param is not None and not isinstance(param, DTensor):
            init_parameter(name, param)
            continue
        full = torch.empty(shape, dtype=torch.float32 if param is None else param.dtype, device=device)
        init_parameter(name, full)  # another stage's parameter: drawn only to keep the random stream in step
        if param is not None:
            # src_data_rank=None: every rank slices its own copy, no communication.
            shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(shard.to_local())
            del shard
        del full
    missing = own.keys() - {name for name, _ in order}
    if missing:
        raise ValueError(f"materialize: parameters {sorted(missing)} are not in the whole model's")
    model.init_rope()
    return model


def _plain_name(name: str) -> str:
    """A parameter's name without the activation-checkpoint and torch.compile wrappers' parts."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def all_reduce_mean(value: float, env: DistEnv, holders: int | None = None) -> float:
    """Average a Python float over ranks (identity for one process). `holders`: how many ranks hold
    a value when the others pass 0 (the last pipeline stages hold the loss); default all."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / (holders or env.world_size)


def _all_reduce_int(value: int, env: DistEnv, op: dist.ReduceOp) -> int:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def all_reduce_min(value: int, env: DistEnv) -> int:
    return _all_reduce_int(value, env, dist.ReduceOp.MIN)


def all_reduce_max(value: int, env: DistEnv) -> int:
    return _all_reduce_int(value, env, dist.ReduceOp.MAX)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def full_value(t: torch.Tensor) -> float:
    """A scalar that may be a DTensor (FSDP2's clip_grad_norm_ result) as a float."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t)
