"""cc_perplexity: CCNet's quality signal, a KenLM 5-gram trained on Wikipedia (CCNet §3.3, LLaMA §2).

prepare():
  1. English Wikipedia text (the `wikipedia_clean` stage: documents with `language` == "en"; all of
     them when the column is absent), line by line through cc_net's `normalize_for_lm`;
  2. a SentencePiece model (unigram, as cc_net's lm_sp models) trained on it;
  3. the text tokenized with it, a 5-gram KenLM (`lmplz`, then `build_binary`);
  4. head/tail cutoffs: the 30th and 60th percentiles of the perplexity of a deterministic sample
     of the input pages (cc_net's cutoff.csv is the same percentiles over a CC sample).
process(): cc_net's `DocLM`: for each non-empty line, normalize, SentencePiece-encode, KenLM log10
score of the pieces (with <s> and </s>); doc perplexity = 10 ** (-sum(log10) / sum(pieces + 1)),
rounded to 1 decimal. Buckets as cc_net's PerplexityBucket: head < 30th pct <= middle < 60th <= tail.
The manifest also holds `perplexity_histogram` (log-spaced bucket edges + counts of every scored
page) for plots.
(cc_net normalizes the whole page before SentencePiece, which removes the newlines with the other
control characters and scores the page as one line; we score line by line, as DocLM intends.)
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.documents import StageError, kept_parts, read_documents
from pipeline.resources import kenlm_binary
from pipeline.stage import Judgement, Stage, StageConfig
from pipeline.text import normalize_for_lm
from pipeline.tokenizer import drop_training_paths

WIKIPEDIA = "wikipedia_clean"


class PerplexityConfig(StageConfig):
    order: int = 5  # cc_net / LLaMA: 5-gram KenLM
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
    reference_sample: int = 10_000  # input pages scored for the cutoffs (the first N English pages)
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

    def __init__(self, sp_model: Path, kenlm_model: Path):
        import kenlm
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(sp_model))
        self.lm = kenlm.Model(str(kenlm_model))

    def perplexity(self, text: str) -> float | None:
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
    description = "KenLM 5-gram (Wikipedia) perplexity; head/middle/tail at the 30th/60th percentiles"
    parallel_parts = True
    remote_parts = True  # a worker loads the models prepare() wrote into the artifacts, with the cutoffs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model: PerplexityModel | None = None
        self.cutoffs: tuple[float, float] | None = None
        self.edges = histogram_edges(self.config.histogram_per_decade, self.config.histogram_decades)

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        out = self.artifacts or Path(tempfile.mkdtemp(prefix="cc_perplexity-"))
        sp_model, lm = train_perplexity_model(wikipedia_lines(self.refs[WIKIPEDIA], self.config.language), out, self.config)
        self.model = PerplexityModel(sp_model, lm)
        self._model_files = (str(sp_model), str(lm))
        sample = self._reference_perplexities(inputs)
        if len(sample) == 0:
            raise StageError(f"{self.name}: no scorable {self.config.language} input page to set the cutoffs on")
        head, tail = np.percentile(sample, [self.config.head_percentile, self.config.tail_percentile])
        self.cutoffs = (float(head), float(tail))
        return {
            "head_cutoff": self.cutoffs[0],
            "tail_cutoff": self.cutoffs[1],
            "head_percentile": self.config.head_percentile,
            "tail_percentile": self.config.tail_percentile,
            "reference_pages": int(len(sample)),
            "sp_vocab_size": self.model.sp.get_piece_size(),
        }

    def worker_state(self) -> dict[str, Any]:
        return {"model_files": list(self._model_files), "cutoffs": list(self.cutoffs)}

    def restore(self, state: dict[str, Any]) -> None:
        self.model = PerplexityModel(*map(Path, state["model_files"]))
        self.cutoffs = tuple(state["cutoffs"])

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
