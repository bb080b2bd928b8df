"""CommonCrawl stage benchmark (issue 3 item 7): our CC stages, the raw libraries they are built on,
and datatrove's nearest blocks, on one fixed generated WET corpus (>= 100 MB), one process each
(so MB/s are per core). Appends a "CommonCrawl stages" section to BENCHMARKS.md.

    .venv/bin/python bench/cc_bench.py --out BENCHMARKS.md

datatrove runs from .venv-bench (made by `make bench`); without it that column says why.
MB: uncompressed WET bytes for the readers, UTF-8 bytes of the page text entering the stage for
the others (taken from the previous stage's manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cc_corpus import build_corpus  # noqa: E402
from pipeline.commoncrawl.doc_dedup import CCDocDedup  # noqa: E402
from pipeline.commoncrawl.ingest import CCIngest  # noqa: E402
from pipeline.commoncrawl.langid import CCLangId, lid_model  # noqa: E402
from pipeline.commoncrawl.line_dedup import CCLineDedup  # noqa: E402
from pipeline.documents import kept_parts, read_documents  # noqa: E402
from pipeline.resources import lid_model_path  # noqa: E402
from pipeline.stage import run_stage  # noqa: E402

SECTION = "## CommonCrawl stages"


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_datatrove(corpus: Path, work: Path) -> dict:
    python = ROOT / ".venv-bench" / "bin" / "python"
    if not python.exists():
        return {"error": ".venv-bench missing (make bench creates it with datatrove)"}
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(python), str(ROOT / "bench" / "cc_bench_datatrove.py"), str(corpus),
                           str(lid_model_path()), str(work)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "bench" / "cc_corpus")
    parser.add_argument("--target-mb", type=float, default=100.0)
    args = parser.parse_args()

    corpus = build_corpus(args.corpus, args.target_mb)
    files = [args.corpus / f for f in corpus["files"]]
    wet_mb = corpus["wet_bytes"] / 1e6
    work = args.corpus.parent / "cc_work"
    shutil.rmtree(work, ignore_errors=True)

    ours: dict[str, tuple[float, float]] = {}  # stage -> (MB, seconds)
    ingest, s = timed(lambda: run_stage(CCIngest(), files, work / "cc_ingest"))
    ours["cc_ingest"] = (wet_mb, s)
    text_mb = ingest["bytes_kept"] / 1e6
    pages = [work / "cc_ingest"]
    line, s = timed(lambda: run_stage(CCLineDedup(), pages, work / "cc_line_dedup"))
    ours["cc_line_dedup"] = (text_mb, s)
    _, s = timed(lambda: run_stage(CCDocDedup(), pages, work / "cc_doc_dedup"))
    ours["cc_doc_dedup"] = (text_mb, s)
    _, s = timed(lambda: run_stage(CCLangId(), pages, work / "cc_langid"))
    ours["cc_langid"] = (text_mb, s)

    # Raw limits on the same page text.
    texts = [d.text for p in kept_parts(work / "cc_ingest") for d in read_documents(p, columns=["id", "text"])]
    _, sha_s = timed(lambda: [hashlib.sha1(line.encode("utf-8")).digest() for t in texts for line in t.split("\n")])
    model = lid_model()
    flat = [t.replace("\n", " ") for t in texts]
    _, lid_s = timed(lambda: model.predict(flat, k=1))
    del texts, flat

    dt = run_datatrove(args.corpus, work / "datatrove")
    for name, (mb, s) in ours.items():
        print(f"{name:<16} {mb:8.1f} MB {s:7.2f} s {mb / s:7.2f} MB/s", flush=True)
    print("datatrove", json.dumps(dt))

    def dt_rate(block: str) -> tuple[str, float | None]:
        if "error" in dt:
            return f"not run: {dt['error']}", None
        r = dt.get(block, {})
        if "error" in r:
            return f"not run: {r['error']}", None
        rate = r["mb"] / r["seconds"]
        return f"{rate:.2f} ({block})", rate

    stats = line["stats"]
    rows = []
    limits = {"cc_line_dedup": ("sha1 of the lines", text_mb / sha_s), "cc_langid": ("fastText predict", text_mb / lid_s)}
    blocks = {"cc_ingest": "WarcReader", "cc_doc_dedup": "ExactDedup", "cc_line_dedup": "SentenceDedup",
              "cc_langid": "LanguageFilter"}
    for name, (mb, s) in ours.items():
        rate = mb / s
        dt_text, dt_value = dt_rate(blocks[name])
        limit_name, limit = limits.get(name, (None, None))
        goals = []
        if dt_value:
            goals.append(f"{rate / dt_value:.2f}x datatrove (goal 1.5x: {'met' if rate >= 1.5 * dt_value else 'NOT met'})")
        if name == "cc_langid":
            goals.append(f"{rate / limit:.0%} of raw predict (goal 80%: {'met' if rate >= 0.8 * limit else 'NOT met'})")
        if name == "cc_line_dedup":
            goals.append(f"goal 20 MB/s: {'met' if rate >= 20 else 'NOT met'}")
        rows.append(f"| {name} | {rate:.2f} | {dt_text} | {f'{limit:.2f} ({limit_name})' if limit else '-'} | "
                    f"{'; '.join(goals) or '-'} |")

    section = [
        SECTION,
        "",
        "Produced by `make bench` (second step), i.e.:",
        "",
        f"    .venv/bin/python bench/cc_bench.py --out {args.out}",
        "",
        f"Input: {len(files)} generated WET files, {wet_mb:.1f} MB uncompressed ({ingest['docs_in']} records; "
        f"bench/cc_corpus.py, cached under runs/bench/cc_corpus). Every row is one process on one core, same "
        f"machine, same run. MB: WET bytes for the readers, page text ({text_mb:.1f} MB after ingest) for the "
        "rest; each stage here reads the ingest output, and the figures include Parquet read and write. "
        "datatrove's LanguageFilter uses our lid.176 file (its own would be downloaded) and predicts all "
        "labels (k=-1, its default); its dedups run signature, find and filter steps in one process.",
        "",
        "| stage | ours MB/s | datatrove MB/s (block) | raw limit MB/s | ratio / goal |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
        f"Line dedup memory: {stats['unique_line_hashes']} unique line hashes in {stats['groups']} group(s) of "
        f"{stats['group_size']} parts; peak of the hash index {stats['index_peak_bytes']} bytes = "
        f"{stats['index_bytes_per_unique_line']} bytes per unique line (goal <= 16: "
        f"{'met' if stats['index_bytes_per_unique_line'] <= 16 else 'NOT met'}).",
        "",
    ]
    text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
    if SECTION in text:
        text = text[: text.index(SECTION)]
    args.out.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section))
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
