"""Tokenizer and token-shard benchmark (issue 5 item 5, issue 13): the mixture (which tokenizes once)
and the token_shards stage, with 1 and 2 workers, against raw SentencePiece batch encoding of the same
text with the same threads. Writes
(replaces) the "Tokenizer and token shards" section of BENCHMARKS.md.

    .venv/bin/python bench/tokens_bench.py --out BENCHMARKS.md

Text: English prose available offline (Python's pydoc topics and the docstrings of the standard
library, grouped into documents of about 2 KB, like C4 pages), cached under runs/bench/tokens.
Model: an 8k SentencePiece BPE trained by our tokenizer stage (LLaMA's settings) on that text.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

import pydoc_data.topics  # noqa: E402

from pipeline.documents import Document, StageFolder, read_manifest  # noqa: E402
from pipeline.mixture import MixtureConfig, sample_mixture  # noqa: E402
from pipeline.token_shards import TokenShardsConfig, write_token_shards  # noqa: E402
from pipeline.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer  # noqa: E402

SECTION = "## Tokenizer and token shards"


def prose_documents(target_bytes: int, doc_bytes: int = 2000) -> list[str]:
    """Paragraphs of pydoc topics and stdlib docstrings, grouped into ~doc_bytes documents,
    repeated in order until target_bytes (the corpus is ~10 MB; repeats do not help BPE here,
    every document is encoded from scratch)."""
    paragraphs = [p.strip() for text in pydoc_data.topics.topics.values() for p in text.split("\n\n") if len(p.strip()) > 80]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs += [p.strip() for p in doc.split("\n\n") if len(p.strip()) > 80]
    docs, current, size, total = [], [], 0, 0
    while total < target_bytes:
        for paragraph in paragraphs:
            current.append(paragraph)
            size += len(paragraph.encode()) + 2
            if size >= doc_bytes:
                docs.append("\n\n".join(current))
                total += size
                current, size = [], 0
                if total >= target_bytes:
                    break
    return docs


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--mb", type=float, default=30.0, help="text to tokenize, MB")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "tokens")
    args = parser.parse_args()

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    texts = prose_documents(int(args.mb * 1e6))
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    unique_mb = sum(len(t.encode()) for t in set(texts)) / 1e6
    parts = 4  # the mixture and the shards run one job per part
    with StageFolder(work / "c4", "c4_final", {}, source="c4") as folder:
        for index in range(parts):
            with folder.part(index) as part:
                for i in range(index, len(texts), parts):
                    part.write(Document(id=f"c4/{i}", text=texts[i], source="c4"))
    tokenizer_config = TokenizerConfig(vocab_size=args.vocab, train_sample_bytes=10_000_000, num_threads=args.threads)
    started = time.perf_counter()
    train_tokenizer({"c4": work / "c4"}, work / "tokenizer", tokenizer_config, {"c4": 1.0}, reuse=False)
    train_s = time.perf_counter() - started
    sp = load_tokenizer(work / "tokenizer")

    raw_s = best_of(3, lambda: sp.encode(texts, num_threads=args.threads))
    tokens = sum(len(ids) for ids in sp.encode(texts, num_threads=args.threads))

    def mixture(workers: int) -> float:
        # the processes share the cores: SentencePiece threads x workers = the thread budget
        config = MixtureConfig(sources={"c4": {"share": 1.0, "epochs": 1.0}}, val_fraction=0.0,
                               num_threads=max(1, args.threads // workers))
        return best_of(2, lambda: sample_mixture({"c4": work / "c4"}, work / "tokenizer", work / f"mixture-{workers}", config,
                                                 reuse=False, workers=workers))

    def shards(workers: int) -> float:
        config = TokenShardsConfig(shard_tokens=1_000_000)
        return best_of(2, lambda: write_token_shards(work / "mixture-1", work / "tokenizer", work / f"tokens-{workers}", config,
                                                     reuse=False, workers=workers))

    mixture_s = {w: mixture(w) for w in (1, args.threads)}
    shards_s = {w: shards(w) for w in (1, args.threads)}
    stats = read_manifest(work / "tokens-1")["stats"]
    assert stats["split_tokens"]["train"] == tokens + 2 * len(texts), "shards hold other tokens than raw encoding"
    same = all((work / "tokens-1" / e["path"]).read_bytes() == (work / f"tokens-{args.threads}" / e["path"]).read_bytes()
               for e in stats["shards"])

    rate = lambda seconds: text_mb / seconds
    raw_rate = rate(raw_s)
    build_rate = rate(mixture_s[args.threads] + shards_s[args.threads])
    section = [
        SECTION,
        "",
        "Produced by `make bench`, i.e.:",
        "",
        f"    .venv/bin/python bench/tokens_bench.py --out {args.out}",
        "",
        f"Text: {len(texts)} documents in {parts} parts, {text_mb:.1f} MB of English prose (Python's pydoc topics and "
        f"standard-library docstrings grouped into ~2 KB documents, {unique_mb:.1f} MB of them distinct, the rest "
        "repeats; C4 itself is not available offline). Model: "
        f"{sp.get_piece_size()}-piece SentencePiece BPE trained by the tokenizer stage on a 10 MB sample "
        f"({train_s:.1f} s). A budget of {args.threads} threads everywhere (W workers x {args.threads}/W SentencePiece "
        f"threads), on a machine with {os.cpu_count()} cores; {tokens:,} tokens ({text_mb * 1e6 / tokens:.2f} bytes per "
        f"token). Shards of 1M tokens ({len(stats['shards'])} shards); the shards of 1 and {args.threads} workers are "
        f"{'the same bytes' if same else 'DIFFERENT BYTES'}.",
        "",
        "| step | MB/s | vs raw encode |",
        "|---|---:|---:|",
        f"| raw SentencePiece batch encode (`sp.encode(texts, num_threads={args.threads})`, text in memory) | {raw_rate:.2f} | 1.00 |",
        *(f"| mixture, {w} worker{'s' if w > 1 else ''}: Parquet read, encode once (tokens kept for the shards), "
          f"key histogram, plan, write Parquet + token files | {rate(mixture_s[w]):.2f} | {rate(mixture_s[w]) / raw_rate:.2f} |"
          for w in mixture_s),
        *(f"| token_shards, {w} worker{'s' if w > 1 else ''}: key every copy, spill per part, gather key ranges, "
          f"copy tokens into .bin/.idx + sha256 (no encoding) | {rate(shards_s[w]):.2f} | {rate(shards_s[w]) / raw_rate:.2f} |"
          for w in shards_s),
        f"| mixture + token_shards ({args.threads} workers): the text to training shards | {build_rate:.2f} | "
        f"{build_rate / raw_rate:.2f} (goal >= 0.85 of one encode: {'met' if build_rate / raw_rate >= 0.85 else 'NOT met'}) |",
        "",
        "Best of 3 runs for raw encoding, 2 for each stage run. The text is encoded once per build (by the "
        "mixture); before, the shards encoded it a second time.",
        "",
    ]
    write_section(args.out, section)
    print(f"wrote the tokenizer section of {args.out}: raw {raw_rate:.2f} MB/s, mixture + shards {build_rate:.2f} MB/s")


if __name__ == "__main__":
    main()
