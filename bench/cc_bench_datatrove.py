"""datatrove's nearest blocks on the CommonCrawl benchmark corpus, timed in one process.

Run by bench/cc_bench.py with .venv-bench/bin/python (datatrove lives in its own venv, not in the
project's). Prints one JSON object: {block: {"mb": ..., "seconds": ..., "error": ...}}.

    .venv-bench/bin/python bench/cc_bench_datatrove.py CORPUS_DIR WORKDIR --lid LID_MODEL \
        [--english DIR --sp SP_MODEL --kenlm KENLM_BINARY] [--wikiref-pages DIR --wikiref MODEL]

Each block runs as a datatrove user runs it, one task of a LocalPipelineExecutor: its reader
(JsonlReader on the ingested pages, written once by WarcReader -> JsonlWriter, uncompressed), the
block, and a JsonlWriter, as our stages read and write Parquet. DIRs hold JSONL pages ({"id", "text"}).

- WarcReader on the WET files (MB = uncompressed WET bytes, as for cc_ingest).
- LanguageFilter(languages=["en"]) with OUR lid.176 file: datatrove downloads lid.176.bin from
  dl.fbaipublicfiles.com on first use; no network here, so the loaded model is put in its place
  (FastTextLID._model). It predicts all 176 labels per page (k=-1), its default.
- ExactDedup (signature -> find -> filter) on the whole text: nearest to cc_doc_dedup.
- SentenceDedup with split_sentences=False, n_sentences=1 (signature -> find -> filter): a line
  dedup, nearest to cc_line_dedup (it word-tokenizes with spaCy's English tokenizer).
- CCNetPerplexityStats with OUR SentencePiece + KenLM models (its own come from the HF hub): the
  per-document perplexity, nearest to cc_perplexity, on the English pages cc_bench gives it.
- FastTextClassifierFilter with OUR trained reference classifier, keep wiki >= 0.25: nearest to
  cc_wikiref's scoring pass, on the pages cc_bench gives it.
No `from __future__ import annotations` here: datatrove picks ExactDedup's hash function from the
content getter's return annotation, which must be a real type, not a string.
"""

import argparse
import gzip
import json
import time
from pathlib import Path


def timed(fn):
    """CPU seconds of this process (as bench/cc_bench.py measures ours)."""
    started = time.process_time()
    fn()
    return time.process_time() - started


def run_pipeline(steps) -> None:
    """What datatrove's LocalPipelineExecutor does for one task (rank 0 of 1): chain the steps'
    generators and drain the last."""
    data = None
    for step in steps:
        data = step.run(data, 0, 1)
    if data is not None:
        for _ in data:
            pass


def jsonl_mb(path: Path) -> float:
    with open(path, encoding="utf-8") as fh:
        return sum(len(json.loads(line)["text"].encode("utf-8")) for line in fh) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--lid", type=Path, required=True)
    parser.add_argument("--english", type=Path)
    parser.add_argument("--sp", type=Path)
    parser.add_argument("--kenlm", type=Path)
    parser.add_argument("--wikiref-pages", type=Path)
    parser.add_argument("--wikiref", type=Path)
    args = parser.parse_args()
    corpus, work = args.corpus, args.work
    manifest = json.loads((corpus / "CORPUS.json").read_text())
    results: dict[str, dict] = {}

    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    def reader(folder: Path):
        return JsonlReader(str(folder), compression=None)

    def writer(name: str):
        return JsonlWriter(str(work / "out" / name), compression=None)

    def measure(name: str, mb: float, steps) -> None:
        try:
            results[name] = {"mb": mb, "seconds": timed(lambda: run_pipeline(steps()))}
        except Exception as exc:  # noqa: BLE001 - reported in BENCHMARKS.md
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}

    # WET -> documents on disk (JSONL, datatrove's default format), as cc_ingest writes Parquet.
    pages = work / "pages"
    wet_mb = sum(len(gzip.decompress((corpus / f).read_bytes())) for f in manifest["files"]) / 1e6
    measure("WarcReader", wet_mb, lambda: [
        WarcReader(str(corpus), glob_pattern="**/*.warc.wet.gz", recursive=True, compression="gzip",
                   shuffle_files=False),
        JsonlWriter(str(pages), compression=None)])
    if "error" in results["WarcReader"]:
        print(json.dumps(results))
        return
    text_mb = sum(jsonl_mb(p) for p in pages.glob("*.jsonl"))

    def language_filter():
        from fasttext.FastText import _FastText
        from datatrove.pipeline.filters import LanguageFilter

        block = LanguageFilter(languages=["en"], language_threshold=0.5)
        block.model._model = _FastText(str(args.lid))  # instead of downloading lid.176.bin
        return [reader(pages), block, writer("lang")]

    measure("LanguageFilter", text_mb, language_filter)

    def exact_dedup():
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups)

        def page_text(doc) -> str:  # datatrove picks its hash function from this annotation
            return doc.text

        config = ExactDedupConfig(content_getter=page_text)
        sigs, dups = str(work / "exact_sigs"), str(work / "exact_dups")
        return [_Steps([reader(pages), ExactDedupSignature(sigs, config=config, finder_workers=1)]),
                _Steps([ExactFindDedups(sigs, dups, config=config)]),
                _Steps([reader(pages), ExactDedupFilter(dups, config=config), writer("exact")])]

    measure("ExactDedup", text_mb, exact_dedup)

    def sentence_dedup():
        from datatrove.pipeline.dedup.sentence_dedup import (
            SentDedupConfig, SentenceDedupFilter, SentenceDedupSignature, SentenceFindDedups)

        config = SentDedupConfig(n_sentences=1, split_sentences=False, min_doc_words=0, min_num_sentences=0)
        sigs, dups = str(work / "sent_sigs"), str(work / "sent_dups")
        return [_Steps([reader(pages), SentenceDedupSignature(sigs, config=config, finder_workers=1)]),
                _Steps([SentenceFindDedups(sigs, dups, config=config)]),
                _Steps([reader(pages), SentenceDedupFilter(dups, config=config), writer("sentence")])]

    measure("SentenceDedup", text_mb, sentence_dedup)

    if args.english:
        def perplexity_stats():
            import kenlm
            import sentencepiece
            from datatrove.pipeline.stats import CCNetPerplexityStats

            # Its dependency check asks for the `kenlm` distribution; ours is kenlm-ex, the same `kenlm`
            # module as a prebuilt wheel: name that distribution instead (datatrove's (module, pip) form).
            CCNetPerplexityStats._requires_dependencies = [
                ("kenlm", "kenlm-ex") if d == "kenlm" else d for d in CCNetPerplexityStats._requires_dependencies]
            block = CCNetPerplexityStats(str(work / "pp_stats"), model_dataset="ours", language="en",
                                         groups_to_compute=["summary"])
            block.model._model = kenlm.Model(str(args.kenlm))  # instead of downloading edugp/kenlm
            block.model.tokenizer._model = sentencepiece.SentencePieceProcessor(model_file=str(args.sp))
            return [reader(args.english), block, writer("perplexity")]

        measure("CCNetPerplexityStats", sum(jsonl_mb(p) for p in args.english.glob("*.jsonl")), perplexity_stats)

    if args.wikiref_pages:
        def classifier_filter():
            from fasttext.FastText import _FastText
            from datatrove.pipeline.filters import FastTextClassifierFilter

            block = FastTextClassifierFilter(str(args.wikiref), keep_labels=("wiki", 0.25), newline_replacement=" ")
            block._model = _FastText(str(args.wikiref))  # a local model: no download
            return [reader(args.wikiref_pages), block, writer("wikiref")]

        measure("FastTextClassifierFilter", sum(jsonl_mb(p) for p in args.wikiref_pages.glob("*.jsonl")),
                classifier_filter)

    print(json.dumps(results))


class _Steps:
    """Several pipelines run one after the other (a dedup's signature, find and filter tasks)."""

    def __init__(self, steps):
        self.steps = steps

    def run(self, data, rank, world_size):
        run_pipeline(self.steps)
        return data


if __name__ == "__main__":
    main()
