"""Pretraining loop with the LLaMA-1 recipe (§2.2 "Optimizer").

    python -m model.train --data TOKENS_DIR --out RUN_DIR --preset tiny --steps 200
    torchrun --nproc_per_node 2 -m model.train --data TOKENS_DIR --out RUN_DIR --preset tiny --steps 200

The recipe:
- AdamW, beta1 0.9, beta2 0.95 (§2.2). eps 1e-5: LLaMA-1 does not state it; the LLaMA-2 paper
  (§2.2, same team and recipe) does.
- Weight decay 0.1 (§2.2) on parameters with 2+ dimensions — every matrix, the embedding and the
  output head included — and none on 1-D parameters (the RMSNorm gains; there are no biases). The
  paper does not say what it exempted; this is the GPT-2/nanoGPT/torchtitan practice.
- Cosine schedule down to 10% of the peak lr (§2.2), after a linear warmup (2000 steps in §2.2; capped
  at 10% of --steps here so a short run still decays). Peak lr per size: Table 2 (model/presets.py).
- Gradient clipping at 1.0 (§2.2).
- The global batch exactly: Table 2's 4M tokens per step for the paper presets (or --batch-tokens),
  split over the data-parallel ranks into micro-batch x accumulation (`resolve`), or an error
  naming values that would give it.
- Length: Table 2's tokens (1.0T for 7B and 13B, 1.4T for 33B and 65B) at that batch, unless --steps.
- Distribution, activation checkpointing and torch.compile: model/distributed.py; the device mesh
  (--pp x --dp-replicate x --dp-shard x --tp: pipeline stages, FSDP2, HSDP, tensor + sequence
  parallel): model/parallelize.py, model/pipeline.py (the accumulation's micro-batches are the
  pipeline's).
- Stability: a step with a non-finite loss or gradient norm is skipped, loss spikes are logged and
  optionally rolled back (model/stability.py). The model is built
  on the meta device, sharded, then materialized and initialized (model/distributed.py materialize).

The plan: `resolve` fills every setting not given from the preset — context, micro-batch,
accumulation, tokens per step, warmup, peak lr, steps, tokens — and `plan_lines` prints it; the
launcher (flows/pretrain.py) calls the same two functions to show the plan before torchrun starts,
and passes on only what the user set.

Writes to RUN_DIR: metrics.jsonl (one JSON line per logged step) and TensorBoard event files in
tensorboard/ (model/run_log.py), checkpoints/step-NNNNNN/ (model/checkpoint.py:
torch.distributed.checkpoint, atomic; in the background with --async-checkpoint) and summary.json at
the end. Only rank 0 writes the logs; every rank writes its checkpoint shards.

Resume: by default a run continues from the newest complete checkpoint in RUN_DIR — model,
optimizer, lr scheduler, RNG states and the data loader's position — on any world size, and
metrics.jsonl is cut back to that step. The global batch (tokens per step) stays the checkpoint's:
on another world size the micro-batch and accumulation are derived again to give it (the largest
micro-batch not above the checkpointed run's), and a world size or a --batch-size/--grad-accum that
cannot give it is refused before any process group forms, with values that would.

Retention: after each checkpoint, the newest --keep-last (default 3) and every --keep-every'th stay,
older complete ones are deleted crash-safely (model/checkpoint.py prune_checkpoints). On CPU with the same world size and threads, the resumed
loss curve is bit for bit the uninterrupted one (tests/test_train_resume.py, also after SIGKILL in
the middle of a step or of a checkpoint write: model/faults.py).

Precision: bf16 autocast (or FSDP2's bf16 parameters on CUDA) with fp32 master weights and
optimizer state where the hardware has bf16, fp32 elsewhere (--precision); optionally the blocks'
matmuls in float8 (--float8, model/float8.py).

Metrics per logged step: loss, lr, gradient norm (before clipping), tokens/s, MFU (model/flops.py),
peak memory, and the validation loss on the held-out val shards every --eval-every steps. tokens/s
and MFU count training time only: the time spent evaluating and checkpointing is left out. On CUDA,
fp32 matmuls run as TF32 (and MFU counts the TF32 peak).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.distributed.device_mesh import DeviceMesh

from model.checkpoint import (
    PARTIAL_SUFFIX,
    CheckpointError,
    Checkpointer,
    latest_checkpoint,
    load_checkpoint,
    read_meta,
    remove_partial,
)
from model.data import TokenDataError, TokenShards, TokenStream, eval_batches
from model.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_mean,
    all_reduce_min,
    autocast,
    barrier,
    destroy_distributed,
    init_distributed,
    materialize,
    resolve_precision,
)
from model.faults import inject_error, inject_gradient_fault, inject_weight_fault, kill_point
from model.float8 import RECIPES as FLOAT8_RECIPES, Float8ScalePrecompute, check_float8
from model.flops import flops_per_token, mfu, peak_flops
from model.llama import ModelArgs, Transformer, ffn_hidden_dim, num_parameters
from model.parallelize import MeshDims, build_mesh, check_pipeline_parallel, check_tensor_parallel, mesh_dims, parallelize
from model.pipeline import Pipeline, activation_dtype
from model.presets import PRESETS, count_parameters, get_preset
from model.profiling import StepProfiler, parse_steps
from model.run_log import RunLog
from model.stability import SpikeDetector, TrainingStopped, clip_gradients

ADAM_BETAS = (0.9, 0.95)  # §2.2
ADAM_EPS = 1e-5  # LLaMA-2 §2.2 (LLaMA-1 does not state it)
WEIGHT_DECAY = 0.1  # §2.2
GRAD_CLIP = 1.0  # §2.2
MIN_LR_RATIO = 0.1  # §2.2: "the final learning rate is equal to 10% of the maximal learning rate"
PAPER_WARMUP_STEPS = 2000  # §2.2
DEFAULT_MICRO_BATCH = 8  # sequences per process per micro-batch when --batch-size is not given


@dataclass
class TrainConfig:
    data: Path
    out: Path
    preset: str = "tiny"
    steps: int | None = None  # default: the preset's training tokens (Table 2) at its batch
    seq_len: int | None = None  # default: the preset's context length
    batch_size: int | None = None  # sequences per micro-batch per process; default 8 (or kept on resume)
    grad_accum: int | None = None  # default: reach the preset's batch_tokens
    lr: float | None = None  # default: the preset's peak lr (Table 2)
    warmup: int | None = None  # default: min(2000, steps // 10)
    weight_decay: float = WEIGHT_DECAY
    grad_clip: float = GRAD_CLIP
    min_lr_ratio: float = MIN_LR_RATIO
    seed: int = 0
    log_every: int = 10
    eval_every: int = 1000  # 0: evaluate only at the end
    eval_batches: int = 4  # batches per evaluation set (the val split, each source's val documents, --eval-ref)
    eval_ref: Path | None = None  # a fixed reference set: a token shards folder of the same tokenizer (its val split)
    ckpt_every: int = 1000  # 0: checkpoint only at the end
    async_checkpoint: bool = False  # write checkpoints from a background thread (dcp.async_save)
    keep_last: int = 3  # checkpoints kept: the newest keep_last (0: all) ...
    keep_every: int = 0  # ... and every step that is a multiple of keep_every (0: none)
    resume: str = "auto"  # auto: newest complete checkpoint of --out, if any; none; or a checkpoint folder
    precision: str = "auto"  # auto: bf16 where the hardware has it; fp32; bf16
    activation_checkpointing: str = "none"  # none, selective (keep matmul outputs), full
    compile: bool = False  # torch.compile each block
    float8: str | None = None  # float8 matmuls in the blocks (model/float8.py: tensorwise, rowwise); None: off
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact reruns on GPU too)
    peak_flops: float | None = None  # per device, for MFU; default: datasheet (GPU) or estimate (CPU)
    batch_tokens: int | None = None  # global batch in tokens; default: the preset's (Table 2: 4M)
    dp_replicate: int = 1  # mesh (model/parallelize.py): HSDP replicas ...
    dp_shard: int | None = None  # ... FSDP2 shards (default: world / (dp_replicate * tp)) ...
    tp: int = 1  # ... tensor + sequence parallel degree
    pp: int = 1  # ... pipeline stages (model/pipeline.py), the outermost dim
    max_skipped_steps: int = 5  # stop after this many consecutive steps with a non-finite loss or gradient norm
    spike_window: int = 100  # loss-spike detection: z-score of a step's loss against the last N steps (0: off)
    spike_zscore: float = 6.0  # ... a spike is a loss this many standard deviations above their mean
    spike_rollback: bool = False  # on a spike, reload the newest checkpoint (its data is not replayed)
    max_rollbacks: int = 3  # stop at the next spike after this many rollbacks
    profile_steps: str | None = None  # "A-B": torch.profiler trace of steps A to B (RUN_DIR/profile/)
    tensorboard: bool = True  # TensorBoard event files in RUN_DIR/tensorboard/ beside metrics.jsonl
    checkpoint: bool = True  # False: write no checkpoint at all (benchmarks, throwaway runs)


def lr_at(step: int, peak_lr: float, warmup: int, total: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup to peak_lr at step `warmup`,
    then cosine decay to min_ratio * peak_lr at step `total`, flat after."""
    if warmup > 0 and step <= warmup:
        return peak_lr * step / warmup
    min_lr = min_ratio * peak_lr
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_at as a torch scheduler (its position is checkpointed). LambdaLR counts from 0 and sets
    the lr for the next step, so epoch e is optimizer step e + 1."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_at(e + 1, 1.0, warmup, total, min_ratio))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every parameter with 2+ dimensions (matrices, embedding), not the 1-D norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest_multiples(target: int, unit: int) -> list[int]:
    """The multiples of `unit` nearest to `target` (below and above), each at least `unit`."""
    if target <= unit:
        return [unit]
    below = target // unit * unit
    return [target] if below == target else [below, below + unit]


def split_global_batch(
    tokens_per_step: int, seq_len: int, dp: int, batch_size: int | None, grad_accum: int | None, cap: int,
    what: str, unit: str = "processes", suggest_batch_tokens: bool = True, pp: int = 1,
) -> tuple[int, int]:
    """(micro-batch, accumulation) that give exactly `tokens_per_step` over `dp` data-parallel ranks,
    keeping whichever of batch_size / grad_accum the user gave (None: free); with the micro-batch
    free, the largest one not above `cap` (or the smallest above it when none is). `what` names the
    batch in messages. pp: pipeline stages, which need an accumulation (the pipeline's micro-batches)
    of at least pp. Raises ValueError naming values that would work when there are none."""
    sequences = tokens_per_step // seq_len
    what = f"{what} of {tokens_per_step:,} tokens per step ({sequences} sequences of {seq_len})"
    if tokens_per_step % seq_len:
        raise ValueError(f"{what.split(' (')[0]} is not a whole number of sequences of {seq_len} tokens: use --batch-tokens "
                         + " or ".join(f"{t:,}".replace(",", "") for t in _nearest_multiples(tokens_per_step, seq_len)))
    if sequences % dp:
        worlds = [w for w in _divisors(sequences) if w <= 4 * dp][-8:]
        sizes = "world sizes" if unit == "processes" else "data-parallel sizes"
        fix = f"{sizes} that keep it: {', '.join(map(str, worlds))}, ... (any divisor of {sequences})"
        if suggest_batch_tokens:
            fix = ("--batch-tokens " + " or ".join(str(t) for t in _nearest_multiples(tokens_per_step, dp * seq_len))
                   + f" (whole sequences on each of the {dp}), or {fix}")
        raise ValueError(f"{what} does not split over {dp} {unit}; {fix}")
    per_process = sequences // dp
    if grad_accum is not None and grad_accum < pp:
        raise ValueError(pipeline_accumulation_error(grad_accum, pp))
    if per_process < pp:
        fix = f"--batch-tokens {pp * dp * seq_len} or more, or " if suggest_batch_tokens else ""
        raise ValueError(f"{what} gives each of the {dp} data-parallel ranks {per_process} sequences, fewer than the "
                         f"{pp} micro-batches the {pp} pipeline stages need (--pp {pp}): use {fix}--pp {per_process} or fewer")
    options = [(b, per_process // b) for b in _divisors(per_process) if per_process // b >= pp]
    fits = [(b, a) for b, a in options if batch_size in (None, b) and grad_accum in (None, a)]
    if not fits:
        near = [o for o in options if o[0] <= max(batch_size or 1, cap)][-3:] or options[:3]
        given = " ".join(f"--{k} {v}" for k, v in (("batch-size", batch_size), ("grad-accum", grad_accum)) if v is not None)
        message = (f"{given} on {dp} {unit} cannot give {what}: use "
                   + " or ".join(f"--batch-size {b} --grad-accum {a}" for b, a in near)
                   + " (or leave them out to have them derived)")
        if suggest_batch_tokens:
            keep = (batch_size or 1) * (grad_accum or 1) * dp * seq_len
            message += f", or --batch-tokens {max(keep, round(tokens_per_step / keep) * keep)} to keep {given}"
        raise ValueError(message)
    below = [f for f in fits if f[0] <= cap]
    return max(below) if below else min(fits)


def keep_global_batch(
    tokens_per_step: int, seq_len: int, world_size: int, batch_size: int | None, grad_accum: int | None, saved_batch_size: int,
    unit: str = "processes", pp: int = 1,
) -> tuple[int, int]:
    """(micro-batch, accumulation) that give a resumed run's `tokens_per_step` on `world_size`
    data-parallel ranks, keeping whichever of batch_size / grad_accum the user gave (None: free);
    with the micro-batch free, the largest one not above the checkpointed run's (that one fit in
    memory). Raises ValueError naming values that would work when there are none."""
    return split_global_batch(tokens_per_step, seq_len, world_size, batch_size, grad_accum, saved_batch_size,
                              "the checkpoint's global batch", unit, suggest_batch_tokens=False, pp=pp)


def pipeline_accumulation_error(grad_accum: int, pp: int) -> str:
    return (f"--grad-accum {grad_accum} with --pp {pp}: the pipeline's micro-batches are the accumulation, and "
            f"{pp} stages need at least {pp} of them (1F1B); use --grad-accum {pp} or more, or leave it out")


def resolve(cfg: TrainConfig, vocab_size: int | None, world_size: int, resumed: dict | None = None) -> dict:
    """The run's plan: every setting the config leaves None, from the preset; `resumed` is the
    checkpoint's plan (its meta["run"]) when resuming, whose global batch is kept. Called by the
    launcher to print it and by every rank to run it. vocab_size: the tokenizer's (the paper
    presets fix their own).

    The global batch is exact: --batch-tokens, or else the preset's (Table 2: 4M tokens), split over
    the data-parallel ranks (world / --tp) into micro-batch x accumulation (the micro-batch the
    largest not above --batch-size or 8); a world size, --batch-size or --grad-accum that cannot give
    it is an error naming values that would. Only --batch-size and --grad-accum both given (without
    --batch-tokens) set the global batch to their product instead."""
    preset = get_preset(cfg.preset)
    seq_len = cfg.seq_len or preset.max_seq_len
    if seq_len > preset.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds preset {preset.name} context {preset.max_seq_len}")
    mesh = mesh_dims(world_size, cfg.dp_replicate, cfg.dp_shard, cfg.tp, cfg.pp)
    shape = preset.model_args(vocab_size or preset.vocab_size or 1, seq_len)
    check_tensor_parallel(mesh, shape.n_heads, ffn_hidden_dim(shape), seq_len)
    check_pipeline_parallel(mesh, shape.n_layers)
    dp, unit = mesh.dp, "processes" if mesh.dp == world_size else "data-parallel ranks"
    if resumed and resumed.get("seq_len") == seq_len and resumed.get("tokens_per_step"):
        if cfg.batch_tokens and cfg.batch_tokens != resumed["tokens_per_step"]:
            raise ValueError(f"--batch-tokens {cfg.batch_tokens} would change the checkpoint's global batch of "
                             f"{resumed['tokens_per_step']:,} tokens per step; a resumed run keeps it")
        batch_size, grad_accum = keep_global_batch(
            resumed["tokens_per_step"], seq_len, dp, cfg.batch_size, cfg.grad_accum,
            resumed.get("batch_size") or DEFAULT_MICRO_BATCH, unit, mesh.pp,
        )
    elif cfg.batch_size and cfg.grad_accum and not cfg.batch_tokens:
        if cfg.grad_accum < mesh.pp:
            raise ValueError(pipeline_accumulation_error(cfg.grad_accum, mesh.pp))
        batch_size, grad_accum = cfg.batch_size, cfg.grad_accum  # the user's own global batch
    else:
        target, what = ((cfg.batch_tokens, "the --batch-tokens global batch") if cfg.batch_tokens
                        else (preset.batch_tokens, f"preset {preset.name}'s global batch"))
        batch_size, grad_accum = split_global_batch(
            target, seq_len, dp, cfg.batch_size, cfg.grad_accum, cfg.batch_size or DEFAULT_MICRO_BATCH, what, unit,
            pp=mesh.pp,
        )
    tokens_per_step = batch_size * seq_len * grad_accum * dp
    if cfg.steps:
        steps = cfg.steps
    elif preset.train_tokens:
        steps = math.ceil(preset.train_tokens / tokens_per_step)
    else:
        raise ValueError(f"preset {preset.name} has no training-token budget: pass --steps")
    vocab = preset.vocab_size or vocab_size
    lr = cfg.lr if cfg.lr is not None else preset.lr
    return {
        "preset": preset.name,
        "parameters": count_parameters(preset.name, vocab) if vocab else None,
        "vocab_size": vocab,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "world_size": world_size,
        "mesh": {"pp": mesh.pp, "dp_replicate": mesh.dp_replicate, "dp_shard": mesh.dp_shard, "tp": mesh.tp},
        "tokens_per_step": tokens_per_step,
        "preset_tokens_per_step": preset.batch_tokens,
        "lr": lr,
        "min_lr": lr * cfg.min_lr_ratio,
        "warmup": cfg.warmup if cfg.warmup is not None else min(PAPER_WARMUP_STEPS, steps // 10),
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "preset_tokens": preset.train_tokens,
    }


def plan_lines(run: dict) -> list[str]:
    """The plan as printed before a run starts (by the launcher and by the trainer's rank 0)."""
    params = f"{run['parameters']:,} parameters" if run["parameters"] else "parameters: vocab from the tokenizer"
    budget = f" (preset: {run['preset_tokens']:,})" if run["preset_tokens"] else ""
    mesh = MeshDims(**run["mesh"]) if "mesh" in run else MeshDims(1, run["world_size"], 1)
    ranks = f"{mesh.dp} processes" if mesh.dp == mesh.world else f"{mesh.dp} data-parallel ranks"
    lines = [
        f"preset {run['preset']}: {params}, context {run['seq_len']}",
        f"batch: micro-batch {run['batch_size']} x accumulation {run['grad_accum']} x {ranks} x "
        f"{run['seq_len']} tokens = {run['tokens_per_step']:,} tokens per step (preset: {run['preset_tokens_per_step']:,})",
        f"schedule: peak lr {run['lr']:g}, warmup {run['warmup']:,} steps, cosine to {run['min_lr']:g}",
        f"length: {run['steps']:,} steps, {run['tokens']:,} tokens{budget}",
    ]
    if mesh.tp > 1 or mesh.dp_replicate > 1 or mesh.pp > 1:
        stages = (f"pipeline {mesh.pp} stages (1F1B, {run['grad_accum']} micro-batches, bubble "
                  f"{(mesh.pp - 1) / (run['grad_accum'] + mesh.pp - 1):.1%}), " if mesh.pp > 1 else "")
        lines.insert(1, f"parallel: {mesh.describe()}: {stages}FSDP2 over {mesh.dp_shard}"
                     + (f", HSDP {mesh.dp_replicate} replicas" if mesh.dp_replicate > 1 else "")
                     + (f", tensor + sequence parallel over {mesh.tp}" if mesh.tp > 1 else ""))
    return lines


def build_model(args: ModelArgs, env: DistEnv, precision: str, cfg: TrainConfig, mesh: MeshDims | None = None,
                device_mesh: DeviceMesh | None = None) -> torch.nn.Module:
    """The model on env.device, ready to train: built on the meta device (no memory), parallelized
    over the mesh (model/parallelize.py: the pipeline stage, tensor parallel, activation
    checkpointing, torch.compile, FSDP2/HSDP; default mesh: FSDP2 over every rank), then
    materialized and initialized, so a rank holds its shard and one full parameter at most, never
    the whole model. `device_mesh`: the DeviceMesh of `mesh`, when the caller built it."""
    with torch.device("meta"):
        model = Transformer(args)
    whole_model = [(name, param.shape) for name, param in model.named_parameters()]  # before a pipeline cuts it
    mesh = mesh or mesh_dims(env.world_size)
    model = parallelize(model, env, mesh, precision, cfg.activation_checkpointing, cfg.compile, device_mesh, cfg.float8)
    return materialize(model, env.device, cfg.seed, whole_model)


def checkpoint_to_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint this run continues from (--resume), or None."""
    if cfg.resume == "none":
        if latest_checkpoint(cfg.out) is not None:
            raise CheckpointError(f"{cfg.out} already holds checkpoints; --resume none needs a run folder without them")
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(cfg.out)
    if not Path(cfg.resume).is_dir():
        raise CheckpointError(f"--resume {cfg.resume}: no such checkpoint folder")
    return Path(cfg.resume)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, env: DistEnv, precision: str, pipeline: Pipeline | None = None,
             fsdp: bool = False) -> float:
    """The mean loss of `batches` over the data-parallel ranks (through the stages under --pp:
    the last ones hold the loss). fsdp: the model is FSDP2-sharded (model/distributed.py autocast)."""
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(env.device, precision, fsdp):
            x, y = x.to(env.device), y.to(env.device)
            losses.append((pipeline.eval_loss(x, y) if pipeline is not None else model(x, y)).item())
    model.train()
    return all_reduce_mean(sum(losses) / len(losses), env, loss_holders(env, pipeline))


def loss_holders(env: DistEnv, pipeline: Pipeline | None) -> int:
    """The ranks whose loss counts in the mean: all, or those of the last pipeline stage."""
    return env.world_size // pipeline.stages if pipeline is not None else env.world_size


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the paper's betas. fused=True: one kernel per step over all tensors of a group
    (CPU and CUDA, also on FSDP2's DTensor parameters) instead of a dozen elementwise passes per
    tensor — 7x faster on the CPU benchmark's model; same update rule."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the summary (also written to RUN_DIR/summary.json by rank 0)."""
    # Everything that can be wrong with the data is checked before joining the process group, so a
    # bad --data fails fast on every rank instead of hanging the others.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    shards = TokenShards(cfg.data)
    ckpt_from = checkpoint_to_resume(cfg)
    resumed = read_meta(ckpt_from) if ckpt_from is not None else None
    run = resolve(cfg, shards.vocab_size, world, resumed.get("run") if resumed else None)
    if shards.vocab_size > run["vocab_size"]:
        raise TokenDataError(
            f"{cfg.data}: tokenizer vocab {shards.vocab_size} exceeds preset {cfg.preset} vocab {run['vocab_size']}"
        )
    # The data-parallel rank: the ranks of a tensor-parallel group read the same batches.
    mesh = MeshDims(**run["mesh"])
    data_rank, data_world = mesh.dp_rank(rank), mesh.dp
    windows = TokenStream(shards, run["seq_len"], data_rank, data_world, cfg.seed)
    val = evaluation_sets(cfg, shards, run, data_rank, data_world)

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_float8(cfg.float8, torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu"))

    env = init_distributed()
    # No teardown when this rank fails: destroy_distributed's barrier would wait for ranks that wait
    # in a collective this one never joins (a hang until gloo's or NCCL's 30-minute timeout). The
    # process exits with the error instead, and torchrun stops the other ranks.
    summary = _train(cfg, run, env, windows, val, ckpt_from, resumed)
    destroy_distributed()
    return summary


def evaluation_sets(cfg: TrainConfig, shards: TokenShards, run: dict, rank: int, world: int) -> dict[str, list]:
    """The fixed validation batches of this rank, by set: "val" (the held-out split as the mixture
    made it), "val/<source>" (each source's held-out documents: the per-domain losses of the paper's
    and OLMo's evaluations) and "reference" (--eval-ref: the same documents whatever the corpus, so
    that runs on different builds, e.g. ablation variants, are compared on one yardstick)."""
    batches = lambda segments: eval_batches(segments, run["seq_len"], run["batch_size"], cfg.eval_batches)
    sets = {"val": batches(shards.rank_segments("val", rank, world))}
    for source in shards.val_sources():
        sets[f"val/{source}"] = batches(shards.source_segments(source, rank, world))
    if cfg.eval_ref is not None:
        reference = TokenShards(cfg.eval_ref, require_train=False)
        if reference.tokenizer_sha256 != shards.tokenizer_sha256 or reference.vocab_size != shards.vocab_size:
            raise TokenDataError(f"--eval-ref {cfg.eval_ref}: tokenized with another tokenizer than --data {cfg.data}")
        split = "val" if reference.num_tokens("val") else "train"
        sets["reference"] = batches(reference.rank_segments(split, rank, world))
    return sets


def _train(cfg: TrainConfig, run: dict, env: DistEnv, windows: TokenStream, val: list,
           ckpt_from: Path | None, resumed: dict | None) -> dict:
    preset = get_preset(cfg.preset)
    args = preset.model_args(run["vocab_size"], run["seq_len"])
    precision = resolve_precision(cfg.precision, env.device)
    if env.device.type == "cuda" and precision == "fp32":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores (model/flops.py counts their peak)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    dims = MeshDims(**run["mesh"])
    # FSDP2 shards the model only over more than one data-parallel rank (model/parallelize.py); on CUDA
    # its bf16 parameters replace autocast, so a TP- or PP-only run still needs autocast for bf16.
    fsdp = env.distributed and dims.dp > 1
    device_mesh = build_mesh(dims, env.device.type) if env.distributed and dims.world > 1 else None
    model = build_model(args, env, precision, cfg, dims, device_mesh)
    pipeline = None
    if dims.pp > 1:
        pipeline = Pipeline(model, device_mesh["pp"], env.device, run["grad_accum"], run["batch_size"], run["seq_len"],
                            args.dim, activation_dtype(env.device, precision, fsdp), dims.tp)
    with torch.device("meta"):
        parameters = num_parameters(Transformer(args))  # the whole model's, whichever part this rank holds
    optimizer = make_optimizer(model, run["lr"], cfg.weight_decay)
    float8_scales = Float8ScalePrecompute(model, cfg.float8, fsdp)  # after every change of the weights
    scheduler = lr_scheduler(optimizer, run["warmup"], run["steps"], cfg.min_lr_ratio)
    # Every rank must run the same evaluation collectives: a set is evaluated only where every rank
    # has a batch of it (a source with too few held-out tokens for a window on each rank is left out).
    val = {name: batches for name, batches in val.items() if all_reduce_min(len(batches), env) > 0}
    have_val = bool(val)

    out = Path(cfg.out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in remove_partial(out):
            what = "save" if stale.name.endswith(PARTIAL_SUFFIX) else "deletion"
            print(f"[model.train] removed the incomplete checkpoint {stale.name} of a crashed {what}", flush=True)
    barrier(env)

    # Resume: model, optimizer, scheduler, RNG states and the loader position of the checkpoint
    # chosen before the process group formed (checkpoint_to_resume), on whatever world size this run has.
    start_step, tokens_seen = 0, 0
    if ckpt_from is not None:
        meta = load_checkpoint(ckpt_from, model, optimizer, scheduler, args, env)
        float8_scales.weights_changed()
        windows.load_state_dict(meta["data_loader"])
        start_step, tokens_seen = meta["step"], meta["tokens_seen"]

    flops_token = flops_per_token(args, parameters, run["seq_len"])
    peak, peak_source = (cfg.peak_flops, "--peak-flops") if cfg.peak_flops else peak_flops(env.device, precision)
    log = RunLog(out, start_step if ckpt_from is not None else None, writer=env.is_main, tensorboard=cfg.tensorboard)
    history = log.history
    checkpoints = Checkpointer(out, env, cfg.async_checkpoint, cfg.keep_last, cfg.keep_every, latest=ckpt_from)
    if env.is_main:
        for line in plan_lines(run):
            print(f"[model.train] plan: {line}", flush=True)
        before = (resumed or {}).get("run", {})
        if before.get("world_size", env.world_size) != env.world_size:
            dp_before = MeshDims(**before["mesh"]).dp if "mesh" in before else before["world_size"]  # data-parallel ranks
            print(f"[model.train] global batch kept across world sizes: micro-batch {before.get('batch_size')} x accumulation "
                  f"{before.get('grad_accum')} x {dp_before} before, {run['batch_size']} x {run['grad_accum']} x "
                  f"{MeshDims(**run['mesh']).dp} now, {run['tokens_per_step']:,} tokens per step", flush=True)
        print(
            f"[model.train] preset {preset.name}: {parameters:,} parameters, world {env.world_size} on "
            f"{env.device.type} ({precision}), {run['tokens_per_step']:,} tokens/step (batch {run['batch_size']} x seq "
            f"{run['seq_len']} x accum {run['grad_accum']} x {MeshDims(**run['mesh']).dp}), lr {run['lr']:g}, warmup {run['warmup']}"
            + (f"; resumed from {ckpt_from} at step {start_step}" if ckpt_from is not None else ""),
            flush=True,
        )

    settings = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "run": run | {"precision": precision, "flops_per_token": flops_token, "peak_flops": peak, "peak_flops_source": peak_source},
    }
    started = last_log_time = time.perf_counter()
    trained_tokens = last_log_tokens = 0  # in this process, for throughput
    paused = last_log_paused = 0.0  # seconds spent evaluating and checkpointing: not in tokens/s and MFU
    losses = [r["loss"] for r in history if r.get("loss") is not None and math.isfinite(r["loss"])]
    val_loss = next((r["val_loss"] for r in reversed(history) if "val_loss" in r), None)
    last_eval = {key: r[key] for r in history for key in ("val_loss_by_source", "val_loss_reference") if key in r}
    steps = run["steps"]
    # Stability (model/stability.py): skipped steps, loss spikes, rollbacks.
    skipped = history[-1].get("skipped_steps", 0) if history else 0
    consecutive_skips, spikes, rollbacks, rolled_back_from = 0, SpikeDetector(cfg.spike_window, cfg.spike_zscore), [], None
    profiler = StepProfiler(cfg.profile_steps, out, env.rank)
    step = start_step
    while step < steps:
        step += 1
        checkpoints.poll()  # commits a background checkpoint write that has finished
        profiler.begin(step)
        lr = scheduler.get_last_lr()[0]
        inject_weight_fault(model, step, env.rank)
        if pipeline is not None:  # the accumulation's micro-batches go through the stages together
            xs, ys = zip(*(windows.batch(run["batch_size"]) for _ in range(run["grad_accum"])))
            with autocast(env.device, precision, fsdp):
                loss_sum = pipeline.train_step(torch.cat(xs).to(env.device), torch.cat(ys).to(env.device))
        else:
            loss_sum = torch.zeros((), device=env.device)
            for _ in range(run["grad_accum"]):
                x, y = windows.batch(run["batch_size"])
                with autocast(env.device, precision, fsdp):
                    loss = model(x.to(env.device), y.to(env.device))
                (loss / run["grad_accum"]).backward()
                loss_sum += loss.detach()
        inject_gradient_fault(model, step, env.rank)
        inject_error(step, env.rank)
        # Global, before clipping; clips only when finite.
        grad_norm = clip_gradients(model, cfg.grad_clip, pipeline.group if pipeline is not None else None)
        kill_point("step", step, env.rank)
        loss_value = all_reduce_mean(loss_sum.item() / run["grad_accum"], env, loss_holders(env, pipeline))
        finite = math.isfinite(grad_norm) and math.isfinite(loss_value)
        spike_z = spikes.check(loss_value)
        if spike_z is not None:
            if env.is_main:
                print(f"[model.train] loss spike at step {step}: loss {loss_value:.4f} is {spike_z:.1f} standard deviations "
                      f"above the mean of the last {cfg.spike_window} steps", flush=True)
            ckpt = checkpoints.wait() if cfg.spike_rollback else None  # the newest, committed on every rank
            if ckpt is not None:
                if len(rollbacks) >= cfg.max_rollbacks:
                    raise TrainingStopped(f"loss spike at step {step} after {len(rollbacks)} rollbacks (--max-rollbacks "
                                          f"{cfg.max_rollbacks}); the newest checkpoint is {ckpt}")
                optimizer.zero_grad(set_to_none=True)
                loading = time.perf_counter()
                meta = load_checkpoint(ckpt, model, optimizer, scheduler, args, env)  # not the data position
                float8_scales.weights_changed()
                paused += time.perf_counter() - loading
                rollbacks.append({"at_step": step, "to_step": meta["step"], "loss": loss_value, "zscore": spike_z})
                rolled_back_from, step, tokens_seen = step, meta["step"], meta["tokens_seen"]
                if env.is_main:
                    print(f"[model.train] rolled back to {ckpt.name}: steps {step + 1}-{rolled_back_from} are trained "
                          f"again on the batches after the spike (theirs are skipped)", flush=True)
                log.rewind(step)
                losses = [r["loss"] for r in log.history if r.get("loss") is not None and math.isfinite(r["loss"])]
                continue
        if finite:
            optimizer.step()
            float8_scales.weights_changed()
            consecutive_skips = 0
        else:  # the gradients are dropped; the batch stays consumed (model/stability.py)
            skipped += 1
            consecutive_skips += 1
            if env.is_main:
                print(f"[model.train] step {step} skipped: loss {loss_value}, gradient norm {grad_norm} "
                      f"({consecutive_skips} in a row, {skipped} in all)", flush=True)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        tokens_seen += run["tokens_per_step"]
        trained_tokens += run["tokens_per_step"]
        trace = profiler.end(step)
        if trace is not None and env.is_main:
            print(f"[model.train] profile of steps {cfg.profile_steps}: {trace} (one per rank)", flush=True)

        last_step = step == steps
        evaluate_now = have_val and (last_step or (cfg.eval_every > 0 and step % cfg.eval_every == 0))
        log_now = (step == start_step + 1 or last_step or step % cfg.log_every == 0 or evaluate_now or not finite
                   or spike_z is not None or rolled_back_from is not None)
        if log_now:
            if math.isfinite(loss_value):
                losses.append(loss_value)
            now = time.perf_counter()
            tokens_per_s = (trained_tokens - last_log_tokens) / max(now - last_log_time - (paused - last_log_paused), 1e-9)
            record = {
                "step": step,
                "loss": loss_value if math.isfinite(loss_value) else None,
                "lr": lr,
                "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                "tokens_seen": tokens_seen,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu(tokens_per_s, flops_token, peak, env.world_size),
                "peak_mem_gib": all_reduce_max(peak_memory_bytes(env.device), env) / 2**30,
                "elapsed_s": now - started,
                "skipped_steps": skipped,
            }
            if not finite:
                record["skipped"] = True
            if spike_z is not None:
                record["loss_spike_z"] = spike_z
            if rolled_back_from is not None:
                record["rolled_back_from"], rolled_back_from = rolled_back_from, None
            last_log_time, last_log_tokens, last_log_paused = now, trained_tokens, paused
            if evaluate_now:
                losses_now = {name: evaluate(model, batches, env, precision, pipeline, fsdp) for name, batches in val.items()}
                if "val" in losses_now:
                    val_loss = record["val_loss"] = losses_now["val"]
                by_source = {name.split("/", 1)[1]: loss for name, loss in losses_now.items() if name.startswith("val/")}
                if by_source:
                    record["val_loss_by_source"] = by_source
                if "reference" in losses_now:
                    record["val_loss_reference"] = losses_now["reference"]
                last_eval |= {k: record[k] for k in ("val_loss_by_source", "val_loss_reference") if k in record}
                paused += time.perf_counter() - now
            log.write(record)
            if env.is_main:
                mfu_text = f" mfu {100 * record['mfu']:.1f}%" if record["mfu"] is not None else ""
                print(
                    f"step {step}/{steps} loss {loss_value:.4f} lr {lr:.3g} grad_norm {grad_norm:.3f} "
                    f"tok/s {tokens_per_s:,.0f}{mfu_text}" + (f" val_loss {val_loss:.4f}" if "val_loss" in record else "")
                    + (f" ref_loss {record['val_loss_reference']:.4f}" if "val_loss_reference" in record else ""),
                    flush=True,
                )
        if consecutive_skips >= cfg.max_skipped_steps:
            raise TrainingStopped(
                f"{consecutive_skips} consecutive steps ({step - consecutive_skips + 1}-{step}) had a non-finite loss or "
                f"gradient norm (--max-skipped-steps {cfg.max_skipped_steps}): stopped; the newest checkpoint is "
                f"{checkpoints.wait()}"
            )
        if cfg.checkpoint and (last_step or (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0)):
            saving = time.perf_counter()  # with --async-checkpoint: the copy to CPU memory only
            checkpoints.save(
                step, model, optimizer, scheduler, args,
                # The loader's global position (model/data.py TokenStream), the same on every rank.
                extra={"tokens_seen": tokens_seen, "data_loader": windows.state_dict()} | settings,
            )
            paused += time.perf_counter() - saving

    waiting = time.perf_counter()
    ckpt = checkpoints.wait()  # the last background write, committed
    paused += time.perf_counter() - waiting
    elapsed = time.perf_counter() - started
    tokens_per_s = trained_tokens / max(elapsed - paused, 1e-9)
    summary = {
        "preset": preset.name,
        "parameters": parameters,
        "world_size": env.world_size,
        "device": env.device.type,
        "precision": precision,
        "steps": steps,
        "tokens": tokens_seen,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops_token, peak, env.world_size),
        "peak_mem_gib": all_reduce_max(peak_memory_bytes(env.device), env) / 2**30,
        "elapsed_s": elapsed,
        "eval_and_checkpoint_s": paused,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "val_loss": val_loss,
        # The last evaluation's per-source and reference losses (as in metrics.jsonl).
        "val_loss_by_source": last_eval.get("val_loss_by_source"),
        "val_loss_reference": last_eval.get("val_loss_reference"),
        "tokens_per_step": run["tokens_per_step"],
        "skipped_steps": skipped,
        "rollbacks": rollbacks,
        "resumed_from": str(ckpt_from) if ckpt_from is not None else None,
        "checkpoint": str(ckpt.relative_to(out)) if ckpt is not None and ckpt.is_relative_to(out) else (str(ckpt) if ckpt else None),
    } | settings
    log.close()
    if env.is_main:
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.rename(out / "summary.json")
        if losses:
            print(f"[model.train] done: loss {losses[0]:.4f} -> {losses[-1]:.4f}, {tokens_seen:,} tokens", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = build_parser()
    ns = p.parse_args(argv)
    if any(v is not None and v < 1 for v in (ns.steps, ns.batch_size, ns.grad_accum, ns.log_every, ns.batch_tokens,
                                             ns.dp_replicate, ns.dp_shard, ns.tp, ns.pp, ns.max_skipped_steps)):
        p.error("--steps, --batch-size, --grad-accum, --log-every, --batch-tokens, --dp-replicate, --dp-shard, --tp, "
                "--pp and --max-skipped-steps must be >= 1")
    if ns.spike_window < 0 or ns.max_rollbacks < 0:
        p.error("--spike-window and --max-rollbacks must be >= 0")
    if ns.keep_last < 0 or ns.keep_every < 0:
        p.error("--keep-last and --keep-every must be >= 0")
    if ns.profile_steps:
        try:
            parse_steps(ns.profile_steps)
        except ValueError as exc:
            p.error(str(exc))
    return TrainConfig(**{k: v for k, v in vars(ns).items()})


def build_parser() -> argparse.ArgumentParser:
    """The trainer's options (also how `llama-recipe pretrain --train KEY=VALUE` checks its keys)."""
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="token shards folder (pipeline/token_shards.py)")
    p.add_argument("--out", type=Path, required=True, help="run folder: metrics.jsonl, checkpoints/, summary.json")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's training tokens, Table 2)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: preset context)")
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per micro-batch per process (default {DEFAULT_MICRO_BATCH}; on resume: what keeps the global batch)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (default: reach the preset's batch tokens)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: preset, Table 2)")
    p.add_argument("--warmup", type=int, help="warmup steps (default: min(2000, steps // 10))")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--grad-clip", type=float, default=GRAD_CLIP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=1000, help="0: evaluate only at the end")
    p.add_argument("--eval-batches", type=int, default=4, help="batches per evaluation set")
    p.add_argument("--eval-ref", type=Path, default=None,
                   help="a reference set evaluated with the others: a token shards folder of the same tokenizer (its val split)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="0: checkpoint only at the end")
    p.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-checkpoint: write no checkpoint at all, not even at the end (benchmarks, throwaway runs)")
    p.add_argument("--async-checkpoint", action="store_true",
                   help="write checkpoints from a background thread (dcp.async_save): training stalls only to copy the state to CPU memory")
    p.add_argument("--keep-last", type=int, default=3, help="checkpoints kept: the newest N (0: all) ...")
    p.add_argument("--keep-every", type=int, default=0, help="... and those of steps that are multiples of N (0: none)")
    p.add_argument("--resume", default="auto",
                   help="auto: the newest complete checkpoint in --out (default); none: start afresh; or a checkpoint folder")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 mixed precision where the hardware has it (CUDA, CPUs with AVX512-BF16/AMX)")
    p.add_argument("--activation-checkpointing", default="none", choices=["none", "selective", "full"],
                   help="selective: keep matmul and attention outputs, recompute the rest of each block")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--float8", choices=FLOAT8_RECIPES, default=None,
                   help="float8 matmuls in the blocks with torchao (model/float8.py; off by default: LLaMA trained in bf16)")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s per device for MFU (default: datasheet / CPU estimate)")
    p.add_argument("--batch-tokens", type=int,
                   help="global batch in tokens per step, hit exactly (default: the preset's, Table 2: 4M)")
    mesh = p.add_argument_group("device mesh (model/parallelize.py): pp x dp-replicate x dp-shard x tp = processes")
    mesh.add_argument("--dp-replicate", type=int, default=1, help="HSDP replicas (default 1: plain FSDP2)")
    mesh.add_argument("--dp-shard", type=int, help="FSDP2 shard group size (default: the processes left by the others)")
    mesh.add_argument("--tp", type=int, default=1, help="tensor + sequence parallel degree (ranks of one node)")
    mesh.add_argument("--pp", type=int, default=1,
                      help="pipeline stages (model/pipeline.py: n_layers / pp blocks each, 1F1B over the accumulation's micro-batches)")
    stab = p.add_argument_group("stability (model/stability.py)")
    stab.add_argument("--max-skipped-steps", type=int, default=5,
                      help="stop after N consecutive steps skipped for a non-finite loss or gradient norm")
    stab.add_argument("--spike-window", type=int, default=100, help="loss-spike z-score over the last N steps (0: off)")
    stab.add_argument("--spike-zscore", type=float, default=6.0, help="a spike: loss this many standard deviations above the window's mean")
    stab.add_argument("--spike-rollback", action="store_true",
                      help="on a spike, reload the newest checkpoint and go on with the batches after the spike")
    stab.add_argument("--max-rollbacks", type=int, default=3, help="stop at a spike after this many rollbacks")
    p.add_argument("--profile-steps", type=str,
                   help="A-B: record steps A to B with torch.profiler, a Chrome trace per rank in RUN_DIR/profile/")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard event files in RUN_DIR/tensorboard/ beside metrics.jsonl (default: on)")
    return p


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (TokenDataError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"model.train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except TrainingStopped as exc:
        print(f"model.train: stopped: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
