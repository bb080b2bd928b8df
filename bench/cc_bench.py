"""CommonCrawl stage benchmark (issue 3 item 7): our CC stages, the raw libraries they are built on,
and datatrove's nearest blocks, on one fixed generated WET corpus (>= 100 MB), one process each
(so MB/s are per core), plus our stages again with one worker process per core. Writes (replaces)
the "CommonCrawl stages" section of BENCHMARKS.md.

    .venv/bin/python bench/cc_bench.py --out BENCHMARKS.md

datatrove runs from .venv-bench (made by `make bench`); without it that column says why.
MB: uncompressed WET bytes for the readers, UTF-8 bytes of the page text entering the stage for
the others (taken from the previous stage's manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from bench.cc_corpus import build_corpus  # noqa: E402
from pipeline.commoncrawl.doc_dedup import CCDocDedup  # noqa: E402
from pipeline.commoncrawl.ingest import CCIngest  # noqa: E402
from pipeline.commoncrawl.langid import CCLangId, lid_model  # noqa: E402
from pipeline.commoncrawl.line_dedup import CCLineDedup  # noqa: E402
from pipeline.commoncrawl.perplexity import CCPerplexity, PerplexityModel  # noqa: E402
from pipeline.commoncrawl.wikiref import CCWikiRef, classifier_text  # noqa: E402
from pipeline.documents import kept_parts, read_documents, read_timing  # noqa: E402
from pipeline.resources import lid_model_path  # noqa: E402
from pipeline.sources.wikipedia import WikipediaClean, WikipediaIngest  # noqa: E402
from pipeline.stage import run_stage  # noqa: E402
from pipeline.text import normalize_for_lm  # noqa: E402

SECTION = "## CommonCrawl stages"


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (lmplz): the per-core figures use it,
    so other load on the machine does not change them."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """(result, CPU seconds)."""
    started = cpu_seconds()
    result = fn()
    return result, cpu_seconds() - started


def wall_timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def with_timed_prepare(stage):
    """Record the CPU seconds of the stage's first pass (model training, hashing) as stage.prepare_s."""
    original = stage.prepare

    def prepare(inputs):
        started = cpu_seconds()
        result = original(inputs)
        stage.prepare_s = cpu_seconds() - started
        return result

    stage.prepare = prepare
    return stage


def run_datatrove(corpus: Path, work: Path, extra: list[str]) -> dict:
    python = ROOT / ".venv-bench" / "bin" / "python"
    if not python.exists():
        return {"error": ".venv-bench missing (make bench creates it with datatrove)"}
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(python), str(ROOT / "bench" / "cc_bench_datatrove.py"), str(corpus), str(work),
                           "--lid", str(lid_model_path()), *extra], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stage_texts(folder: Path) -> list[tuple[str, str]]:
    return [(d.id, d.text) for p in kept_parts(folder) for d in read_documents(p, columns=["id", "text"])]


def write_jsonl(folder: Path, pages: list[tuple[str, str]]) -> Path:
    """Pages for datatrove's JsonlReader: a folder with one JSONL file."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pages.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, text in pages:
            fh.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    return folder


class Measured:
    """One stage run: MB of text in, seconds in all, seconds of its first pass (model training,
    hashing). CPU seconds with one process; wall seconds with workers (CPU time of forked workers
    is not this process's)."""

    def __init__(self, manifest: dict, seconds: float, prepare: float, mb: float | None = None):
        self.manifest = manifest
        self.mb = manifest["bytes_in"] / 1e6 if mb is None else mb
        self.seconds = seconds
        self.prepare = prepare

    def rate(self, without_prepare: bool = False) -> float:
        return self.mb / (self.seconds - (self.prepare if without_prepare else 0.0))


# Stages whose first pass trains a model on this build: their rate is given for the scoring pass
# (the part that scales with the crawl); the training time is reported beside it.
TRAINS_A_MODEL = ("cc_perplexity", "cc_wikiref")


def run_chain(files: list[Path], work: Path, wikipedia: Path, workers: int, wet_mb: float) -> dict[str, Measured]:
    """ingest; then line dedup, doc dedup and langid on the ingest output; perplexity on the English
    pages; wikiref on the pages perplexity keeps (as in a build)."""
    shutil.rmtree(work, ignore_errors=True)
    measured: dict[str, Measured] = {}

    def run(stage, inputs, mb=None):
        stage = with_timed_prepare(stage)
        clock = timed if workers == 1 else wall_timed
        manifest, seconds = clock(lambda: run_stage(stage, inputs, work / stage.name, workers=workers))
        prepare = getattr(stage, "prepare_s", 0.0) if workers == 1 else read_timing(work / stage.name).get("prepare_wall_time_s", 0.0)
        measured[stage.name] = Measured(manifest, seconds, prepare, mb)
        print(f"  workers={workers} {stage.name:<14} {measured[stage.name].mb:7.1f} MB {seconds:7.2f} s", flush=True)
        return work / stage.name

    pages = run(CCIngest(), files, wet_mb)
    run(CCLineDedup(), [pages])
    run(CCDocDedup(), [pages])
    english = run(CCLangId(), [pages])
    refs = {"wikipedia_clean": wikipedia}
    scored = run(CCPerplexity({"sp_vocab_size": 8000, "cutoffs": "percentiles"}, refs=refs), [english])
    run(CCWikiRef({"training_pages": "before_perplexity", "epoch": 50, "lr": 0.5, "dim": 16}, refs=refs | {"cc_langid": english}),
        [scored])
    return measured


def reference_wikipedia(corpus: Path, dump_files: list[str], work: Path) -> Path:
    """wikipedia_ingest + wikipedia_clean on the corpus's generated dump (not timed)."""
    ingest = run_stage(WikipediaIngest(), [corpus / f for f in dump_files], work / "wikipedia_ingest")
    run_stage(WikipediaClean(), [work / "wikipedia_ingest"], work / "wikipedia_clean")
    print(f"  reference Wikipedia: {ingest['docs_kept']} articles", flush=True)
    return work / "wikipedia_clean"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "bench" / "cc_corpus")
    parser.add_argument("--target-mb", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the scaling column (the per-core column always uses 1)")
    args = parser.parse_args()

    corpus = build_corpus(args.corpus, args.target_mb)
    files = [args.corpus / f for f in corpus["files"]]
    wet_mb = corpus["wet_bytes"] / 1e6
    work = args.corpus.parent / "cc_work"
    wikipedia = reference_wikipedia(args.corpus, corpus["wikipedia"], args.corpus.parent / "cc_reference")

    ours = run_chain(files, work, wikipedia, 1, wet_mb)
    stats = ours["cc_line_dedup"].manifest["stats"]
    perplexity_stats = ours["cc_perplexity"].manifest["stats"]
    wikiref_stats = ours["cc_wikiref"].manifest["stats"]

    # Raw limits on the same text: the library call each stage is built on, nothing else.
    texts = [t for _, t in stage_texts(work / "cc_ingest")]
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    _, sha_s = timed(lambda: [hashlib.sha1(line.encode("utf-8")).digest() for t in texts for line in t.split("\n")])
    flat = [t.replace("\n", " ") for t in texts]
    _, lid_s = timed(lambda: lid_model().predict(flat, k=1))
    del texts, flat
    english = stage_texts(work / "cc_langid")
    english_mb = sum(len(t.encode("utf-8")) for _, t in english) / 1e6
    model = PerplexityModel(work / "cc_perplexity" / "artifacts" / "sp.model",
                            work / "cc_perplexity" / "artifacts" / "en.5gram.binary")
    pieces = [" ".join(model.sp.encode(line, out_type=str)) for _, t in english
              for line in map(normalize_for_lm, t.split("\n")) if line]
    _, kenlm_s = timed(lambda: [model.lm.score(p, bos=True, eos=True) for p in pieces])
    del pieces
    for_wikiref = stage_texts(work / "cc_perplexity")
    wikiref_mb = sum(len(t.encode("utf-8")) for _, t in for_wikiref) / 1e6
    import fasttext

    classifier = fasttext.load_model(str(work / "cc_wikiref" / "artifacts" / "wikiref.bin"))
    flat = [classifier_text(t) for _, t in for_wikiref]
    _, wikiref_s = timed(lambda: classifier.predict(flat, k=-1))
    del flat

    scaled = run_chain(files, args.corpus.parent / "cc_work_parallel", wikipedia, args.workers, wet_mb) \
        if args.workers > 1 else {}

    dt = run_datatrove(args.corpus, work / "datatrove", [
        "--english", str(write_jsonl(work / "datatrove_in" / "english", english)),
        "--sp", str(work / "cc_perplexity" / "artifacts" / "sp.model"),
        "--kenlm", str(work / "cc_perplexity" / "artifacts" / "en.5gram.binary"),
        "--wikiref-pages", str(write_jsonl(work / "datatrove_in" / "wikiref", for_wikiref)),
        "--wikiref", str(work / "cc_wikiref" / "artifacts" / "wikiref.bin"),
    ])
    del english, for_wikiref
    print("datatrove", json.dumps(dt))

    def dt_rate(block: str) -> tuple[str, float | None]:
        if "error" in dt:
            return f"not run: {dt['error']}", None
        r = dt.get(block, {})
        if "error" in r:
            return f"not run: {r['error']}", None
        rate = r["mb"] / r["seconds"]
        return f"{rate:.2f} ({block})", rate

    limits = {"cc_line_dedup": ("sha1 of the lines", text_mb / sha_s),
              "cc_langid": ("fastText predict, lid.176", text_mb / lid_s),
              "cc_perplexity": ("KenLM score of the SentencePiece lines", english_mb / kenlm_s),
              "cc_wikiref": ("fastText predict, our classifier", wikiref_mb / wikiref_s)}
    blocks = {"cc_ingest": "WarcReader", "cc_doc_dedup": "ExactDedup", "cc_line_dedup": "SentenceDedup",
              "cc_langid": "LanguageFilter", "cc_perplexity": "CCNetPerplexityStats",
              "cc_wikiref": "FastTextClassifierFilter"}
    rows = []
    for name, m in ours.items():
        trains = name in TRAINS_A_MODEL
        rate = m.rate(without_prepare=trains)
        dt_text, dt_value = dt_rate(blocks[name])
        limit_name, limit = limits.get(name, (None, None))
        goals = []
        if dt_value:
            goals.append(f"{rate / dt_value:.2f}x datatrove (goal 1.5x: {'met' if rate >= 1.5 * dt_value else 'NOT met'})")
        if name == "cc_langid":
            goals.append(f"{rate / limit:.0%} of raw predict (goal 80%: {'met' if rate >= 0.8 * limit else 'NOT met'})")
        elif limit:
            goals.append(f"{rate / limit:.0%} of the raw limit")
        if name == "cc_line_dedup":
            goals.append(f"goal 20 MB/s: {'met' if rate >= 20 else 'NOT met'}")
        ours_text = f"{rate:.2f}" + (f" (with training: {m.rate():.2f})" if trains else "")
        scaled_text = "-"
        if name in scaled:
            s_rate = scaled[name].rate(without_prepare=trains)
            scaled_text = f"{s_rate:.2f} ({s_rate / rate:.2f}x)"
        rows.append(f"| {name} | {m.mb:.1f} | {ours_text} | {scaled_text} | {dt_text} | "
                    f"{f'{limit:.2f} ({limit_name})' if limit else '-'} | {'; '.join(goals) or '-'} |")

    section = [
        SECTION,
        "",
        "Produced by `make bench` (second step), i.e.:",
        "",
        f"    .venv/bin/python bench/cc_bench.py --out {args.out}",
        "",
        f"Input: {len(files)} generated WET files, {wet_mb:.1f} MB uncompressed ({ours['cc_ingest'].manifest['docs_in']} "
        f"records; bench/cc_corpus.py, cached under runs/bench/cc_corpus). Stages run as in a build: ingest; "
        f"line dedup, doc dedup and langid on the {text_mb:.1f} MB of ingested page text; perplexity on the "
        f"{english_mb:.1f} MB of English pages; wikiref on the {wikiref_mb:.1f} MB perplexity keeps. MB in: WET "
        "bytes for the readers, the page text entering the stage for the rest. 'ours' is one process (per core), "
        "Parquet read and write included, timed in CPU seconds (process + children such as lmplz: load from "
        "other processes does not change it); the workers column is the same stage with `workers` processes "
        f"({args.workers}, the machine's cores), timed in wall seconds. Same machine, same run. datatrove runs the same input in one "
        "process, each block between a JsonlReader and a JsonlWriter (uncompressed), as a datatrove task runs it: its LanguageFilter and FastTextClassifierFilter use our lid.176 / classifier files and predict "
        "all labels (k=-1, its default); CCNetPerplexityStats uses our SentencePiece + KenLM models (its own "
        "come from the HF hub); its dedups run signature, find and filter steps in one process.",
        "",
        "cc_perplexity and cc_wikiref train their models on the build (SentencePiece + lmplz on the "
        f"reference Wikipedia: {ours['cc_perplexity'].prepare:.1f} CPU s; the fastText classifier on "
        f"{wikiref_stats['positives']} cited pages + as many random ones: {ours['cc_wikiref'].prepare:.1f} CPU s); "
        "their rate is that of the scoring pass, which is what grows with the crawl, and the rate with "
        "training is given beside it. The reference Wikipedia here is one generated dump "
        f"({corpus['cited_urls']} cited URLs), so the KenLM model is small; a model built on all of English "
        "Wikipedia is larger and queries somewhat slower, for us and for datatrove alike.",
        "",
        f"| stage | MB in | ours MB/s | {args.workers} workers MB/s (speedup) | datatrove MB/s (block) | raw limit MB/s | ratio / goal |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Line dedup: {stats['unique_line_hashes']} unique line hashes in {stats['groups']} group(s) of "
        f"{stats['pages_per_group']} pages, {stats['lines_removed']} lines in two or more pages removed and "
        f"{stats['repeats_in_page_removed']} repeats inside a page (memory per process: \"Memory at scale\").",
        "",
        f"Classifier on held-out pages: {json.dumps(wikiref_stats['held_out'])}; perplexity cutoffs "
        f"(30th/60th percentiles of {perplexity_stats['reference_pages']} pages): head < "
        f"{perplexity_stats['head_cutoff']:.1f} <= middle < {perplexity_stats['tail_cutoff']:.1f} <= tail.",
        "",
    ]
    write_section(args.out, section)
    print(f"wrote the CommonCrawl section of {args.out}")


if __name__ == "__main__":
    main()
