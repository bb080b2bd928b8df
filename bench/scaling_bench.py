"""Memory at scale (issue 13): peak RSS of cc_doc_dedup at S, 2S and 4S pages with a fixed partition
count, each size in a fresh process (`/usr/bin/time`-style: the child's ru_maxrss), one worker.

    .venv/bin/python bench/scaling_bench.py --out BENCHMARKS.md [--pages 1000000]

Inputs are generated cc_ingest-format parts of 250,000 pages each (~200 bytes of text, one page in
ten a copy of another), so the digests, not the texts, are what grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PART_PAGES = 250_000
# The whole-input implementation it replaced, measured side by side on the same inputs.
BASELINE_COMMIT = "6fc5c01"


def write_parts(folder: Path, pages: int) -> list[Path]:
    import random

    from pipeline.documents import Document, write_documents

    rng = random.Random(pages)
    words = ["river", "mill", "stone", "valley", "wheel", "bank", "teacher", "morning", "water", "railway"]
    paths = []
    for part in range(max(1, pages // PART_PAGES)):
        docs = []
        for row in range(PART_PAGES):
            n = part * PART_PAGES + row
            key = rng.randrange(n) if n and rng.random() < 0.1 else n  # one in ten repeats an earlier page
            text = " ".join(words[(key >> (3 * i)) % 10] for i in range(12)) + f" {chr(97 + key % 26)}" * 3
            text += "\n" + "".join(chr(97 + (key >> (5 * i)) % 26) for i in range(14))
            docs.append(Document(id=f"cc/{part}/{row}", text=text * 2, source="cc", meta={"url": f"http://x/{n}"}))
        path = folder / f"part-{part:05d}.parquet"
        write_documents(path, docs)
        paths.append(path)
    return paths


def child(which: str, inputs: list[str], output: str) -> None:
    from pipeline.stage import get_stage, run_stage

    name = "cc_doc_dedup"
    if which == "baseline":  # the previous module, under another stage name, in this process only
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:pipeline/commoncrawl/doc_dedup.py"],
                                capture_output=True, text=True, check=True).stdout
        name = "cc_doc_dedup_whole_input"
        exec(compile(source.replace('name = "cc_doc_dedup"', f'name = "{name}"'), "doc_dedup_baseline.py", "exec"),
             {"__name__": "pipeline.commoncrawl.doc_dedup"})
    started = time.perf_counter()
    manifest = run_stage(get_stage(name)(), inputs, output, workers=1)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "docs": manifest["docs_in"],
                      "duplicates": manifest["docs_rejected"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--pages", type=int, default=1_000_000, help="S, the smallest size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[2:], args.child[1])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        parts = write_parts(work / "in", args.pages * 4)
        for factor in (1, 2, 4):
            inputs = [str(p) for p in parts[: max(1, args.pages * factor // PART_PAGES)]]
            row = {"factor": factor}
            for which in ("partitioned", "baseline"):
                out = work / f"out-{which}-{factor}"
                done = subprocess.run([sys.executable, __file__, "--child", which, str(out), *inputs],
                                      capture_output=True, text=True, check=True)
                row[which] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    growth = {w: rows[-1][w]["peak_rss_mb"] / rows[0][w]["peak_rss_mb"] for w in ("partitioned", "baseline")}
    from bench.report import write_section

    section = [
        "## Memory at scale",
        "",
        f"`python bench/scaling_bench.py --pages {args.pages}`: cc_doc_dedup (partitioned passes, 64 partitions, one "
        "worker) on generated cc_ingest parts of 250,000 pages, each size in a fresh process, side by side with the "
        f"whole-input implementation it replaced (`git show {BASELINE_COMMIT}:pipeline/commoncrawl/doc_dedup.py`, one "
        "digest per page of the whole input in one array) on the same inputs; peak RSS is the process's ru_maxrss "
        "(Python, pyarrow and numpy included: ~300 MB before any page).",
        "",
        "| pages | duplicates | partitioned: peak RSS MB | s | whole input: peak RSS MB | s |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['partitioned']['docs']:,} | {r['partitioned']['duplicates']:,} | {r['partitioned']['peak_rss_mb']} | "
          f"{r['partitioned']['seconds']} | {r['baseline']['peak_rss_mb']} | {r['baseline']['seconds']} |" for r in rows],
        "",
        f"Growth from S to 4S: partitioned **{growth['partitioned']:.2f}x** (goal <= 1.2x), whole input "
        f"{growth['baseline']:.2f}x.",
    ]
    if args.out:
        write_section(args.out, section)
    print("\n".join(section))


if __name__ == "__main__":
    main()
