"""cc_perplexity: CCNet's quality signal, a KenLM 5-gram trained on Wikipedia (CCNet §3.3, LLaMA §2).

prepare():
  1. English Wikipedia text (the `wikipedia_clean` stage: documents with `language` == "en"; all of
     them when the column is absent), line by line through cc_net's `normalize_for_lm`;
  2. a SentencePiece model (unigram, as cc_net's lm_sp models) trained on it;
  3. the text tokenized with it, a 5-gram KenLM (`lmplz`, then `build_binary`);
  4. head/tail cutoffs, fixed as cc_net's are (`cutoffs: fixed`, the default): cc_net's
     data/cutoff.csv holds, per language, the 30th and 60th percentiles of its model's perplexity on
     a reference sample of CommonCrawl, computed once, so a poor crawl is mostly tail and a good one
     mostly head. `llama-recipe calibrate-perplexity` computes them the same way for this model (it
     is trained on the build's Wikipedia) and writes them into the spec, with the model's checksum
     (a build whose model differs warns). `cutoffs: percentiles` (a named deviation) takes the
     percentiles of each build's own first `reference_sample` pages instead: ~40% of any build is
     then tail whatever its quality, and two crawls are not comparable.
process(): as cc_net's mine.py runs it (`scoring: page`, the default): the whole page normalized
(`normalize`, which deletes the newlines with the other control characters, so the lines run
together), SentencePiece-encoded, and scored by `DocLM` as ONE sentence: perplexity =
10 ** (-log10 score(pieces, <s>, </s>) / (pieces + 1)), rounded to 1 decimal. `scoring: lines` is
a named deviation: each non-empty line normalized, encoded and scored as its own sentence, the
page's perplexity 10 ** (-sum(log10) / sum(pieces + 1)) (DocLM's per-line loop as written, which
cc_net's own pipeline never reaches; it changes the bucket of ~10% of real pages).
Buckets as cc_net's PerplexityBucket: head < 30th pct <= middle < 60th <= tail.
The manifest also holds `perplexity_histogram` (log-spaced bucket edges + counts of every scored
page) for plots.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa

from pipeline.documents import StageError, kept_parts, read_documents, sha256_file
from pipeline.resources import kenlm_binary
from pipeline.stage import Judgement, Stage, StageConfig
from pipeline.text import normalize_for_lm
from pipeline.tokenizer import drop_training_paths

WIKIPEDIA = "wikipedia_clean"
log = logging.getLogger(__name__)


class PerplexityConfig(StageConfig):
    order: int = 5  # cc_net / LLaMA: 5-gram KenLM
    # "page": cc_net (the page normalized whole, newlines deleted, one sentence); "lines": each line
    # its own sentence (a named deviation, see the module docstring).
    scoring: Literal["page", "lines"] = "page"
    sp_vocab_size: int = 8000  # a soft limit (hard_vocab_limit=False) so tiny corpora train
    sp_model_type: str = "unigram"  # cc_net's lm_sp models are unigram SentencePiece
    sp_max_sentences: int = 2_000_000  # SentencePiece input_sentence_size (sampled)
    # SentencePiece's unigram EM sums in a different order with more threads: one thread (and a
    # fixed seed) makes the model, and so the build, reproducible byte for byte.
    sp_threads: int = 1
    seed: int = 0
    lmplz_memory: str = "1G"  # lmplz -S; small so several builds can share a machine
    head_percentile: float = 30  # cc_net PerplexityBucket(percentile_head=30)
    tail_percentile: float = 60  # cc_net PerplexityBucket(percentile_tail=60)
    reference_sample: int = 10_000  # pages scored for the percentiles (the first N English pages)
    # "fixed" (cc_net): head_cutoff/tail_cutoff, from `llama-recipe calibrate-perplexity`;
    # "percentiles": each build's own pages' percentiles (a deviation: see the module docstring).
    cutoffs: Literal["fixed", "percentiles"] = "fixed"
    head_cutoff: float | None = None
    tail_cutoff: float | None = None
    calibrated_model: str | None = None  # sha256 of the model the cutoffs were computed with
    keep_buckets: list[str] = ["head", "middle"]  # RedPajama v1 keeps head+middle; LLaMA is silent
    language: str = "en"
    # Manifest histogram of the pages' perplexities (for plots): log-spaced buckets, this many per
    # decade, from 1 to 10**histogram_decades; larger values are counted in "above_last_edge".
    histogram_per_decade: int = 10
    histogram_decades: int = 5


def wikipedia_lines(folder: Path, language: str) -> Iterator[str]:
    """The normalized non-empty lines of the Wikipedia pages in `language`."""
    for part in kept_parts(folder):
        for doc in read_documents(part):
            if doc.columns.get("language", language) != language:
                continue
            for line in doc.text.split("\n"):
                normalized = normalize_for_lm(line)
                if normalized:
                    yield normalized


class PerplexityModel:
    """SentencePiece + KenLM, loaded from the files prepare() wrote."""

    def __init__(self, sp_model: Path, kenlm_model: Path, scoring: str = "page"):
        import kenlm
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(sp_model))
        self.lm = kenlm.Model(str(kenlm_model))
        self.scoring = scoring

    def perplexity(self, text: str) -> float | None:
        if self.scoring == "page":
            # cc_net: normalize(page) deletes the newlines (control characters): one sentence.
            normalized = normalize_for_lm(text)
            if not normalized:
                return None
            pieces = self.sp.encode(normalized, out_type=str)
            return round(10.0 ** (-self.lm.score(" ".join(pieces), bos=True, eos=True) / (len(pieces) + 1)), 1)
        lines = [normalized for normalized in map(normalize_for_lm, text.split("\n")) if normalized]
        if not lines:
            return None
        # One SentencePiece call per page (its batch API), on one thread: parallelism is the
        # stage's worker processes, not a thread pool per call.
        pieces = self.sp.encode(lines, out_type=str, num_threads=1)
        score = self.lm.score
        log10_sum = sum(score(" ".join(p), bos=True, eos=True) for p in pieces)
        length = sum(map(len, pieces)) + len(pieces)
        return round(10.0 ** (-log10_sum / length), 1)


def train_perplexity_model(lines: Iterable[str], out: Path, config: PerplexityConfig) -> tuple[Path, Path]:
    """Train SentencePiece and the KenLM n-gram on normalized lines; returns (sp model, kenlm binary)."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory(prefix="cc_perplexity-") as tmp:
        tmp_dir = Path(tmp)
        corpus = tmp_dir / "wikipedia.norm.txt"
        n_lines = 0
        with open(corpus, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
                n_lines += 1
        if n_lines == 0:
            raise StageError(f"{WIKIPEDIA}: no {config.language} Wikipedia text to train the perplexity model on")
        prefix = out / "sp"
        spm.set_random_generator_seed(config.seed)
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=config.sp_vocab_size,
            hard_vocab_limit=False,
            model_type=config.sp_model_type,
            input_sentence_size=config.sp_max_sentences,
            shuffle_input_sentence=True,
            num_threads=config.sp_threads,
            minloglevel=2,
        )
        drop_training_paths(Path(str(prefix) + ".model"))
        sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
        tokenized = tmp_dir / "wikipedia.sp.txt"
        with open(corpus, encoding="utf-8") as src, open(tokenized, "w", encoding="utf-8") as dst:
            for line in src:
                dst.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
        arpa = tmp_dir / "lm.arpa"
        _run(
            [str(kenlm_binary("lmplz")), "-o", str(config.order), "--discount_fallback",
             "-S", config.lmplz_memory, "-T", str(tmp_dir)],
            stdin=tokenized, stdout=arpa,
        )
        binary = out / f"{config.language}.{config.order}gram.binary"
        _run([str(kenlm_binary("build_binary")), str(arpa), str(binary)])
    return Path(str(prefix) + ".model"), binary


def _run(cmd: list[str], stdin: Path | None = None, stdout: Path | None = None) -> None:
    with open(stdin or "/dev/null", "rb") as fin, open(stdout or "/dev/null", "wb") as fout:
        done = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise StageError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")


def model_digest(sp_model: Path, kenlm_model: Path) -> str:
    """One sha256 for the SentencePiece + KenLM pair the perplexities come from."""
    return hashlib.sha256((sha256_file(sp_model) + sha256_file(kenlm_model)).encode()).hexdigest()


def histogram_edges(per_decade: int, decades: int) -> np.ndarray:
    """[0, 10**(1/per_decade), ..., 10**decades]: perplexities are >= 1, the first bucket is [0, ...)."""
    edges = 10.0 ** (np.arange(1, per_decade * decades + 1) / per_decade)
    return np.concatenate([[0.0], edges])


def bucket_of(perplexity: float, head_cutoff: float, tail_cutoff: float) -> str:
    if perplexity < head_cutoff:
        return "head"
    if perplexity < tail_cutoff:
        return "middle"
    return "tail"


class CCPerplexity(Stage):
    name = "cc_perplexity"
    source = "cc"
    references = (WIKIPEDIA,)
    columns = {"perplexity": pa.float64(), "bucket": pa.string()}
    Config = PerplexityConfig
    description = "KenLM 5-gram (Wikipedia) perplexity of the whole page; head/middle/tail at fixed cutoffs"
    parallel_parts = True
    remote_parts = True  # a worker loads the models prepare() wrote into the artifacts, with the cutoffs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model: PerplexityModel | None = None
        self.cutoffs: tuple[float, float] | None = None
        self.edges = histogram_edges(self.config.histogram_per_decade, self.config.histogram_decades)

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        config = self.config
        fixed = config.cutoffs == "fixed"
        if fixed and (config.head_cutoff is None or config.tail_cutoff is None):
            raise StageError(
                f"{self.name}: `cutoffs: fixed` (cc_net's) needs head_cutoff and tail_cutoff: run `llama-recipe "
                "calibrate-perplexity --build BUILD` once the build has its wikipedia_clean and cc_langid folders "
                "(it writes them into the spec), or set `cutoffs: percentiles` to take each build's own percentiles")
        if fixed and not config.head_cutoff < config.tail_cutoff:
            raise StageError(f"{self.name}: head_cutoff {config.head_cutoff} must be below tail_cutoff {config.tail_cutoff}")
        out = self.artifacts or Path(tempfile.mkdtemp(prefix="cc_perplexity-"))
        sp_model, lm = train_perplexity_model(wikipedia_lines(self.refs[WIKIPEDIA], config.language), out, config)
        self.model = PerplexityModel(sp_model, lm, config.scoring)
        self._model_files = (str(sp_model), str(lm))
        stats: dict[str, Any] = {"cutoffs": config.cutoffs, "model_sha256": model_digest(sp_model, lm)}
        if fixed:
            self.cutoffs = (float(config.head_cutoff), float(config.tail_cutoff))
            if config.calibrated_model not in (None, stats["model_sha256"]):
                message = (f"the cutoffs were calibrated on another model ({config.calibrated_model[:12]}, this one "
                           f"{stats['model_sha256'][:12]}): rerun llama-recipe calibrate-perplexity")
                log.warning("%s: %s", self.name, message)
                stats["warnings"] = [message]
        else:
            head, tail, pages = self._percentile_cutoffs(inputs, "input page to set the cutoffs on")
            self.cutoffs = (head, tail)
            stats |= {"head_percentile": config.head_percentile, "tail_percentile": config.tail_percentile,
                      "reference_pages": pages}
        return stats | {
            "head_cutoff": self.cutoffs[0],
            "tail_cutoff": self.cutoffs[1],
            "scoring": config.scoring,
            "sp_vocab_size": self.model.sp.get_piece_size(),
        }

    def worker_state(self) -> dict[str, Any]:
        return {"model_files": list(self._model_files), "cutoffs": list(self.cutoffs)}

    def restore(self, state: dict[str, Any]) -> None:
        self.model = PerplexityModel(*map(Path, state["model_files"]), self.config.scoring)
        self.cutoffs = tuple(state["cutoffs"])

    def calibrate(self, pages: list[Path]) -> dict[str, Any]:
        """cc_net's cutoff.csv for this model: train it (as prepare does), score the first
        `reference_sample` pages of `pages` (stage folders or Parquet parts) and return the
        percentiles as the config values `cutoffs: fixed` takes."""
        import shutil

        from pipeline.stage import expand_document_inputs

        out = Path(tempfile.mkdtemp(prefix="cc_perplexity-calibrate-"))
        try:
            sp_model, lm = train_perplexity_model(wikipedia_lines(self.refs[WIKIPEDIA], self.config.language), out, self.config)
            self.model = PerplexityModel(sp_model, lm, self.config.scoring)
            head, tail, scored = self._percentile_cutoffs(expand_document_inputs(pages),
                                                          f"page in {', '.join(map(str, pages))}")
            return {"head_cutoff": round(head, 1), "tail_cutoff": round(tail, 1),
                    "calibrated_model": model_digest(sp_model, lm), "reference_pages": scored}
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _percentile_cutoffs(self, inputs: list[Path], what: str) -> tuple[float, float, int]:
        """The head/tail percentiles of the first `reference_sample` pages' perplexities, and how
        many pages were scored (none: a StageError saying there is no scorable `what`)."""
        sample = self._reference_perplexities(inputs)
        if len(sample) == 0:
            raise StageError(f"{self.name}: no scorable {self.config.language} {what}")
        head, tail = np.percentile(sample, [self.config.head_percentile, self.config.tail_percentile])
        return float(head), float(tail), int(len(sample))

    def _reference_perplexities(self, inputs: list[Path]) -> np.ndarray:
        values: list[float] = []
        for path in inputs:
            for doc in read_documents(path):
                if len(values) >= self.config.reference_sample:
                    return np.array(values)
                if doc.columns.get("language", self.config.language) != self.config.language:
                    continue
                pp = self.model.perplexity(doc.text)
                if pp is not None:
                    values.append(pp)
        return np.array(values)

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        if self.model is None or self.cutoffs is None:
            raise StageError(f"{self.name}: prepare() must run first (use run_stage)")
        keep = set(self.config.keep_buckets)
        perplexities = [self.model.perplexity(text) for text in texts]
        buckets = [None if pp is None else bucket_of(pp, *self.cutoffs) for pp in perplexities]
        reasons = ["no_scorable_text" if bucket is None else None if bucket in keep else f"perplexity_{bucket}"
                   for bucket in buckets]
        self._count(np.array([pp for pp in perplexities if pp is not None], dtype=np.float64))
        return Judgement(reasons, {"perplexity": perplexities, "bucket": buckets})

    def _count(self, perplexities: np.ndarray) -> None:
        """Add a part's perplexities to the histogram (a tally, so parts in workers add up)."""
        above = perplexities >= self.edges[-1]
        bins = np.searchsorted(self.edges, perplexities[~above], side="right") - 1
        self.tally("histogram", np.bincount(bins, minlength=len(self.edges) - 1).astype(np.int64))
        self.tally("above_last_edge", int(above.sum()))

    def final_stats(self) -> dict[str, Any]:
        """Every scored page's perplexity, bucketed: counts[i] pages have edges[i] <= pp < edges[i+1]."""
        histogram = self.counters.get("histogram", np.zeros(len(self.edges) - 1, dtype=np.int64))
        return {
            "perplexity_histogram": {
                "edges": [round(float(e), 3) for e in self.edges],
                "counts": [int(c) for c in histogram],
                "above_last_edge": int(self.counters.get("above_last_edge", 0)),
                "scale": f"log, {self.config.histogram_per_decade} buckets per decade",
            }
        }
