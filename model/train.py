"""Pretraining loop with the LLaMA-1 recipe (§2.2 "Optimizer").

    python -m model.train --data TOKENS_DIR --out RUN_DIR --preset tiny --steps 200
    torchrun --nproc_per_node 2 -m model.train --data TOKENS_DIR --out RUN_DIR --preset tiny --steps 200

The recipe:
- AdamW, beta1 0.9, beta2 0.95 (§2.2). eps 1e-5: LLaMA-1 does not state it; the LLaMA-2 paper
  (§2.2, same team and recipe) does.
- Weight decay 0.1 (§2.2) on parameters with 2+ dimensions — every matrix, the embedding included —
  and none on 1-D parameters (the RMSNorm gains). The paper does not say what it exempted; this is
  the GPT-2/nanoGPT/torchtitan practice.
- Cosine schedule down to 10% of the peak lr (§2.2), after a linear warmup (2000 steps in §2.2; capped
  at 10% of --steps here so a short run still decays). Peak lr per size: Table 2 (model/presets.py).
- Gradient clipping at 1.0 (§2.2).
- Gradient accumulation to reach the global batch: Table 2's 4M tokens per step for the paper
  presets, derived from the preset unless --grad-accum is given.

Writes to RUN_DIR: metrics.jsonl (one JSON line per logged step), checkpoints/step-NNNNNN/
(model/checkpoint.py) and summary.json at the end. Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.data import RandomWindows, TokenDataError, TokenShards, eval_batches
from model.distributed import (
    DistEnv,
    all_reduce_mean,
    all_reduce_min,
    apply_fsdp,
    destroy_distributed,
    full_value,
    init_distributed,
)
from model.llama import Transformer, num_parameters
from model.presets import PRESETS, get_preset

ADAM_BETAS = (0.9, 0.95)  # §2.2
ADAM_EPS = 1e-5  # LLaMA-2 §2.2 (LLaMA-1 does not state it)
WEIGHT_DECAY = 0.1  # §2.2
GRAD_CLIP = 1.0  # §2.2
MIN_LR_RATIO = 0.1  # §2.2: "the final learning rate is equal to 10% of the maximal learning rate"
PAPER_WARMUP_STEPS = 2000  # §2.2


@dataclass
class TrainConfig:
    data: Path
    out: Path
    preset: str = "tiny"
    steps: int = 100
    seq_len: int | None = None  # default: the preset's context length
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int | None = None  # default: reach the preset's batch_tokens
    lr: float | None = None  # default: the preset's peak lr (Table 2)
    warmup: int | None = None  # default: min(2000, steps // 10)
    weight_decay: float = WEIGHT_DECAY
    grad_clip: float = GRAD_CLIP
    min_lr_ratio: float = MIN_LR_RATIO
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 4
    ckpt_every: int = 0  # 0: checkpoint only at the end


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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every parameter with 2+ dimensions (matrices, embedding), not the 1-D norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve(cfg: TrainConfig, vocab_size: int, world_size: int) -> dict:
    """Fill the config's defaults from the preset; returns the settings actually used."""
    preset = get_preset(cfg.preset)
    seq_len = cfg.seq_len or preset.max_seq_len
    if seq_len > preset.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds preset {preset.name} context {preset.max_seq_len}")
    grad_accum = cfg.grad_accum or max(1, round(preset.batch_tokens / (cfg.batch_size * seq_len * world_size)))
    return {
        "seq_len": seq_len,
        "grad_accum": grad_accum,
        "lr": cfg.lr if cfg.lr is not None else preset.lr,
        "warmup": cfg.warmup if cfg.warmup is not None else min(PAPER_WARMUP_STEPS, cfg.steps // 10),
        "vocab_size": preset.vocab_size or vocab_size,
        "tokens_per_step": cfg.batch_size * seq_len * grad_accum * world_size,
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, env: DistEnv) -> float:
    model.eval()
    losses = [model(x.to(env.device), y.to(env.device))[1].item() for x, y in batches]
    model.train()
    return all_reduce_mean(sum(losses) / len(losses), env)


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the summary (also written to RUN_DIR/summary.json by rank 0)."""
    # Everything that can be wrong with the data is checked before joining the process group, so a
    # bad --data fails fast on every rank instead of hanging the others.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    shards = TokenShards(cfg.data)
    run = resolve(cfg, shards.vocab_size, world)
    if shards.vocab_size > run["vocab_size"]:
        raise TokenDataError(
            f"{cfg.data}: tokenizer vocab {shards.vocab_size} exceeds preset {cfg.preset} vocab {run['vocab_size']}"
        )
    windows = RandomWindows(shards.rank_segments("train", rank, world), run["seq_len"], cfg.seed, rank)
    val = eval_batches(shards.rank_segments("val", rank, world), run["seq_len"], cfg.batch_size, cfg.eval_batches)

    env = init_distributed()
    try:
        return _train(cfg, run, env, windows, val)
    finally:
        destroy_distributed()


def _train(cfg: TrainConfig, run: dict, env: DistEnv, windows: RandomWindows, val: list) -> dict:
    preset = get_preset(cfg.preset)
    args = preset.model_args(run["vocab_size"], run["seq_len"])
    torch.manual_seed(cfg.seed)  # same init on every rank before sharding
    model = Transformer(args).to(env.device)
    parameters = num_parameters(model)
    model = apply_fsdp(model, env)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=run["lr"], betas=ADAM_BETAS, eps=ADAM_EPS
    )
    have_val = all_reduce_min(len(val), env) > 0  # every rank must run the same evaluation collectives

    out = Path(cfg.out)
    metrics = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics = open(out / "metrics.jsonl", "w")
        print(
            f"[model.train] preset {preset.name}: {parameters:,} parameters, world {env.world_size} on "
            f"{env.device.type}, {run['tokens_per_step']:,} tokens/step (batch {cfg.batch_size} x seq "
            f"{run['seq_len']} x accum {run['grad_accum']} x {env.world_size}), lr {run['lr']:g}, warmup {run['warmup']}",
            flush=True,
        )

    settings = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, "run": run}
    started = last_log_time = time.perf_counter()
    tokens_seen = last_log_tokens = 0
    first_loss = last_loss = val_loss = None
    ckpt = None
    for step in range(1, cfg.steps + 1):
        lr = lr_at(step, run["lr"], run["warmup"], cfg.steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=env.device)
        for _ in range(run["grad_accum"]):
            x, y = windows.batch(cfg.batch_size)
            _, loss = model(x.to(env.device), y.to(env.device))
            (loss / run["grad_accum"]).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += run["tokens_per_step"]

        last_step = step == cfg.steps
        evaluate_now = have_val and (last_step or (cfg.eval_every > 0 and step % cfg.eval_every == 0))
        log_now = step == 1 or last_step or step % cfg.log_every == 0 or evaluate_now
        if log_now:
            loss_value = all_reduce_mean(loss_sum.item() / run["grad_accum"], env)
            first_loss = loss_value if first_loss is None else first_loss
            last_loss = loss_value
            now = time.perf_counter()
            record = {
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": full_value(grad_norm),
                "tokens_seen": tokens_seen,
                "tokens_per_s": (tokens_seen - last_log_tokens) / max(now - last_log_time, 1e-9),
                "elapsed_s": now - started,
            }
            last_log_time, last_log_tokens = now, tokens_seen
            if evaluate_now:
                val_loss = record["val_loss"] = evaluate(model, val, env)
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                print(
                    f"step {step}/{cfg.steps} loss {loss_value:.4f} lr {lr:.3g} grad_norm {record['grad_norm']:.3f} "
                    f"tok/s {record['tokens_per_s']:,.0f}" + (f" val_loss {val_loss:.4f}" if evaluate_now else ""),
                    flush=True,
                )
        if last_step or (cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0):
            ckpt = save_checkpoint(
                out, step, model, optimizer, args, env, extra={"tokens_seen": tokens_seen} | settings
            )

    elapsed = time.perf_counter() - started
    summary = {
        "preset": preset.name,
        "parameters": parameters,
        "world_size": env.world_size,
        "device": env.device.type,
        "steps": cfg.steps,
        "tokens": tokens_seen,
        "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
        "elapsed_s": elapsed,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "val_loss": val_loss,
        "checkpoint": str(ckpt.relative_to(out)) if ckpt else None,
    } | settings
    if env.is_main:
        metrics.close()
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.rename(out / "summary.json")
        print(f"[model.train] done: loss {first_loss:.4f} -> {last_loss:.4f}, {tokens_seen:,} tokens", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="token shards folder (pipeline/token_shards.py)")
    p.add_argument("--out", type=Path, required=True, help="run folder: metrics.jsonl, checkpoints/, summary.json")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: preset context)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step (default: reach the preset's batch tokens)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: preset, Table 2)")
    p.add_argument("--warmup", type=int, help="warmup steps (default: min(2000, steps // 10))")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--grad-clip", type=float, default=GRAD_CLIP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the end")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--ckpt-every", type=int, default=0, help="0: checkpoint only at the end")
    ns = p.parse_args(argv)
    if ns.steps < 1 or ns.batch_size < 1 or ns.log_every < 1:
        p.error("--steps, --batch-size and --log-every must be >= 1")
    return TrainConfig(**{k: v for k, v in vars(ns).items()})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (TokenDataError, ValueError) as exc:
        print(f"model.train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
