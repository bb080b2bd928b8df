"""How long a checkpoint stops training: synchronous DCP saves against --async-checkpoint
(model/checkpoint.py Checkpointer), one process, the same model and optimizer state side by side.
Writes the "Checkpoints" section of BENCHMARKS.md.

    .venv/bin/python bench/checkpoint_bench.py --out BENCHMARKS.md [--preset 150M] [--repeat 3]

The state is the trainer's: fp32 weights and AdamW's two moments after one real step (12 bytes per
parameter). "Stall" is the time the training loop waits in Checkpointer.save: the whole write when
synchronous, the copy to CPU memory when asynchronous; "committed after" is when the checkpoint is
complete on disk (meta.json written, folder renamed). The saves alternate, sync then async, and the
folder is on the run's disk (--dir), best of --repeat each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_section  # noqa: E402

from model.checkpoint import Checkpointer  # noqa: E402
from model.distributed import DistEnv  # noqa: E402
from model.llama import Transformer, num_parameters  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.train import lr_scheduler, make_optimizer  # noqa: E402


def trained_state(preset: str):
    args = get_preset(preset).model_args(32000, 64)
    torch.manual_seed(0)
    model = Transformer(args)
    optimizer = make_optimizer(model, 1e-4, 0.1)
    scheduler = lr_scheduler(optimizer, 1, 10, 0.1)
    tokens = torch.randint(0, args.vocab_size, (1, 64))
    model(tokens, tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return args, model, optimizer, scheduler


def timed_save(folder: Path, asynchronous: bool, args, model, optimizer, scheduler) -> tuple[float, float]:
    """(stall seconds, seconds until committed) of one checkpoint into a fresh run folder."""
    shutil.rmtree(folder, ignore_errors=True)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    checkpoints = Checkpointer(folder, env, asynchronous, keep_last=0, keep_every=0)
    start = time.perf_counter()
    checkpoints.save(1, model, optimizer, scheduler, args, {"tokens_seen": 0})
    stall = time.perf_counter() - start
    while checkpoints.latest is None:  # what the training loop's per-step poll does
        checkpoints.poll()
        time.sleep(0.01)
    committed = time.perf_counter() - start
    checkpoints.wait()
    return stall, committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="150M")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    ns = parser.parse_args()

    args, model, optimizer, scheduler = trained_state(ns.preset)
    parameters = num_parameters(model)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=ns.dir))
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for repeat in range(ns.repeat):
            # Alternate which goes first: the one after writes while the kernel still flushes the other's pages.
            for asynchronous in ((False, True) if repeat % 2 == 0 else (True, False)):
                results[asynchronous].append(timed_save(root / "run", asynchronous, args, model, optimizer, scheduler))
                print(f"async={asynchronous}: stall {results[asynchronous][-1][0]:.2f} s, "
                      f"committed after {results[asynchronous][-1][1]:.2f} s", flush=True)
        size = sum(p.stat().st_size for p in (root / "run").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)

    best = {mode: (min(s for s, _ in runs), min(c for _, c in runs)) for mode, runs in results.items()}
    lines = [
        "## Checkpoints",
        "",
        f"`python bench/checkpoint_bench.py --preset {ns.preset} --repeat {ns.repeat}`: one process, the "
        f"{ns.preset} preset ({parameters:,} parameters, vocab 32000; a {size / 2**30:.2f} GiB checkpoint: fp32 "
        "weights and AdamW's two moments after a real step), saved synchronously and with `--async-checkpoint` "
        "(`dcp.async_save`) in turn (alternating which goes first), to this machine's disk; best of the repeats. Stall: what the training loop "
        "waits in `Checkpointer.save`; committed: when `meta.json` is written and the folder renamed.",
        "",
        "| mode | stall s | committed after s |",
        "|---|---:|---:|",
        f"| synchronous | {best[False][0]:.2f} | {best[False][1]:.2f} |",
        f"| --async-checkpoint | {best[True][0]:.2f} | {best[True][1]:.2f} |",
        "",
        f"The asynchronous save stops training for {best[True][0] / best[False][0]:.0%} of the synchronous "
        "one's time (the copy of the state to CPU memory); the write itself goes on in a thread while the "
        "next steps train. Here that write took longer than the synchronous save "
        f"({best[True][1]:.2f} s against {best[False][1]:.2f} s; not analysed: nothing waits for it but the "
        "next checkpoint). On a GPU the copy is device-to-host and the write goes to a shared filesystem, both "
        "far from these numbers: not measured here.",
    ]
    write_section(ns.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
