"""cc_wikiref: the "used as a reference by Wikipedia" classifier (LLaMA §2; RedPajama-Data v1).

LLaMA: "we trained a linear model to classify pages used as references in Wikipedia v.s. randomly
sampled pages, and discarded pages not classified as references." As in RedPajama v1
(data_prep/cc/classifier/create_corpus.py): positives are pages Wikipedia cites, of at least
`min_positive_chars` (1,000) characters — here the crawled pages whose URL a `wikipedia_clean`
document cites (meta["ref_urls"]), plus any `reference_pages` — and negatives an equal number of
other pages (chosen with `seed`), both from the head and middle buckets, i.e. this stage's input,
after the perplexity filter (`training_pages: input`). `training_pages: before_perplexity` (a named
deviation) draws them from `cc_langid`'s English pages instead, so that the perplexity filter does
not decide which cited pages the classifier learns from. A fastText supervised model (__label__wiki /
__label__cc, one page per line, newlines -> spaces) with fastText's default settings (RedPajama ran
`fasttext supervised -input data_train -output model`: epoch 5, lr 0.1, dim 100) is trained on all
but a held-out fraction, which measures it. Positives may also come from reference pages
given as WARC/WET files (`reference_pages`); pages with the same text are counted once, and no
input page with one of their URLs is drawn as a negative. Every page gets `wikiref_score`, the
probability of __label__wiki; pages under `threshold` (RedPajama: 0.25) are rejected.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from pipeline.documents import StageError, kept_parts, read_documents
from pipeline.stage import Judgement, Stage, StageConfig

WIKIPEDIA = "wikipedia_clean"
TRAINING_PAGES = "cc_langid"
WIKI_LABEL, CC_LABEL = "__label__wiki", "__label__cc"


def normalize_url(url: str) -> str:
    """Light URL key: stripped, scheme and host lowercased, no trailing slash, no fragment."""
    url = url.strip().strip("<>")
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    normalized = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, ""))
    return normalized.rstrip("/")


def classifier_text(text: str) -> str:
    return " ".join(text.split("\n"))


class WikiRefConfig(StageConfig):
    threshold: float = 0.25  # RedPajama v1 cc classifier: keep pages with P(wiki) >= 0.25
    holdout: float = 0.2  # fraction of each class held out to measure the classifier
    min_positives: int = 5  # fewer cited pages than this: no classifier can be trained (error)
    seed: int = 0
    # Issue 3: positives may also come from "a provided set of reference pages in WARC/WET": paths
    # or globs of WET files (conversion records) or WARC files (HTML response records, e.g. fetched
    # with wget), read with cc_ingest / cc_warc_ingest and their default rules (pages under 300
    # characters are not used). Added to the crawled pages whose URL Wikipedia cites.
    reference_pages: list[str] = []
    # RedPajama create_corpus.py: `if len(raw_content) < 1000: continue` for the positives.
    min_positive_chars: int = 1000
    # "input": RedPajama's head/middle pages (this stage's input); "before_perplexity": cc_langid's
    # English pages (a named deviation, see the module docstring).
    training_pages: Literal["input", "before_perplexity"] = "input"
    # fastText supervised, RedPajama's (fastText's defaults): a linear model (LLaMA). On a corpus of a
    # few hundred pages these leave P = 0.5 for everything — supervised fastText makes one update
    # per page, so a small set needs many passes; the demo spec sets epoch 50, lr 0.5, dim 16 (a
    # named deviation: measured on the demo build, epoch 10 -> held-out accuracy 0.5, epoch 50 -> 0.75).
    epoch: int = 5
    lr: float = 0.1
    # Unigrams only: see train_classifier (n-gram rows of the fastText wheel start uninitialized).
    dim: int = 100
    bucket: int = 0  # n-gram hash rows: none are needed with unigram features


FASTTEXT_WHITESPACE = re.compile(r"[ \n\r\t\v\f\0]+")  # how fastText splits words
FASTTEXT_EOS = "</s>"  # fastText adds this word at every line end


def train_classifier(train_file: Path, init_vectors: Path, config: WikiRefConfig):
    """fastText supervised, fully initialized and deterministic.

    The fasttext-numpy2-wheel build initializes only part of the input matrix with thread=1 and
    leaves the rest as uninitialized memory (measured: values up to 1e34), which made training
    fail at random with "Encountered NaN." or learn nothing. fastText's own remedy is
    `pretrainedVectors`: every word row is set from the file. So we write small seeded uniform
    vectors (fastText's own init range, ±1/dim) for every word of the training file; with
    unigram features and no character n-grams (supervised defaults) no other row is ever read.
    """
    import fasttext

    words: set[str] = set()
    with open(train_file, encoding="utf-8") as fh:
        for line in fh:
            words.update(w for w in FASTTEXT_WHITESPACE.split(line) if w and not w.startswith("__label__"))
    vocabulary = sorted(words) + [FASTTEXT_EOS]
    rng = np.random.default_rng(config.seed)
    vectors = rng.uniform(-1 / config.dim, 1 / config.dim, size=(len(vocabulary), config.dim))
    with open(init_vectors, "w", encoding="utf-8") as out:
        out.write(f"{len(vocabulary)} {config.dim}\n")
        for word, vector in zip(vocabulary, vectors):
            out.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")
    try:
        return fasttext.train_supervised(
            input=str(train_file), epoch=config.epoch, lr=config.lr, wordNgrams=1, dim=config.dim,
            bucket=config.bucket, minCount=1, thread=1, verbose=0, seed=config.seed,
            pretrainedVectors=str(init_vectors),
        )
    except RuntimeError as exc:
        raise StageError(f"cc_wikiref: fastText training failed on {train_file}: {exc}") from exc


class CCWikiRef(Stage):
    name = "cc_wikiref"
    source = "cc"
    references = (WIKIPEDIA,)
    optional_references = (TRAINING_PAGES,)
    columns = {"wikiref_score": pa.float64()}
    Config = WikiRefConfig
    description = "fastText classifier: pages Wikipedia cites vs random pages; keep P(wiki) >= 0.25"
    parallel_parts = True
    remote_parts = True  # a worker loads the classifier prepare() saved in the artifacts

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = None

    def cited_urls(self) -> set[str]:
        urls: set[str] = set()
        for part in kept_parts(self.refs[WIKIPEDIA]):
            for doc in read_documents(part, columns=["id", "meta"]):
                urls.update(normalize_url(u) for u in doc.meta.get("ref_urls", []) or [])
        return urls

    def extra_inputs(self) -> list[Path]:
        """The reference-page files: their bytes are part of this stage's identity."""
        from pipeline.commoncrawl.ingest import CCIngest, CCWarcIngest
        from pipeline.stage import expand_raw_inputs

        if not self.config.reference_pages:
            return []
        return expand_raw_inputs(list(self.config.reference_pages), CCIngest.raw_patterns + CCWarcIngest.raw_patterns)

    def reference_page_texts(self) -> tuple[list[str], set[str]]:
        """The pages of `reference_pages` (kept by their ingest stage): texts and URLs."""
        from pipeline.commoncrawl.ingest import CCIngest, CCWarcIngest

        texts: list[str] = []
        urls: set[str] = set()
        for path in self.extra_inputs():
            reader = CCIngest() if ".wet" in path.name else CCWarcIngest()
            with self.local_input(path) as local:  # a URL: copied here, then read
                for doc in reader.read(local):
                    if not doc.rejected:
                        if len(doc.text) >= self.config.min_positive_chars:
                            texts.append(classifier_text(doc.text))
                        urls.add(normalize_url(doc.meta.get("url") or ""))  # never a negative either way
        return texts, urls

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        cited = self.cited_urls()
        reference_texts, reference_urls = self.reference_page_texts()
        if self.config.training_pages == "before_perplexity" and TRAINING_PAGES in self.refs:
            inputs = kept_parts(self.refs[TRAINING_PAGES])
        positives: list[str] = []
        other_rows: list[int] = []
        row, short = 0, 0
        for path in inputs:
            for doc in read_documents(path):
                url = normalize_url(doc.meta.get("url") or "")
                if url in cited:
                    if len(doc.text) >= self.config.min_positive_chars:
                        positives.append(classifier_text(doc.text))
                    else:
                        short += 1
                elif url not in reference_urls:
                    other_rows.append(row)
                row += 1
        cited_pages = len(positives)
        # A page fetched twice (a reference set often has copies) is one example: a copy in the
        # training set and one held out would overstate the held-out precision.
        positives = list(dict.fromkeys(positives + reference_texts))
        if len(positives) < self.config.min_positives:
            raise StageError(
                f"{self.name}: only {len(positives)} training pages are cited by the {WIKIPEDIA} pages "
                f"({len(cited)} cited URLs) or given as reference_pages; need at least "
                f"min_positives={self.config.min_positives} to train the reference classifier"
            )
        rng = np.random.default_rng(self.config.seed)
        chosen = np.sort(rng.choice(np.array(other_rows, dtype=np.int64), size=min(len(positives), len(other_rows)),
                                    replace=False))
        negatives = self._texts_at(inputs, chosen)
        if not negatives:
            raise StageError(f"{self.name}: every input page is cited by Wikipedia; no negatives to train on")

        train, held_out = [], []
        for label, texts in ((WIKI_LABEL, positives), (CC_LABEL, negatives)):
            order = rng.permutation(len(texts))
            n_held = int(round(len(texts) * self.config.holdout))
            held_out += [(label, texts[i]) for i in order[:n_held]]
            train += [(label, texts[i]) for i in order[n_held:]]
        train = [train[i] for i in rng.permutation(len(train))]

        out = self.artifacts or Path(tempfile.mkdtemp(prefix="cc_wikiref-"))
        train_file = out / "wikiref.train.txt"
        train_file.write_text("".join(f"{label} {text}\n" for label, text in train), encoding="utf-8")
        self.model = train_classifier(train_file, out / "wikiref.init.vec", self.config)
        self.model.save_model(str(out / "wikiref.bin"))
        return {"cited_urls": len(cited), "cited_pages": cited_pages, "cited_pages_too_short": short,
                "training_pages": self.config.training_pages, "reference_pages": len(reference_texts),
                "positives": len(positives), "negatives": len(negatives),
                "train_examples": len(train), "held_out": self._evaluate(held_out)}

    def restore(self, state: dict[str, Any]) -> None:
        import fasttext

        self.model = fasttext.load_model(str(self.artifacts / "wikiref.bin"))

    @staticmethod
    def _texts_at(inputs: list[Path], rows: np.ndarray) -> list[str]:
        texts: list[str] = []
        row = 0
        for path in inputs:
            for doc in read_documents(path, columns=["id", "text"]):
                if len(texts) < len(rows) and rows[len(texts)] == row:
                    texts.append(classifier_text(doc.text))
                row += 1
        return texts

    def _evaluate(self, held_out: list[tuple[str, str]]) -> dict[str, Any]:
        if not held_out:
            return {"examples": 0}
        truth = np.array([label == WIKI_LABEL for label, _ in held_out])
        predicted = np.array(self.scores([text for _, text in held_out])) >= self.config.threshold
        tp = int((truth & predicted).sum())
        return {
            "examples": len(held_out),
            "threshold": self.config.threshold,
            "precision": tp / int(predicted.sum()) if predicted.any() else None,
            "recall": tp / int(truth.sum()) if truth.any() else None,
            "accuracy": float((truth == predicted).mean()),
        }

    def score(self, text: str) -> float:
        return self.scores([text])[0]

    def scores(self, texts: list[str]) -> list[float]:
        """P(__label__wiki) of each text, one fastText call for the batch (its C++ loop)."""
        labels, probabilities = self.model.predict([classifier_text(t) for t in texts], k=-1)
        return [min(float(dict(zip(lab, prob)).get(WIKI_LABEL, 0.0)), 1.0) for lab, prob in zip(labels, probabilities)]

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        if self.model is None:
            raise StageError(f"{self.name}: prepare() must run first (use run_stage)")
        scores = self.scores(texts)
        reasons = [None if score >= self.config.threshold else "wikiref_below_threshold" for score in scores]
        return Judgement(reasons, {"wikiref_score": scores})
