"""Stage throughput benchmark: every stage of a spec on the generated sample inputs, one process (so
the figures are per core), written to BENCHMARKS.md with the command that produced them.

    .venv/bin/python bench/run.py --out BENCHMARKS.md [--scale 1.0] [--spec demo]

Issues 3-6 add the side-by-side comparisons (datatrove blocks, raw fastText/KenLM/SentencePiece, HF
transformers) to this same file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.corpus import resolve_inputs  # noqa: E402
from pipeline.samples import write_samples  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402
from pipeline.stage import get_stage, run_stage  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--spec", default="demo")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    spec = load_spec(args.spec)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llama-recipe-bench-"))
    samples = work / "samples"
    t0 = time.time()
    write_samples(samples, seed=0, scale=args.scale)
    samples_s = time.time() - t0

    rows = []
    outputs: dict[str, Path] = {}
    for source in spec.source_order():
        source_spec = spec.sources[source]
        inputs: list = resolve_inputs(source_spec.inputs, samples)
        for name, config in source_spec.stages.items():
            cls = get_stage(name)
            refs = {ref: outputs[ref] for ref in cls.references}
            refs |= {ref: outputs[ref] for ref in cls.optional_references if ref in outputs}
            stage = cls(config, refs)
            output = work / "stages" / name
            started = time.perf_counter()
            manifest = run_stage(stage, inputs, output)
            seconds = time.perf_counter() - started
            mb = manifest["bytes_in"] / 1e6
            rows.append((name, manifest["docs_in"], mb, seconds, mb / seconds, manifest["docs_in"] / seconds))
            print(f"{name:<22} {manifest['docs_in']:>7} docs {mb:8.2f} MB {seconds:7.2f} s {mb / seconds:7.2f} MB/s", flush=True)
            outputs[name] = output
            inputs = [output]

    command = f".venv/bin/python bench/run.py --out {args.out} --scale {args.scale} --spec {args.spec}"
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench`, i.e.:",
        "",
        f"    {command}",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}; "
        f"date {time.strftime('%Y-%m-%d')}.",
        "",
        "## Stage throughput (one process, so per core)",
        "",
        f"Input: the generated sample corpus at scale {args.scale} (written in {samples_s:.1f} s). MB are UTF-8 "
        "bytes of document text entering the stage (for ingest stages: the text extracted). Stages that train "
        "a model in their first pass (cc_perplexity: SentencePiece + lmplz; cc_wikiref: fastText) include the "
        "training time. At this small scale fixed costs (model loading, training) dominate several rows.",
        "",
        "| stage | documents | MB in | seconds | MB/s | docs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {d} | {mb:.2f} | {s:.2f} | {r:.2f} | {dr:.0f} |" for n, d, mb, s, r, dr in rows]
    lines += ["", "Goals and side-by-side comparisons with datatrove and the raw libraries arrive with issues 3-6.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
