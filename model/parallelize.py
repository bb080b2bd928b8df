"""The device mesh and how the model is spread over it: pipeline parallel, data parallel (FSDP2,
HSDP) and tensor parallel with sequence parallel — model/llama.py knows nothing of it (torchtitan's
`parallelize`).

    --pp P --dp-replicate R --dp-shard S --tp T        P x R x S x T = the number of processes (torchrun's world)

The mesh is (pp, dp_replicate, dp_shard, tp), outermost first, so the T ranks of a tensor-parallel
group are consecutive global ranks — the GPUs of one node, where NVLink carries the per-layer
traffic — then the S ranks that shard parameters, gradients and optimizer state (FSDP2's per-block
all-gather and reduce-scatter), then R replicas of that (HSDP: gradients all-reduced across replicas
once per step, nothing else crosses them), then P pipeline stages (model/pipeline.py: each holds
n_layers / P blocks and passes one hidden state per micro-batch to the next — the least traffic,
so the outermost dim, the one that crosses the slowest links). A flat FSDP over every rank is
P = R = T = 1. With tensor parallel inside pipeline stages, each rank passes its sequence shard of
the hidden state (the residual stream is one between blocks) to the same tensor-parallel rank of the
next stage.

Tensor parallel (torch.distributed.tensor.parallel, the Megatron-LM layout with sequence parallel):
- attention: wq, wk, wv column-parallel (each rank computes n_heads / T whole heads, RoPE and
  attention on those local heads), wo row-parallel;
- SwiGLU: w1, w3 column-parallel, w2 row-parallel;
- between them the residual stream, RMSNorms included, is split along the sequence (Shard(1)):
  the norms run on seq / T tokens, an all-gather brings the full sequence into attention and the
  feed-forward, a reduce-scatter takes their output back to the sequence shard;
- the embedding is row-parallel on the vocabulary (each rank looks up its rows, a reduce-scatter
  gives the sequence shard);
- the output head and the loss, split along the sequence: the final norm's output stays
  sequence-sharded and each rank of the group runs the fused, chunked head + cross-entropy
  (model/loss.py) on its seq / T tokens with its copy of the head's weight (replicated over the
  group, sharded by FSDP over the data-parallel dims); the weight's gradient, a partial sum over
  the rank's tokens, is summed over the group by DTensor, and so are the rank's loss sums
  (`sequence_parallel_head_loss`). The head's 2·V·d FLOPs per token are divided by T like the
  blocks', no rank gathers the sequence for it, and the (tokens x vocab) logits are never built.
  (A vocabulary-parallel loss, torch's loss_parallel, would split the weight instead but build
  the sharded logits: V·seq·4 bytes per sequence per rank / T.)

Every rank of a tensor-parallel group, and every stage of a pipeline, reads the same batch
(model/train.py gives the data loader the data-parallel rank, `MeshDims.dp_rank`); the global batch
is counted over the R x S data-parallel ranks.

Order, as in torchtitan: the pipeline stage cut from the whole model, float8 (--float8,
model/float8.py), tensor parallel, then
activation checkpointing and torch.compile per block, then FSDP2 over the data-parallel mesh (each
block one unit), on the meta device; `materialize` (model/distributed.py) then allocates and
initializes the shards, the same weights as one process draws. DCP checkpoints store global tensors,
so a run saved on one mesh resumes on any other.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from model.loss import IGNORE_INDEX, linear_cross_entropy

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class MeshDims:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1  # pipeline stages (model/pipeline.py), the outermost dim

    @property
    def dp(self) -> int:
        """Data-parallel ranks: the batch is split over these."""
        return self.dp_replicate * self.dp_shard

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.tp

    def dp_rank(self, rank: int) -> int:
        """This global rank's data-parallel rank: the ranks of one tensor-parallel group, and the
        pipeline stages of one data-parallel replica, share it (they read the same batches)."""
        return rank // self.tp % self.dp

    def pp_rank(self, rank: int) -> int:
        """This global rank's pipeline stage."""
        return rank // (self.dp * self.tp)

    def describe(self) -> str:
        names, values = ["dp-replicate", "dp-shard", "tp"], [self.dp_replicate, self.dp_shard, self.tp]
        if self.pp > 1:
            names, values = ["pp", *names], [self.pp, *values]
        parts = [f"{n} {v}" for n, v in zip(names, values)]
        return f"mesh {' x '.join(map(str, values))} ({', '.join(parts)})"


def mesh_dims(world: int, dp_replicate: int = 1, dp_shard: int | None = None, tp: int = 1, pp: int = 1) -> MeshDims:
    """The mesh for `world` processes; dp_shard None takes what the others leave. Raises ValueError
    when the product is not the world size."""
    for name, value in (("--pp", pp), ("--dp-replicate", dp_replicate), ("--dp-shard", dp_shard), ("--tp", tp)):
        if value is not None and value < 1:
            raise ValueError(f"{name} {value}: must be >= 1")
    given = f"--pp {pp} x " if pp > 1 else ""
    if dp_shard is None:
        if world % (pp * dp_replicate * tp):
            raise ValueError(f"{given}--dp-replicate {dp_replicate} x --tp {tp} does not divide the {world} processes")
        dp_shard = world // (pp * dp_replicate * tp)
    dims = MeshDims(dp_replicate, dp_shard, tp, pp)
    if dims.world != world:
        raise ValueError(
            f"{given}--dp-replicate {dp_replicate} x --dp-shard {dp_shard} x --tp {tp} = {dims.world} processes, "
            f"but the run has {world}"
        )
    return dims


def check_tensor_parallel(dims: MeshDims, n_heads: int, ffn_hidden: int, seq_len: int) -> None:
    """Tensor parallel splits whole heads, the SwiGLU hidden size and (sequence parallel) the sequence."""
    if dims.tp == 1:
        return
    for what, size in (("attention heads", n_heads), ("SwiGLU hidden size", ffn_hidden), ("sequence length", seq_len)):
        if size % dims.tp:
            raise ValueError(f"--tp {dims.tp} must divide the model's {what} ({size})")


def check_pipeline_parallel(dims: MeshDims, n_layers: int) -> None:
    """Pipeline stages hold equal numbers of whole blocks."""
    if dims.pp == 1:
        return
    if n_layers % dims.pp:
        fits = [p for p in range(2, n_layers + 1) if n_layers % p == 0][:6]
        raise ValueError(f"--pp {dims.pp} must divide the model's {n_layers} layers (equal stages): "
                         f"use --pp {' or '.join(map(str, fits))}")


def build_mesh(dims: MeshDims, device_type: str) -> DeviceMesh:
    if dims.pp == 1:  # no pipeline: the 3-D mesh, without a size-1 dim and its process groups
        return init_device_mesh(device_type, (dims.dp_replicate, dims.dp_shard, dims.tp), mesh_dim_names=MESH_DIMS[1:])
    return init_device_mesh(device_type, (dims.pp, dims.dp_replicate, dims.dp_shard, dims.tp), mesh_dim_names=MESH_DIMS)


def dp_mesh(mesh: DeviceMesh, dims: MeshDims) -> DeviceMesh | None:
    """The mesh FSDP2 shards over: (dp_shard,), or (dp_replicate, dp_shard) for HSDP; None when the
    data-parallel size is 1 (tensor parallel alone)."""
    if dims.dp == 1:
        return None
    if dims.dp_replicate == 1:
        return mesh["dp_shard"]
    return mesh["dp_replicate", "dp_shard"]


# ---------------------------------------------------------------------------------------------
# Tensor parallel


class ReplicateParallel(ParallelStyle):
    """Parameters replicated over the tensor-parallel group (the output head). The loss uses its
    weight directly (`sequence_parallel_head_loss`: a local copy whose partial gradients DTensor sums);
    `model(tokens)` calls it on the gathered sequence and gets a plain tensor back. The parameters
    still become DTensors, so every parameter of the model lives on one mesh (gradient clipping,
    checkpoints) and their gradients stay replicated."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def partition(name, mod, mesh):
            for key, param in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(key, nn.Parameter(distribute_tensor(param, mesh, [Replicate()], src_data_rank=None)))

        def inputs(mod, args, mesh):  # the sequence-sharded final norm's output, gathered (logits path)
            return tuple(a.redistribute(placements=[Replicate()]) if isinstance(a, DTensor) else a for a in args)

        def outputs(mod, out, mesh):
            return out.to_local() if isinstance(out, DTensor) else out

        return distribute_module(module, device_mesh, partition, inputs, outputs)


def _group_sum(value: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """The sum over the tensor-parallel group of each rank's `value`, on every rank (an all-reduce,
    as a Partial -> Replicate DTensor redistribution); its gradient reaches each rank's `value` whole."""
    return DTensor.from_local(value, mesh, [Partial()], run_check=False).full_tensor()


def sequence_parallel_head_loss(model: nn.Module, h: DTensor, targets: torch.Tensor) -> torch.Tensor:
    """Transformer.head_loss under tensor parallelism: the fused head + cross-entropy of each rank's
    share of the sequence. h is the final norm's output, sequence-sharded (Shard(1)); targets the
    whole (batch, seq) of the group's batch. Each rank runs the chunked head on its seq / T tokens
    with its local copy of the replicated head weight — whose gradient, from those tokens alone, is
    declared Partial, so DTensor sums it over the group — and the per-rank sums of the loss are
    added up (divided by the group's count of targets). The head's 2·V·d FLOPs per token are thus
    split over the group, not repeated, and neither the logits nor the gathered sequence are built."""
    mesh = h.device_mesh
    local_h = h.to_local()  # (batch, seq / T, dim); its gradient goes back as the same Shard(1)
    share = local_h.shape[1]
    start = mesh.get_local_rank() * share
    local_targets = targets[:, start:start + share].reshape(-1)
    n_valid = _group_sum((local_targets != IGNORE_INDEX).sum(), mesh)
    weight = model.output.weight.to_local(grad_placements=[Partial()])
    local = linear_cross_entropy(local_h.reshape(-1, local_h.shape[-1]), weight, local_targets, model.loss_kernel,
                                 n_valid=n_valid)
    return _group_sum(local, mesh)


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, float8: str | None = None) -> nn.Module:
    """Megatron-style tensor + sequence parallel over `tp_mesh` (a model.llama.Transformer, on the
    meta device or materialized). With tensorwise float8 on GPUs (model/float8.py, the blocks'
    linears already Float8Linear), torchao's float8 variants of the block plans: the
    sequence-sharded input of attention and of the feed-forward is cast to float8 before its
    all-gather (half the bytes), as torchtitan does. Rowwise float8, and float8 on CPU processes
    (gloo cannot all-gather float8 tensors: "Invalid scalar type"), keep the plain plans: each
    Float8Linear casts the gathered input itself."""
    colwise, rowwise, prepare_input = ColwiseParallel, RowwiseParallel, PrepareModuleInput
    if float8 == "tensorwise" and tp_mesh.device_type == "cuda":
        from torchao.float8.float8_tensor_parallel import (
            Float8ColwiseParallel,
            Float8RowwiseParallel,
            PrepareFloat8ModuleInput,
        )

        colwise, rowwise, prepare_input = Float8ColwiseParallel, Float8RowwiseParallel, PrepareFloat8ModuleInput
    outer = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ReplicateParallel(),
    }
    # A pipeline stage (model/pipeline.py) has the embedding or the norm and head only at its ends.
    parallelize_module(model, tp_mesh, {name: style for name, style in outer.items() if getattr(model, name) is not None})
    model.head_loss = types.MethodType(sequence_parallel_head_loss, model)
    for block in model.layers.values():
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention_norm": SequenceParallel(),
                # The block's forward(x, cos, sin): x gathered to the whole sequence, the RoPE tables as they are.
                "attention": prepare_input(input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)),
                "attention.wq": colwise(),
                "attention.wk": colwise(),
                "attention.wv": colwise(),
                "attention.wo": rowwise(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": prepare_input(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                "feed_forward.w1": colwise(),
                "feed_forward.w3": colwise(),
                "feed_forward.w2": rowwise(output_layouts=Shard(1)),
            },
        )
    return model


def parallelize(model: nn.Module, env, dims: MeshDims, precision: str, activation_checkpointing: str = "none",
                compile: bool = False, mesh: DeviceMesh | None = None, float8: str | None = None) -> nn.Module:
    """Pipeline parallel (pp > 1: the model cut to this rank's stage, model/pipeline.py), float8
    matmuls in the blocks (`float8`: a model/float8.py recipe), tensor parallel (tp > 1), activation
    checkpointing, torch.compile, then FSDP2 over the data-parallel dims (HSDP when dp_replicate > 1):
    the model as a rank of the mesh trains it. `mesh`: the one build_mesh made for `dims` (built here
    when None). One process (no process group): only float8, activation checkpointing and compile."""
    from model.distributed import apply_activation_checkpointing, apply_fsdp, compile_blocks
    from model.float8 import convert_to_float8
    from model.pipeline import keep_stage

    if mesh is None and env.distributed and dims.world > 1:
        mesh = build_mesh(dims, env.device.type)
    if mesh is not None and dims.pp > 1:
        model = keep_stage(model, dims.pp, mesh["pp"].get_local_rank())
    if float8 is not None:
        model = convert_to_float8(model, float8, mesh is not None and dims.dp > 1, env.device)
    if mesh is not None and dims.tp > 1:
        model = apply_tensor_parallel(model, mesh["tp"], float8)
    model = apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        model = compile_blocks(model)
    if mesh is not None and dims.dp > 1:
        model = apply_fsdp(model, env, precision, dp_mesh(mesh, dims))
    return model
