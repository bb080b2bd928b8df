"""datatrove's nearest blocks on the CommonCrawl benchmark corpus, timed in one process.

Run by bench/cc_bench.py with .venv-bench/bin/python (datatrove lives in its own venv, not in the
project's). Prints one JSON object: {block: {"mb": ..., "seconds": ..., "error": ...}}.

    .venv-bench/bin/python bench/cc_bench_datatrove.py <corpus_dir> <lid.176 model> <workdir>

- WarcReader on the WET files (MB = uncompressed WET bytes, as for cc_ingest).
- LanguageFilter(languages=["en"]) with OUR lid.176 file: datatrove downloads lid.176.bin from
  dl.fbaipublicfiles.com on first use; no network here, so the loaded model is put in its place
  (FastTextLID._model). It predicts all 176 labels per page (k=-1), its default.
- ExactDedup (signature -> find -> filter) on the whole text: nearest to cc_doc_dedup.
- SentenceDedup with split_sentences=False, n_sentences=1 (signature -> find -> filter): a line
  dedup, nearest to cc_line_dedup.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    corpus, model_path, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    manifest = json.loads((corpus / "CORPUS.json").read_text())
    files = manifest["files"]
    results: dict[str, dict] = {}

    from datatrove.pipeline.readers import WarcReader

    docs = []
    reader = WarcReader(str(corpus), glob_pattern="**/*.warc.wet.gz", recursive=True, compression="gzip", shuffle_files=False)
    seconds = timed(lambda: docs.extend(reader.run(None, 0, 1)))
    wet_mb = sum(len(gzip.decompress((corpus / f).read_bytes())) for f in files) / 1e6
    results["WarcReader"] = {"mb": wet_mb, "seconds": seconds, "documents": len(docs)}
    text_mb = sum(len(d.text.encode("utf-8")) for d in docs) / 1e6

    try:
        from fasttext.FastText import _FastText
        from datatrove.pipeline.filters import LanguageFilter

        lang = LanguageFilter(languages=["en"], language_threshold=0.5)
        lang.model._model = _FastText(str(model_path))  # instead of downloading lid.176.bin
        seconds = timed(lambda: [lang.filter(d) for d in docs])
        results["LanguageFilter"] = {"mb": text_mb, "seconds": seconds}
    except Exception as exc:  # noqa: BLE001 - reported in BENCHMARKS.md
        results["LanguageFilter"] = {"error": f"{type(exc).__name__}: {exc}"}

    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    # The dedup blocks read documents from disk like ours read Parquet: write the extracted pages once.
    jsonl = work / "docs"
    writer = JsonlWriter(str(jsonl), compression=None)
    for _ in writer.run(iter(docs), 0, 1):  # a datatrove step is a generator: consume it to write
        pass
    del docs

    def pipeline(steps):
        data = None
        for step in steps:
            data = step.run(data, 0, 1)
        if data is not None:
            for _ in data:
                pass

    try:
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupConfig, ExactDedupSignature, ExactFindDedups, ExactDedupFilter)

        def page_text(doc) -> str:  # datatrove picks its hash function from this annotation
            return doc.text

        config = ExactDedupConfig(content_getter=page_text)
        sigs, dups = str(work / "exact_sigs"), str(work / "exact_dups")
        seconds = timed(lambda: (
            pipeline([JsonlReader(str(jsonl), compression=None), ExactDedupSignature(sigs, config=config, finder_workers=1)]),
            pipeline([ExactFindDedups(sigs, dups, config=config)]),
            pipeline([JsonlReader(str(jsonl), compression=None), ExactDedupFilter(dups, config=config)]),
        ))
        results["ExactDedup"] = {"mb": text_mb, "seconds": seconds}
    except Exception as exc:  # noqa: BLE001
        results["ExactDedup"] = {"error": f"{type(exc).__name__}: {exc}"}

    try:
        from datatrove.pipeline.dedup.sentence_dedup import (
            SentDedupConfig, SentenceDedupSignature, SentenceFindDedups, SentenceDedupFilter)

        config = SentDedupConfig(n_sentences=1, split_sentences=False, min_doc_words=0, min_num_sentences=0)
        sigs, dups = str(work / "sent_sigs"), str(work / "sent_dups")
        seconds = timed(lambda: (
            pipeline([JsonlReader(str(jsonl), compression=None), SentenceDedupSignature(sigs, config=config, finder_workers=1)]),
            pipeline([SentenceFindDedups(sigs, dups, config=config)]),
            pipeline([JsonlReader(str(jsonl), compression=None), SentenceDedupFilter(dups, config=config)]),
        ))
        results["SentenceDedup"] = {"mb": text_mb, "seconds": seconds}
    except Exception as exc:  # noqa: BLE001
        results["SentenceDedup"] = {"error": f"{type(exc).__name__}: {exc}"}

    print(json.dumps(results))


if __name__ == "__main__":
    main()
