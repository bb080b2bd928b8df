"""Pipeline parallel (--pp P): the model's blocks cut into P consecutive stages, one per rank of the
mesh's outermost dim (model/parallelize.py), run by torch.distributed.pipelining's 1F1B schedule.

    torchrun --nproc_per_node 4 -m model.train ... --pp 2        2 stages x FSDP2 over 2 ranks each

Stages (`keep_stage`, torchtitan's way): every rank builds the whole model on the meta device and
keeps its share — blocks n_layers / P · s ... n_layers / P · (s + 1) - 1 of stage s, plus the
embedding on the first stage and the final norm and output head on the last; the rest is deleted
from `layers` (a ModuleDict, so a block keeps its global name layers.N.*) or set to None. Parameter
names are Meta's on every stage, so a DCP checkpoint holds one global state dict whatever the mesh:
each stage saves and loads its own keys, and a checkpoint written with --pp 2 loads into one
process, or a --pp 2 run resumes a one-process checkpoint. `materialize` (model/distributed.py)
draws every parameter of the whole model in the same order from the seed and each stage keeps its
own, so the weights at init are one process's. FSDP2 / HSDP then shards each stage over the
data-parallel dims, as without pipelining.

The batch: the trainer's gradient accumulation is the pipeline's micro-batches. A step's
micro-batch x accumulation sequences of one data-parallel rank go into the schedule at once, split
into `grad_accum` micro-batches of `batch_size`; the schedule's gradient scaling (1 / grad_accum)
is the trainer's loss / grad_accum, so a step's tokens and gradients are the one-process run's.
1F1B keeps at most P micro-batches' activations in flight per stage and needs accumulation >= P
(`model/train.py resolve` refuses less); the bubble is (P - 1) / (accumulation + P - 1) of a step.

The loss: the last stage runs the final norm and the fused, chunked head + cross-entropy
(model/loss.py linear_cross_entropy; the logits are never built) inside its own forward — the
head's weight is gathered by FSDP2 only there — and outputs the micro-batch's mean loss, which the
schedule's loss function passes through. Every stage reads the same batches (the data loader's
position stays the same on all ranks, as checkpoints expect): the first uses the tokens, the last
the targets. The logged loss is the last stages' (model/train.py all-reduces it), the gradient norm
is all-reduced over the stages (model/stability.py clip_gradients).

Evaluation is forward-only through the stages (`Pipeline.eval_loss`): the hidden state of one
evaluation batch sent stage to stage (point-to-point over the pp group), the last stage's loss.

Tensor parallel inside the stages (--tp T): the stages pass each tensor-parallel rank's sequence
shard of the hidden state, (batch, seq / T, dim), to the same rank of the next stage.

Limits: equal stages of whole blocks (P divides n_layers), one stage per rank (no interleaved or
zero-bubble schedules); the static stage shapes need full micro-batches of one sequence length (the
trainer's are). Checked on CPU with gloo (tests/test_parallel.py), not on GPUs, where the hidden
state between stages takes the dtype of FSDP2's bf16 parameters (`activation_dtype`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B


def stage_layers(n_layers: int, pp: int, stage: int) -> range:
    """The block indices of pipeline stage `stage` (equal, consecutive shares)."""
    per_stage = n_layers // pp
    return range(stage * per_stage, (stage + 1) * per_stage)


def keep_stage(model: nn.Module, pp: int, stage: int) -> nn.Module:
    """Cut a whole model.llama.Transformer (on the meta device) down to pipeline stage `stage` of `pp`."""
    keep = {str(i) for i in stage_layers(len(model.layers), pp, stage)}
    for key in list(model.layers.keys()):
        if key not in keep:
            del model.layers[key]
    if stage > 0:
        model.tok_embeddings = None
    if stage < pp - 1:
        model.norm = None
        model.output = None
    return model


def activation_dtype(device: torch.device, precision: str, sharded: bool) -> torch.dtype:
    """The dtype of the hidden state between stages: the residual stream's. fp32 under autocast
    (fp32 embedding and residual adds); bf16 where FSDP2 computes with bf16 parameters (CUDA)."""
    return torch.bfloat16 if device.type == "cuda" and precision == "bf16" and sharded else torch.float32


def _loss_of_stage(loss: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The schedule's loss function: the last stage's output is already the micro-batch's loss."""
    return loss


class Pipeline:
    """This rank's stage of the pipeline and the schedule that trains it."""

    def __init__(self, stage_model: nn.Module, pp_mesh: DeviceMesh, device: torch.device, grad_accum: int,
                 batch_size: int, seq_len: int, dim: int, dtype: torch.dtype, tp: int = 1):
        """tp: the tensor-parallel degree inside each stage; a rank passes on its seq / tp share of
        the hidden state (sequence parallel: the residual stream between blocks is split so)."""
        self.model, self.device, self.dim, self.dtype, self.tp = stage_model, device, dim, dtype, tp
        self.group = pp_mesh.get_group()
        self.stage, self.stages = pp_mesh.get_local_rank(), pp_mesh.size()
        self.is_first, self.is_last = self.stage == 0, self.stage == self.stages - 1
        # Static shapes on the meta device: the schedule needs no trial forward to learn them. The
        # hidden state requires grad: its gradient goes back to the previous stage.
        with torch.device("meta"):
            hidden = torch.empty(batch_size, seq_len // tp, dim, dtype=dtype, requires_grad=True)
            inputs = torch.empty(batch_size, seq_len, dtype=torch.int64) if self.is_first else hidden
            outputs = torch.empty((), dtype=torch.float32, requires_grad=True) if self.is_last else hidden
        pipeline_stage = PipelineStage(stage_model, self.stage, self.stages, device, input_args=inputs,
                                       output_args=outputs, group=self.group)
        # scale_grads: gradients divided by the micro-batch count, as loss / grad_accum does.
        self.schedule = Schedule1F1B(pipeline_stage, grad_accum, loss_fn=_loss_of_stage, scale_grads=True)

    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one step's micro-batches (tokens, targets: all of them, stacked).
        Returns the sum of the micro-batches' losses on the last stage, zero on the others."""
        losses: list[torch.Tensor] = []
        if self.is_last:
            # The targets go to the stage's forward (the fused head + loss); the schedule also wants them
            # as the loss function's target, which passes the stage's loss through.
            self.schedule.step(*((tokens,) if self.is_first else ()), target=targets, losses=losses, targets=targets,
                               return_outputs=False)
        else:
            self.schedule.step(*((tokens,) if self.is_first else ()), return_outputs=False)
        total = torch.zeros((), device=self.device)
        for loss in losses:
            total += loss.detach()
        return total

    @torch.no_grad()
    def eval_loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of one batch, forward only, stage to stage: the loss on the last stage,
        zero on the others."""
        if self.is_first:
            h = tokens
        else:
            batch, seq = tokens.shape
            h = torch.empty(batch, seq // self.tp, self.dim, dtype=self.dtype, device=self.device)
            dist.recv(h, group=self.group, group_src=self.stage - 1)
        if not self.is_last:
            dist.send(self.model(h).to(self.dtype).contiguous(), group=self.group, group_dst=self.stage + 1)
            return torch.zeros((), device=self.device)
        return self.model(h, targets)
