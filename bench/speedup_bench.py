"""Two workers against one, for every stage of the demo spec (issue 13): local forked processes
(`workers` 2 vs 1) and a 2-CPU Ray cluster on 127.0.0.1 (`ray start --head`), side by side in one run.

    .venv/bin/python bench/speedup_bench.py --out BENCHMARKS.md [--copies 4] [--scale 1.0] [--no-ray]

Inputs: the demo samples generated `--copies` times with different seeds (each copy's files renamed
apart), so every source has at least `--copies` input files (parts): Wikipedia and arXiv have one
file per copy. Each stage runs on the previous stage's output of the one-worker run, so all three
runs of a stage read the same input; the time is the stage's wall time (prepare passes included),
best of `--repeat`. The folders of the three runs are compared: the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, copies: int, scale: float) -> Path:
    from pipeline.samples import write_samples

    inputs = folder / "inputs"
    for seed in range(copies):
        copy = folder / f"copy-{seed}"
        write_samples(copy, seed=seed, scale=scale)
        for path in sorted(p for p in copy.rglob("*") if p.is_file() and p.name != "SAMPLES.json"):
            relative = path.relative_to(copy)
            if path.name == "Posts.xml":  # a StackExchange site is its folder: rename the folder apart
                target = inputs / relative.parent.parent / f"s{seed}-{relative.parent.name}" / path.name
            else:
                target = inputs / relative.parent / f"s{seed}-{relative.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        shutil.rmtree(copy)
    return inputs


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "timing.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pipeline.spec import SPEC_DIR, load_spec
    from pipeline.stage import expand_raw_inputs, get_stage, input_files, run_stage

    spec = load_spec(SPEC_DIR / "demo.yaml")
    work = Path(tempfile.mkdtemp(prefix="speedup-"))
    rows = []
    try:
        inputs_dir = make_inputs(work, args.copies, args.scale)
        executor, stop_ray = None, None
        if not args.no_ray:
            from _pytest.monkeypatch import MonkeyPatch

            from pipeline.executor import RayExecutor
            from tests.clusters import ray_head

            patch = MonkeyPatch()
            head = ray_head(work / "ray-head.log", patch, cpus=2)
            executor = RayExecutor(head.__enter__())

            def stop_ray() -> None:
                executor.close()
                head.__exit__(None, None, None)
                patch.undo()
        known: dict[str, Path] = {}
        try:
            for source in spec.source_order():
                source_spec = spec.sources[source]
                stage_inputs: list[Path] = expand_raw_inputs([inputs_dir / p for p in source_spec.inputs],
                                                             ())
                for name, config in source_spec.stages.items():
                    cls = get_stage(name)
                    refs = {r: known[r] for r in cls.references}
                    refs |= {r: known[r] for r in cls.optional_references if r in known}
                    parts = len(input_files(cls(config, refs), stage_inputs))
                    row = {"stage": name, "parts": parts, "parallel": cls.parallel_parts, "cluster": cls.remote_parts}
                    runs = {"one": {"workers": 1}, "two": {"workers": 2}}
                    if executor is not None:
                        runs["ray"] = {"executor": executor}
                    for label, how in runs.items():
                        best = None
                        for _ in range(args.repeat):
                            out = work / "stages" / f"{name}-{label}"
                            shutil.rmtree(out, ignore_errors=True)
                            started = time.perf_counter()
                            run_stage(cls(config, refs), stage_inputs, out, **how)
                            seconds = time.perf_counter() - started
                            best = seconds if best is None else min(best, seconds)
                        row[label] = round(best, 2)
                    base = work / "stages" / f"{name}-one"
                    row["same_bytes"] = all(folder_bytes(base) == folder_bytes(work / "stages" / f"{name}-{label}")
                                            for label in runs)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    known[name] = base
                    stage_inputs = [base]
        finally:
            if stop_ray is not None:
                stop_ray()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(row: dict, label: str) -> str:
        return f"{row['one'] / row[label]:.2f}x" if label in row and row[label] else "-"

    multi = [r for r in rows if r["parts"] > 1 and r["parallel"]]
    met = [r for r in multi if r["one"] / r["two"] >= 1.8]
    section = [
        "## Two workers against one, every stage",
        "",
        f"`python bench/speedup_bench.py --copies {args.copies} --scale {args.scale}`: the demo spec's stages on "
        f"{args.copies} copies of the generated samples (different seeds), each stage on the same input three ways: "
        "one process, 2 forked workers, and a 2-CPU Ray cluster on 127.0.0.1 (`ray start --head`; part jobs and "
        "prepare passes as Ray tasks). Wall seconds of the stage (prepare included), best of "
        f"{args.repeat}, measured side by side in one run on this 2-core machine. *Same bytes*: the three folders "
        "(parts and manifest) are identical.",
        "",
        "| stage | parts | 1 worker s | 2 workers s | speedup | Ray 2 CPUs s | speedup | same bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {r['stage']} | {r['parts']} | {r['one']} | {r['two']} | {ratio(r, 'two')} | {r.get('ray', '-')} | "
          f"{ratio(r, 'ray')} | {'yes' if r['same_bytes'] else 'NO'} |" for r in rows],
        "",
        f"Stages with more than one part: {len(met)} of {len(multi)} reach 1.8x with 2 local workers (goal: all). "
        "Why the others miss it: at this size a stage takes about a second, so what does not divide weighs — "
        "starting the worker processes or Ray tasks and rebuilding the stage in each (~0.1-0.2 s), the parts' "
        "unequal sizes (the last part runs alone), and the passes that run in one process: cc_perplexity's "
        "SentencePiece + KenLM training and cc_wikiref's classifier training are most of their time here (their "
        "per-part passes alone scale 1.95x and 1.31x in the CommonCrawl section above), books_dedup's LSH index, "
        "and the dedups' reduce passes, whose 64 partitions are each a few milliseconds of work.",
    ]
    if args.out:
        from bench.report import write_section

        write_section(args.out, section)
    print("\n".join(section))


if __name__ == "__main__":
    main()
