"""Memory at scale (issue 13): peak RSS of cc_doc_dedup and cc_line_dedup at S, 2S and 4S pages with
a fixed partition count, each size in a fresh process (`/usr/bin/time`-style: the child's
ru_maxrss), one worker, side by side with the whole-input implementation each replaced.

    .venv/bin/python bench/scaling_bench.py --out BENCHMARKS.md [--pages 1000000]

Inputs are generated cc_ingest-format parts of 250,000 pages each (~200 bytes of text in 3 lines,
one page in ten a copy of another), so the hashes, not the texts, are what grows. Line dedup runs
with every part in one group (the default group of ~93 M pages), the case where its index grew with the input.
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
# The whole-input implementation each replaced (module, commit), measured side by side on the same inputs.
BASELINES = {"cc_doc_dedup": ("pipeline/commoncrawl/doc_dedup.py", "6fc5c01"),
             "cc_line_dedup": ("pipeline/commoncrawl/line_dedup.py", "30b7a83")}
CONFIGS = {"cc_doc_dedup": {}, "cc_line_dedup": {}}


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


def child(name: str, which: str, inputs: list[str], output: str) -> None:
    from pipeline.stage import get_stage, run_stage

    if which == "baseline":  # the previous module, under another stage name, in this process only
        module, commit = BASELINES[name]
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{module}"],
                                capture_output=True, text=True, check=True).stdout
        exec(compile(source.replace(f'name = "{name}"', f'name = "{name}_whole_input"'), f"{name}_baseline.py", "exec"),
             {"__name__": module[:-3].replace("/", ".")})
        name = f"{name}_whole_input"
    stage = get_stage(name)(CONFIGS[name.removesuffix("_whole_input")])
    sampler = RssSampler()
    started = time.perf_counter()
    with sampler:
        manifest = run_stage(stage, inputs, output, workers=1)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "docs": manifest["docs_in"],
                      "rejected": manifest["docs_rejected"], "working_mb": sampler.growth_mb(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


class RssSampler:
    """The stage's own memory: the highest resident set sampled every 2 ms while it runs, minus the
    resident set before it starts (the interpreter and its imports, whose high-water mark of ~310 MB
    would otherwise hide anything smaller in ru_maxrss)."""

    def __init__(self) -> None:
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start = self.peak = self._rss()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def growth_mb(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--pages", type=int, default=1_000_000, help="S, the smallest size")
    parser.add_argument("--stages", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[3:], args.child[2])
        return
    rows = {name: [] for name in args.stages}
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        parts = write_parts(work / "in", args.pages * 4)
        for name in args.stages:
            for factor in (1, 2, 4):
                inputs = [str(p) for p in parts[: max(1, args.pages * factor // PART_PAGES)]]
                row = {"factor": factor}
                for which in ("partitioned", "baseline"):
                    out = work / f"out-{name}-{which}-{factor}"
                    done = subprocess.run([sys.executable, __file__, "--child", name, which, str(out), *inputs],
                                          capture_output=True, text=True, check=True)
                    row[which] = json.loads(done.stdout.strip().splitlines()[-1])
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                rows[name].append(row)
                print(name, row, flush=True)
    from bench.report import write_section

    section = [
        "## Memory at scale",
        "",
        f"`python bench/scaling_bench.py --pages {args.pages}`: each dedup (partitioned passes, 64 partitions, one "
        "worker) on generated cc_ingest parts of 250,000 pages (3 lines each), each size in a fresh process, side by "
        "side with the whole-input implementation it replaced (`git show COMMIT:MODULE`: cc_doc_dedup's one digest per "
        "page of the whole input in one array; cc_line_dedup's one sorted index of the group's unique line hashes and "
        "its per-line spill in the driver's /tmp) on the same inputs. cc_line_dedup runs with all parts in one group "
        "(the default group_pages, ~93 M pages). *Stage MB* is the stage's own memory: the highest resident set sampled every 2 ms while "
        "it runs minus the resident set before it starts; *peak RSS* is the process's ru_maxrss, whose floor of "
        "~300 MB is the imports' high-water mark (it hides anything smaller).",
        "",
    ]
    for name, table in rows.items():
        module, commit = BASELINES[name]
        growth = {w: table[-1][w]["peak_rss_mb"] / table[0][w]["peak_rss_mb"] for w in ("partitioned", "baseline")}
        working = {w: table[-1][w]["working_mb"] / max(table[0][w]["working_mb"], 0.1) for w in ("partitioned", "baseline")}
        section += [
            f"**{name}** (baseline `{commit}:{module}`)",
            "",
            "| pages | rejected | partitioned: stage MB | peak RSS MB | s | whole input: stage MB | peak RSS MB | s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {r['partitioned']['docs']:,} | {r['partitioned']['rejected']:,} | {r['partitioned']['working_mb']} | "
              f"{r['partitioned']['peak_rss_mb']} | {r['partitioned']['seconds']} | {r['baseline']['working_mb']} | "
              f"{r['baseline']['peak_rss_mb']} | {r['baseline']['seconds']} |" for r in table],
            "",
            f"Growth from S to 4S: partitioned **{growth['partitioned']:.2f}x** peak RSS (goal <= 1.2x), stage memory "
            f"{working['partitioned']:.2f}x; whole input {growth['baseline']:.2f}x peak RSS, stage memory "
            f"{working['baseline']:.2f}x.",
            "",
        ]
    if args.out:
        write_section(args.out, section[:-1])
    print("\n".join(section))


if __name__ == "__main__":
    main()
