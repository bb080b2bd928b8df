"""Training throughput and MFU of the trainer (model/train.py) on every device mesh that fits the GPUs
here: the ~1B preset, bf16, compiled blocks. Writes the "Training on GPU" section of BENCHMARKS.md.

    .venv/bin/python bench/gpu_bench.py --out BENCHMARKS.md                     # every GPU of this machine
    .venv/bin/python bench/gpu_bench.py --float8 tensorwise --out BENCHMARKS.md # and each layout with float8

Each layout is one launch of the real trainer (`python -m model.train`, under torchrun for several
GPUs) on a folder of random token ids in the token-shards format, with the same global batch, seed
and data for all: micro-batch --batch-size, the rest of the global batch (--batch-size x
--grad-accum x GPUs sequences) as accumulation, which the trainer derives for each mesh. The layouts
for N GPUs (those the model's shape allows): 1 GPU; flat FSDP2 over N; HSDP 2 x N/2; tensor +
sequence parallel over 2 (and over N up to 8) with FSDP2 over the rest; 2 pipeline stages with FSDP2
over the rest; with --float8, each of them again with float8 matmuls. Throughput and MFU are the trainer's own metrics.jsonl figures (6N + 12·L·d·T FLOPs per
token against the GPU's dense bf16 datasheet peak, model/flops.py; --peak-flops overrides) over the
steps after --warmup-steps (compilation happens there); peak memory is the trainer's (summary.json,
the largest rank's). Since every layout trains the same batches from the same weights, the last
step's loss is reported too: the layouts must agree to bf16 rounding. Goal: >= 50% MFU on an H100.

Without CUDA it refuses, unless --allow-cpu: the same launches on CPU processes (gloo), a check that
every layout runs and agrees (tests/test_gpu_bench.py), not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import write_section  # noqa: E402

from model.data import FORMAT  # noqa: E402
from model.float8 import RECIPES as FLOAT8_RECIPES  # noqa: E402
from model.flops import mfu  # noqa: E402
from model.llama import ffn_hidden_dim  # noqa: E402
from model.parallelize import MeshDims, check_pipeline_parallel, check_tensor_parallel  # noqa: E402
from model.presets import get_preset  # noqa: E402

SECTION = "## Training on GPU"
GOAL_MFU = 0.5
RANDOM_VOCAB = 32000  # the random tokens' ids; the model's vocabulary is the preset's (32,000 for 1B)


@dataclass(frozen=True)
class Layout:
    name: str
    mesh: MeshDims
    float8: str | None = None

    def trainer_args(self) -> list[str]:
        m = self.mesh
        args = ["--dp-replicate", str(m.dp_replicate), "--dp-shard", str(m.dp_shard), "--tp", str(m.tp), "--pp", str(m.pp)]
        return args + (["--float8", self.float8] if self.float8 else [])


def layouts(n: int, preset: str, seq_len: int, float8: str | None = None) -> list[Layout]:
    """The meshes this benchmark runs on n devices, those the preset's shape allows; with `float8`,
    each layout once more with float8 matmuls (model/float8.py)."""
    shape = get_preset(preset).model_args(RANDOM_VOCAB)
    candidates = [("1 GPU", MeshDims())] if n == 1 else [(f"FSDP2 {n}", MeshDims(dp_shard=n))]
    if n >= 4 and n % 2 == 0:
        candidates.append((f"HSDP 2 x {n // 2}", MeshDims(dp_replicate=2, dp_shard=n // 2)))
    if n >= 2 and n % 2 == 0:
        candidates.append((f"TP 2 x FSDP2 {n // 2}" if n > 2 else "TP 2", MeshDims(dp_shard=n // 2, tp=2)))
    if 2 < n <= 8:
        candidates.append((f"TP {n}", MeshDims(tp=n)))
    if n >= 2 and n % 2 == 0:
        candidates.append((f"PP 2 x FSDP2 {n // 2}" if n > 2 else "PP 2", MeshDims(dp_shard=n // 2, pp=2)))
    chosen = []
    for name, mesh in candidates:
        try:
            check_tensor_parallel(mesh, shape.n_heads, ffn_hidden_dim(shape), seq_len)
            check_pipeline_parallel(mesh, shape.n_layers)
        except ValueError:
            continue
        chosen.append(Layout(name, mesh))
        if float8:
            chosen.append(Layout(f"{name}, float8 {float8}", mesh, float8))
    return chosen


def write_random_tokens(root: Path, tokens: int, seed: int = 0, doc_len: int = 4096) -> Path:
    """A token-shards folder (model/data.py's format, version 1) of `tokens` random ids: what is
    measured is the trainer, not the data, and random ids are what every layout reads alike."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, RANDOM_VOCAB, size=tokens, dtype=np.uint16)
    (root / "train").mkdir(parents=True, exist_ok=True)
    ids.astype("<u2").tofile(root / "train" / "shard-00000.bin")
    starts = np.arange(0, tokens + 1, doc_len, dtype="<i8")
    if starts[-1] != tokens:
        starts = np.append(starts, tokens).astype("<i8")
    starts.tofile(root / "train" / "shard-00000.idx")
    stats = {
        "format": FORMAT, "version": 1, "dtype": "uint16", "vocab_size": RANDOM_VOCAB, "bos_id": 1, "eos_id": 2,
        "shards": [{"split": "train", "path": "train/shard-00000.bin", "idx_path": "train/shard-00000.idx",
                    "tokens": tokens, "docs": len(starts) - 1, "sha256": ""}],
    }
    (root / "manifest.json").write_text(json.dumps({"stage": "token_shards", "stats": stats}))
    return root


def launch_command(n: int) -> list[str]:
    if n == 1:
        return [sys.executable, "-m", "model.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "model.train"]


def run_layout(layout: Layout, args, n: int, data: Path, out: Path, batch_tokens: int) -> dict:
    """One launch of the trainer; its measured figures, or the error that stopped it."""
    cmd = launch_command(n) + [
        "--data", str(data), "--out", str(out), "--preset", args.preset, "--seq-len", str(args.seq_len),
        "--steps", str(args.warmup_steps + args.steps), "--batch-tokens", str(batch_tokens),
        "--batch-size", str(args.batch_size), "--warmup", "0", "--log-every", "1", "--eval-every", "0",
        "--no-checkpoint", "--no-tensorboard", "--spike-window", "0", "--precision", args.precision,
        "--activation-checkpointing", args.activation_checkpointing, *layout.trainer_args(),
    ] + ([] if args.no_compile else ["--compile"]) + (["--peak-flops", str(args.peak_flops)] if args.peak_flops else [])
    print(f"[gpu_bench] {layout.name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    result = {"layout": layout.name, "mesh": layout.mesh.describe(), "float8": layout.float8}
    summary_path = out / "summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        print("\n".join(tail), file=sys.stderr, flush=True)
        return result | {"error": next((line for line in reversed(tail) if "rror" in line), tail[-1] if tail else "failed")}
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > args.warmup_steps]
    per_step = summary["tokens_per_step"]
    seconds = sum(per_step / r["tokens_per_s"] for r in timed)  # each record covers one step (--log-every 1)
    tokens_per_s = per_step * len(timed) / seconds
    run = summary["run"]
    return result | {
        "micro_batch": run["batch_size"], "grad_accum": run["grad_accum"], "tokens_per_step": per_step,
        "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / n,
        "mfu": mfu(tokens_per_s, run["flops_per_token"], run["peak_flops"], n),
        "peak_flops": run["peak_flops"], "peak_flops_source": run["peak_flops_source"],
        "peak_mem_gib": summary["peak_mem_gib"], "last_loss": summary["last_loss"], "precision": summary["precision"],
        "parameters": summary["parameters"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="1B")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch per data-parallel rank")
    parser.add_argument("--grad-accum", type=int, default=4,
                        help="global batch = batch-size x grad-accum x devices sequences (the same for every layout)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--gpus", type=int, help="devices to use (default: every GPU here)")
    parser.add_argument("--layouts", help="comma-separated layout names to run (default: all that fit)")
    parser.add_argument("--float8", choices=FLOAT8_RECIPES, help="also run each layout with float8 matmuls")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--activation-checkpointing", default="none", choices=["none", "selective", "full"])
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s per device (default: datasheet)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per layout")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run the layouts on CPU processes: a check that they run, not a benchmark")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to update")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("bench/gpu_bench.py: no CUDA device here; this benchmark needs a GPU (CPU figures: bench/train_bench.py; "
              "--allow-cpu runs the layouts on CPU processes as a check)", file=sys.stderr)
        return 2
    n = args.gpus or (torch.cuda.device_count() if cuda else 1)
    if cuda and n > torch.cuda.device_count():
        parser.error(f"--gpus {n}: this machine has {torch.cuda.device_count()}")
    chosen = layouts(n, args.preset, args.seq_len, args.float8)
    if args.layouts:
        wanted = [name.strip() for name in args.layouts.split(",")]
        unknown = [name for name in wanted if name not in {layout.name for layout in chosen}]
        if unknown:
            parser.error(f"--layouts {', '.join(unknown)}: not among {', '.join(layout.name for layout in chosen)}")
        chosen = [layout for layout in chosen if layout.name in wanted]
    batch_tokens = args.batch_size * args.grad_accum * n * args.seq_len
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        data = write_random_tokens(Path(scratch) / "tokens", batch_tokens * (args.warmup_steps + args.steps) + args.seq_len + 1)
        results = [run_layout(layout, args, n, data, Path(scratch) / f"run-{i}", batch_tokens) for i, layout in enumerate(chosen)]
    report = {
        "device": torch.cuda.get_device_name(0) if cuda else "CPU (gloo processes; a functional check, not a benchmark)",
        "cuda": cuda, "devices": n, "preset": args.preset, "seq_len": args.seq_len, "batch_tokens": batch_tokens,
        "compile": not args.no_compile, "activation_checkpointing": args.activation_checkpointing,
        "torch": torch.__version__, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "command": " ".join(["bench/gpu_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        write_report(args.out, report)
    return 0 if any("error" not in r for r in results) else 1


def write_report(out: Path, report: dict) -> None:
    ok = [r for r in report["results"] if "error" not in r]
    parameters = f" ({ok[0]['parameters']:,} parameters)" if ok else ""
    section = [
        SECTION,
        "",
        f"    .venv/bin/python {report['command']}",
        "",
        f"{report['devices']} x {report['device']}, torch {report['torch']}: the trainer (model/train.py) with preset "
        f"{report['preset']}{parameters}, {report['batch_tokens']:,} tokens per step in every layout (sequences of "
        f"{report['seq_len']}), compile {report['compile']}, activation checkpointing {report['activation_checkpointing']}, "
        f"{report['steps']} timed steps after {report['warmup_steps']} untimed.",
        "",
        "| layout | mesh | micro-batch x accumulation | tokens/s | tokens/s per device | MFU | peak memory | last loss |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            section.append(f"| {r['layout']} | {r['mesh']} | failed: {r['error'][:120]} | | | | | |")
            continue
        mfu_text = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "unknown peak"
        section.append(f"| {r['layout']} | {r['mesh']} | {r['micro_batch']} x {r['grad_accum']} | {r['tokens_per_s']:,.0f} | "
                       f"{r['tokens_per_s_per_device']:,.0f} | {mfu_text} | {r['peak_mem_gib']:.1f} GiB | {r['last_loss']:.4f} |")
    best = max((r["mfu"] for r in ok if r["mfu"] is not None), default=None)
    if not report["cuda"]:
        verdict = "On CPU processes: the layouts run and agree; the figures are not a benchmark."
    elif best is None:
        verdict = "MFU: no peak known for this device (pass --peak-flops)."
    else:
        verdict = (f"MFU against {ok[0]['peak_flops_source']}; goal >= {100 * GOAL_MFU:.0f}%: "
                   f"{'met' if best >= GOAL_MFU else 'NOT met'} (best {100 * best:.1f}%).")
    section += ["", verdict, ""]
    write_section(out, section)
    print(f"wrote the {SECTION[3:]} section of {out}")


if __name__ == "__main__":
    sys.exit(main())
