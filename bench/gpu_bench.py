"""GPU training throughput and MFU of the ~1B preset: bf16, compiled blocks, one GPU (or more under
torchrun, FSDP2 over NCCL). Writes the "Training on GPU" section of BENCHMARKS.md.

    .venv/bin/python bench/gpu_bench.py --out BENCHMARKS.md
    torchrun --nproc_per_node 8 bench/gpu_bench.py --out BENCHMARKS.md

The step is the trainer's (model/train.py): FSDP2 when distributed, bf16 parameters (FSDP2's
MixedPrecisionPolicy) or bf16 autocast on one GPU, fp32 master weights and AdamW state, selective
activation checkpointing if asked, clip 1.0. Synthetic tokens: the data loader is not what is
measured. MFU uses model/flops.py (6N + 12·L·d·T against the GPU's dense bf16 datasheet peak;
--peak-flops overrides). Goal: >= 50% MFU on an H100.

Refuses to run without CUDA: CPU figures are bench/train_bench.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_section  # noqa: E402

from model.distributed import (  # noqa: E402
    apply_activation_checkpointing,
    apply_fsdp,
    autocast,
    compile_blocks,
    destroy_distributed,
    init_distributed,
)
from model.flops import flops_per_token, mfu, peak_flops  # noqa: E402
from model.llama import Transformer, num_parameters  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.train import GRAD_CLIP, make_optimizer  # noqa: E402

SECTION = "## Training on GPU"
GOAL_MFU = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="1B")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per GPU per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--activation-checkpointing", default="none", choices=["none", "selective", "full"])
    parser.add_argument("--peak-flops", type=float, help="peak bf16 FLOP/s per GPU (default: datasheet)")
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to update (rank 0)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_bench.py: no CUDA device here; this benchmark needs a GPU (CPU figures: bench/train_bench.py)",
              file=sys.stderr)
        return 2

    env = init_distributed()
    try:
        result = run(args, env)
    finally:
        destroy_distributed()
    if env.is_main:
        print(json.dumps(result, indent=1))
        if args.out:
            write_report(args.out, result)
    return 0


def run(args, env) -> dict:
    preset = get_preset(args.preset)
    model_args = preset.model_args(max_seq_len=args.seq_len)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(model_args)
    parameters = num_parameters(model)
    model.to_empty(device=env.device)
    model.init_weights()
    model = apply_activation_checkpointing(model, args.activation_checkpointing)
    if not args.no_compile:
        model = compile_blocks(model)
    model = apply_fsdp(model, env, "bf16")
    optimizer = make_optimizer(model, preset.lr, 0.1)
    tokens = torch.randint(0, model_args.vocab_size, (args.batch_size, args.seq_len + 1), device=env.device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        with autocast(env.device, "bf16", env.distributed):
            loss = model(x, y)  # the trainer's fused, chunked head + cross-entropy
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens_per_s = args.steps * args.batch_size * args.seq_len * env.world_size / elapsed
    peak, source = (args.peak_flops, "--peak-flops") if args.peak_flops else peak_flops(env.device, "bf16")
    flops_token = flops_per_token(model_args, parameters, args.seq_len)
    return {
        "gpu": torch.cuda.get_device_name(env.device),
        "gpus": env.world_size,
        "preset": preset.name,
        "parameters": parameters,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "compile": not args.no_compile,
        "activation_checkpointing": args.activation_checkpointing,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / env.world_size,
        "mfu": mfu(tokens_per_s, flops_token, peak, env.world_size),
        "peak_flops": peak,
        "peak_flops_source": source,
        "peak_mem_gib": torch.cuda.max_memory_allocated(env.device) / 2**30,
        "last_loss": loss,
        "torch": torch.__version__,
        "command": " ".join(["bench/gpu_bench.py", *sys.argv[1:]]) + (f" (torchrun, {env.world_size} processes)" if env.world_size > 1 else ""),
    }


def write_report(out: Path, r: dict) -> None:
    mfu_text = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "unknown peak (pass --peak-flops)"
    met = r["mfu"] is not None and r["mfu"] >= GOAL_MFU
    section = [
        SECTION,
        "",
        f"    .venv/bin/python {r['command']}",
        "",
        f"{r['gpus']} x {r['gpu']}, torch {r['torch']}: preset {r['preset']} ({r['parameters']:,} parameters), "
        f"{r['batch_size']} x {r['seq_len']} tokens per GPU per step, bf16, compile {r['compile']}, "
        f"activation checkpointing {r['activation_checkpointing']}.",
        "",
        "| tokens/s | tokens/s per GPU | MFU | peak memory |",
        "|---:|---:|---:|---:|",
        f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | {mfu_text} | {r['peak_mem_gib']:.1f} GiB |",
        "",
        f"MFU against {r['peak_flops_source']}; goal >= {100 * GOAL_MFU:.0f}%: {'met' if met else 'NOT met'}.",
        "",
    ]
    write_section(out, section)
    print(f"wrote the {SECTION[3:]} section of {out}")


if __name__ == "__main__":
    sys.exit(main())
