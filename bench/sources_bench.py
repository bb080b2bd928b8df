"""Throughput of the six source cleaners on the real samples in ../shared/realdata, per core.

    .venv/bin/python bench/sources_bench.py [--out BENCHMARKS.md] [--realdata DIR]

Every stage runs through run_stage in this one process (workers=1), reading and writing its Parquet
stage folder as in a build; the clock is CPU time of the process (time.process_time), so the figures
are per core and do not move with other load on the machine. MB = UTF-8 bytes of the document text
a stage reads (for a reader: the text it produces), i.e. the manifest's bytes_in.

Two comparisons the issue asks for:
- c4_quality's rules beside datatrove's C4QualityFilter on the same pages (bench/
  sources_bench_datatrove.py, run with .venv-bench/bin/python; without that venv the row says why),
  both in memory, best of 3.
- books_dedup's MinHash signatures (numpy, pipeline.sources.books.minhash_signature, shingling
  included) beside datasketch's own MinHash.update_batch on the same shingles (5-word strings,
  its default sha1 hash function), on the Gutenberg books.
Writes (replaces) the "## Source cleaners" section of --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from datasketch import MinHash  # noqa: E402

from pipeline.documents import Document, kept_parts, read_documents  # noqa: E402
from pipeline.sources.books import BooksDedup, BooksIngest, minhash_signature, shingle_array  # noqa: E402
from pipeline.sources.c4 import C4Quality  # noqa: E402
from pipeline.stage import get_stage, run_stage  # noqa: E402

SECTION = "## Source cleaners"


def cpu(fn):
    started = time.process_time()
    result = fn()
    return result, time.process_time() - started


def run(name: str, inputs: list[Path], out: Path, config: dict | None = None) -> dict:
    stage = get_stage(name)(config or {})
    manifest, seconds = cpu(lambda: run_stage(stage, inputs, out))
    mb = manifest["bytes_in"] / 1e6
    return {"stage": name, "mb": mb, "docs": manifest["docs_in"], "kept": manifest["docs_kept"], "seconds": seconds}


def tarball(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return out


def c4_side_by_side(c4: Path) -> dict:
    with gzip.open(c4, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    best = None
    for _ in range(3):
        docs = [Document(id=str(i), text=t, source="c4") for i, t in enumerate(texts)]
        stage = C4Quality()
        out, seconds = cpu(lambda: stage(docs))
        best = seconds if best is None else min(best, seconds)
    ours = {"mb": mb, "docs": len(texts), "seconds": best, "kept": sum(d.reason is None for d in out)}
    python = ROOT / ".venv-bench" / "bin" / "python"
    if not python.exists():
        theirs = {"error": ".venv-bench missing (make bench creates it with datatrove and spacy)"}
    else:
        proc = subprocess.run([str(python), str(ROOT / "bench" / "sources_bench_datatrove.py"), str(c4)],
                              capture_output=True, text=True, timeout=1800)
        try:
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            theirs = {"error": f"datatrove script failed: {proc.stderr.strip()[-300:]}"}
    return {"ours": ours, "datatrove": theirs}


def minhash_side_by_side(books: list[str], num_perm: int = 128, size: int = 5) -> dict:
    mb = sum(len(t.encode("utf-8")) for t in books) / 1e6
    permutations = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations

    def ours():
        for text in books:
            minhash_signature(shingle_array(text, size), permutations)

    shingles = []
    for text in books:
        words = re.findall(r"\w+", text.lower())
        shingles.append({" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)})

    def datasketch():
        for book in shingles:
            MinHash(num_perm=num_perm, seed=1).update_batch(book)

    _, ours_s = cpu(ours)
    _, theirs_s = cpu(datasketch)
    return {"mb": mb, "books": len(books), "ours_seconds": ours_s, "datasketch_seconds": theirs_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--realdata", type=Path, default=Path(os.environ.get("LLAMA_RECIPE_REALDATA", ROOT.parent / "shared" / "realdata")))
    args = parser.parse_args()
    real = args.realdata
    if not real.is_dir():
        print(f"real-data samples not found at {real}: nothing to measure")
        return
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sources-bench-") as tmp:
        work = Path(tmp)
        c4 = real / "c4/c4-sample.00000-of-00001.json.gz"
        rows.append(run("c4_ingest", [c4], work / "c4_ingest"))
        rows.append(run("c4_quality", [work / "c4_ingest"], work / "c4_quality"))

        gh = real / "github/github_000000000000.jsonl.gz"
        rows.append(run("github_ingest", [gh], work / "github_ingest"))
        rows.append(run("github_filter", [work / "github_ingest"], work / "github_filter"))
        rows.append(run("github_dedup", [work / "github_filter"], work / "github_dedup"))

        wiki = real / "wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
        rows.append(run("wikipedia_ingest", [wiki], work / "wikipedia_ingest"))
        rows.append(run("wikipedia_clean", [work / "wikipedia_ingest"], work / "wikipedia_clean"))

        rows.append(run("books_ingest", [real / "gutenberg/raw"], work / "books_ingest"))
        rows.append(run("books_dedup", [work / "books_ingest"], work / "books_dedup"))
        books = [d.text for p in kept_parts(work / "books_ingest") for d in read_documents(p)]

        papers = [tarball(real / "arxiv" / name, work / f"{name}.tar.gz")
                  for name in ("scipy-1.0-paper", "sympy-paper", "hott-book-excerpt")]
        rows.append(run("arxiv_ingest", papers, work / "arxiv_ingest"))
        rows.append(run("arxiv_clean", [work / "arxiv_ingest"], work / "arxiv_clean"))

        rows.append(run("stackexchange_ingest", [real / "stackexchange"], work / "stackexchange_ingest"))

    c4_cmp = c4_side_by_side(real / "c4/c4-sample.00000-of-00001.json.gz")
    mh = minhash_side_by_side(books)
    result = {"stages": rows, "c4": c4_cmp, "minhash": mh}
    print(json.dumps(result, indent=2))
    if args.out:
        write_report(args.out, result)


def rate(mb: float, seconds: float) -> str:
    return f"{mb / seconds:.2f}" if seconds > 0 else "n/a"


def write_report(out: Path, result: dict) -> None:
    lines = [
        SECTION,
        "",
        "`.venv/bin/python bench/sources_bench.py --out BENCHMARKS.md` (run by `make bench`): every cleaner",
        "through run_stage (Parquet in and out) on the real samples of ../shared/realdata, one process, CPU",
        "time, so per core. MB = text bytes the stage reads (a reader: the text it produces).",
        "",
        "| stage | input | MB | docs in | kept | CPU s | MB/s per core | docs/s per core |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    inputs = {
        "c4": "C4 sample (1000 pages)", "github": "GitHub shard (81 files)", "wikipedia": "enwiki excerpt (206 pages)",
        "books": "5 Gutenberg books", "arxiv": "SciPy, SymPy, HoTT sources", "stackexchange": "coffee Posts.xml",
    }  # fmt: skip
    for row in result["stages"]:
        source = row["stage"].split("_")[0]
        lines.append(
            f"| {row['stage']} | {inputs.get(source, '')} | {row['mb']:.2f} | {row['docs']} | {row['kept']} | "
            f"{row['seconds']:.3f} | {rate(row['mb'], row['seconds'])} | {row['docs'] / row['seconds']:.0f} |"
        )
    c4 = result["c4"]
    ours, theirs = c4["ours"], c4["datatrove"]
    lines += [
        "",
        "C4 rules side by side, same 1000 pages in memory, best of 3 (goal: ≥ 10 MB/s per core):",
        "",
        "| implementation | MB/s per core | docs/s per core | pages kept |",
        "|---|---:|---:|---:|",
        f"| c4_quality (c4_utils rules, punkt sentences, C4's LDNOOBW list, line dedup) | {rate(ours['mb'], ours['seconds'])} | "
        f"{ours['docs'] / ours['seconds']:.0f} | {ours['kept']} |",
    ]
    if "error" in theirs:
        lines.append(f"| datatrove 0.10.1 C4QualityFilter | not run: {theirs['error']} | | |")
    else:
        lines.append(
            f"| datatrove 0.10.1 C4QualityFilter (spaCy tokenizer; no bad words, no dedup) | "
            f"{rate(theirs['mb'], theirs['seconds'])} | {theirs['docs'] / theirs['seconds']:.0f} | {theirs['kept']} |"
        )
    mh = result["minhash"]
    lines += [
        "",
        f"Book dedup MinHash signatures (128 permutations, word 5-grams) on the {mh['books']} Gutenberg books "
        f"({mh['mb']:.2f} MB): ours (shingling + numpy signature) {rate(mh['mb'], mh['ours_seconds'])} MB/s per core; "
        f"datasketch MinHash.update_batch on the same shingles, already built, {rate(mh['mb'], mh['datasketch_seconds'])} "
        "MB/s per core. Candidates from MinHash LSH Ensemble are then verified on exact shingle sets.",
        "",
    ]
    write_section(out, lines)
    print(f"wrote the source cleaners section of {out}")


if __name__ == "__main__":
    main()
