"""datatrove's C4QualityFilter on the real C4 sample, timed in one process (CPU time).

Run by bench/sources_bench.py with .venv-bench/bin/python (datatrove lives in its own venv, not in
the project's). Prints one JSON object {"mb", "docs", "seconds", "kept"} or {"error": ...}.

    .venv-bench/bin/python bench/sources_bench_datatrove.py C4_JSON_GZ [--repeat 3]

The filter is called as datatrove's pipeline calls it (BaseFilter.filter on each Document), with
its defaults (the T5 paper's thresholds, as ours; it splits sentences and words with spaCy's
English tokenizer). Its bad-words filter (C4BadWordsFilter) downloads the LDNOOBW list at run time,
which this offline machine cannot do, so only C4QualityFilter is timed; ours is timed with its
bad-words rule on, so the comparison is if anything in datatrove's favour.
"""

import argparse
import gzip
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("c4")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import C4QualityFilter
    except Exception as exc:  # a broken or partial .venv-bench
        print(json.dumps({"error": f"datatrove import failed: {exc}"}))
        return
    with gzip.open(args.c4, "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    best = None
    kept = 0
    for _ in range(args.repeat):
        block = C4QualityFilter()
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        block.filter(Document(text="Warm up the tokenizer. It loads once. Then it runs.", id="w"))
        started = time.process_time()
        kept = 0
        for doc in docs:
            verdict = block.filter(doc)
            kept += verdict is True or (isinstance(verdict, tuple) and verdict[0] is True)
        seconds = time.process_time() - started
        best = seconds if best is None else min(best, seconds)
    print(json.dumps({"mb": mb, "docs": len(texts), "seconds": best, "kept": kept}))


if __name__ == "__main__":
    main()
