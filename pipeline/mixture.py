"""The pretraining mixture: exactly how many tokens each source contributes, and which documents repeat.

LLaMA (Touvron et al. 2023, arXiv 2302.13971, Table 1) fixes for each source a sampling proportion
and the number of epochs its data is seen over 1.4T training tokens: Wikipedia and Books about
2.4 and 2.2 epochs, most others about one, GitHub 0.64 (part of it is never seen).

`sample_mixture` counts the real tokens of every document of each source's final stage folder with
the trained tokenizer (BOS + ids + EOS, as the token shards will hold them), then, per source:
  target   = share * total_tokens (largest-remainder rounding, so the targets sum to the total);
  epochs   = target / the source's training tokens (all its documents but the held-out ones);
  plan     = floor(epochs) whole passes over every document, then the documents in order of their
             sampling key (a hash of seed, source and id) until the remaining tokens are reached;
             the first document that does not fit whole contributes one cut copy of exactly the
             tokens still missing.
So every source's realized tokens equal its target to the token, for any epochs above or below one.

No process holds a per-document list: three passes of jobs over the parts (forked processes here,
or a Ray/Dask cluster) 1. tokenize each document once, keeping its tokens in the folder's
artifacts for the token shards (the text is never encoded twice), and return a histogram of
trainable tokens over the sampling keys; 2. read the one histogram bucket per source where its
target is reached, to place the cut exactly; 3. write each part with its plan. The folder is the
same bytes whatever the worker count or executor.

A deterministic `val_fraction` of the documents (a hash of seed and id) is held out before
planning: validation documents are written once to the val split and never trained on, and the
training targets are met on the remaining documents.

Output: one stage folder (pipeline.documents.StageFolder) with the annotation columns
  tokens          int64  BOS + ids + EOS of the document with the mixture's tokenizer;
  repeats         int64  whole copies in the training stream;
  partial_tokens  int64  length of one extra cut copy (its first tokens, no EOS), 0 if none;
  split           string "train" or "val";
  token_offset    int64  where the document's tokens start in artifacts/tokens/part-NNNNN.bin
                         (flat little-endian uint16, BOS ids EOS of each non-empty row in order);
kept: documents that enter the training stream or the val split; rejected: "not_sampled" (never
drawn, only where a source's epochs < 1) and "empty_document" (no tokens). `export_jsonl_zst`
writes the kept documents in the {"text", "meta"} jsonl.zst layout of RedPajama and dolma.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.documents import (
    SOURCES,
    DocumentCounts,
    PartFolder,
    StageError,
    StageFolder,
    annotation_types_of,
    code_version_of,
    describe_file,
    is_complete,
    kept_parts,
    open_parquet,
    read_documents,
    read_manifest,
    sha256_file,
)
from pipeline.tokenizer import load_tokenizer, pack_documents, tokenizer_model_path

log = logging.getLogger(__name__)

STAGE_NAME = "mixture"
TOKENS_COLUMN = "tokens"
REPEATS_COLUMN = "repeats"
PARTIAL_COLUMN = "partial_tokens"
SPLIT_COLUMN = "split"
TOKEN_OFFSET_COLUMN = "token_offset"
PLAN_TYPES = {TOKENS_COLUMN: pa.int64(), REPEATS_COLUMN: pa.int64(), PARTIAL_COLUMN: pa.int64(), SPLIT_COLUMN: pa.string(),
              TOKEN_OFFSET_COLUMN: pa.int64()}
TOKENS_FOLDER = "tokens"  # artifacts/tokens/part-NNNNN.bin: every non-empty document's tokens, in row order
KEY_BUCKET_BITS = 12  # the plan reads the sampling keys' histogram in 4096 buckets per source
NOT_SAMPLED = "not_sampled"
EMPTY_DOCUMENT = "empty_document"
COUNT_BATCH = 1024
CODE_VERSION = code_version_of(__file__)


class SourceShare(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float  # fraction of the training tokens drawn from this source
    epochs: float  # passes over this source's data the paper made at 1.4T tokens

    @field_validator("share")
    @classmethod
    def _share_in_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {value}")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs_positive(cls, value: float) -> float:
        if not value > 0.0:
            raise ValueError(f"epochs must be > 0, got {value}")
        return value


# Table 1 of LLaMA (arXiv 2302.13971): sampling proportion and epochs at 1.4T tokens.
TABLE1: dict[str, SourceShare] = {
    "cc": SourceShare(share=0.670, epochs=1.10),
    "c4": SourceShare(share=0.150, epochs=1.06),
    "github": SourceShare(share=0.045, epochs=0.64),
    "wikipedia": SourceShare(share=0.045, epochs=2.45),
    "books": SourceShare(share=0.045, epochs=2.23),
    "arxiv": SourceShare(share=0.025, epochs=1.06),
    "stackexchange": SourceShare(share=0.020, epochs=1.03),
}
PAPER_TOTAL_TOKENS = 1_400_000_000_000  # LLaMA-33B/65B; 7B/13B saw 1.0T (Section 2.1)
SHARE_SUM_TOLERANCE = 1e-6


class MixtureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SourceShare] = Field(default_factory=lambda: dict(TABLE1))
    # Training-token budget. "auto": the largest budget at which no source is repeated more than
    # its Table 1 epochs (min over sources of available * epochs / share). That is how the paper's
    # 1.4T relates to its data; a fixed int (e.g. PAPER_TOTAL_TOKENS) is honoured as given.
    total_tokens: int | Literal["auto"] = "auto"
    # Beyond this many epochs a source is memorised rather than learnt from (the paper's maximum is
    # 2.45); a build that needs more is allowed but warned about in the log and the manifest.
    max_epochs: float = 3.0
    # Held-out documents for validation loss (the paper reports none; a small slice is customary,
    # e.g. nanoGPT keeps 0.05% of OpenWebText). At least one document when the fraction is > 0.
    val_fraction: float = 0.0005
    seed: int = 0
    num_threads: int = 2  # SentencePiece threads that count tokens

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: dict[str, SourceShare]) -> dict[str, SourceShare]:
        if not sources:
            raise ValueError("mixture needs at least one source")
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
        total = sum(s.share for s in sources.values())
        if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
            shares = ", ".join(f"{name}={s.share}" for name, s in sources.items())
            raise ValueError(f"source shares must sum to 1 (within {SHARE_SUM_TOLERANCE}), got {total:.6f}: {shares}")
        return sources

    @field_validator("total_tokens")
    @classmethod
    def _positive_total(cls, value: int | str) -> int | str:
        if value != "auto" and value <= 0:
            raise ValueError(f"total_tokens must be > 0 or 'auto', got {value}")
        return value

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _positive_numbers(self) -> "MixtureConfig":
        if self.max_epochs <= 0 or self.num_threads < 1:
            raise ValueError("max_epochs must be > 0 and num_threads >= 1")
        return self


# ---------------------------------------------------------------------------------------------
# The plan: pure functions over token counts


def sample_key(seed: int, source: str, doc_id: str) -> int:
    """A document's sampling key, a uniform 64-bit number fixed by (seed, source, id): the documents
    of a source's fractional pass are drawn in key order, so which are drawn depends on nothing else
    (not on the order, parts or machines that read them)."""
    digest = hashlib.blake2b(f"sample\x00{seed}\x00{source}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def held_out_key(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document id): below val_fraction = held out."""
    digest = hashlib.blake2b(f"val\x00{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def plan_copies(tokens: np.ndarray, target: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(repeats, partial) per document such that sum(repeats * tokens + partial) == target:
    floor(target / available) whole passes, then whole documents in order of their sampling keys
    (ties by position), and the first one that does not fit cut to the tokens still missing
    (partial < its tokens). The stage computes the same plan in parallel passes (`_plan_source`);
    this is its one-process statement."""
    tokens = np.asarray(tokens, dtype=np.int64)
    available = int(tokens.sum())
    if available <= 0:
        raise ValueError("plan_copies: no tokens to draw from")
    whole, rest = divmod(int(target), available)
    repeats = np.where(tokens > 0, whole, 0).astype(np.int64)
    partial = np.zeros(len(tokens), dtype=np.int64)
    order = np.lexsort((np.arange(len(tokens)), np.asarray(keys, dtype=np.uint64)))
    cumulative = np.cumsum(tokens[order])
    fits = int(np.searchsorted(cumulative, rest, side="right"))  # documents wholly inside `rest`
    repeats[order[:fits]] += tokens[order[:fits]] > 0
    missing = rest - (int(cumulative[fits - 1]) if fits else 0)
    if missing > 0:  # fits < len(order) because rest < available
        partial[order[fits]] = missing
    return repeats, partial


def split_targets(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer token targets proportional to `shares` that sum to `total` (largest remainder)."""
    exact = {name: share * total for name, share in shares.items()}
    targets = {name: math.floor(value) for name, value in exact.items()}
    short = total - sum(targets.values())
    for name in sorted(exact, key=lambda n: (targets[n] - exact[n], n))[:short]:
        targets[name] += 1
    return targets


def resolve_total_tokens(config: MixtureConfig, available: dict[str, int]) -> int:
    if config.total_tokens != "auto":
        return int(config.total_tokens)
    return int(min(available[s] * spec.epochs / spec.share for s, spec in config.sources.items()))


# ---------------------------------------------------------------------------------------------
# The stage: three passes of jobs over the parts (an executor: forked processes or a cluster),
# and a plan computed in between from what they return (small: a histogram per source).


@dataclass(frozen=True)
class _PartJob:
    """One input part: its index among all the mixture's parts, paths and config only."""

    index: int
    source: str
    part: str
    work: str  # the stage folder's temporary directory (a filesystem every worker sees)
    model: str
    seed: int
    val_fraction: float
    num_threads: int

    def scratch(self, kind: str) -> Path:
        return Path(self.work) / "scratch" / f"{kind}-{self.index:05d}.npy"

    def tokens_path(self) -> Path:
        return Path(self.work) / "artifacts" / TOKENS_FOLDER / f"part-{self.index:05d}.bin"


_PROCESSORS: dict[str, Any] = {}  # per worker process: the tokenizer is loaded once, not per part


def _processor(model: str):
    if model not in _PROCESSORS:
        _PROCESSORS.clear()
        _PROCESSORS[model] = load_tokenizer(model)
    return _PROCESSORS[model]


def _count_part(job: _PartJob) -> dict[str, Any]:
    """Pass 1 on one part: tokenize every document once (BOS + ids + EOS) into the part's token
    file, save its lengths, sampling keys and held-out flags for the later passes, and return the
    part's summary: the histogram of trainable tokens over the sampling keys, and counts."""
    from pipeline.executor import worker_id

    sp = _processor(job.model)
    bos, eos = sp.bos_id(), sp.eos_id()
    ids: list[str] = []
    lengths: list[np.ndarray] = []
    job.tokens_path().parent.mkdir(parents=True, exist_ok=True)
    with open(job.tokens_path(), "wb") as out:
        for batch in open_parquet(Path(job.part)).iter_batches(batch_size=COUNT_BATCH, columns=["id", "text", "source"]):
            for source in set(batch.column("source").to_pylist()) - {job.source}:
                raise StageError(f"{job.part}: a document has source {source!r}, expected {job.source!r}")
            encoded = sp.encode(batch.column("text").to_pylist(), num_threads=job.num_threads)
            packed, _ = pack_documents([e for e in encoded if e], bos, eos)  # an empty text has no tokens
            out.write(packed.tobytes())
            lengths.append(np.asarray([len(e) + 2 if e else 0 for e in encoded], dtype=np.int64))
            ids += batch.column("id").to_pylist()
    tokens = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    keys = np.asarray([sample_key(job.seed, job.source, i) for i in ids], dtype=np.uint64)
    val_keys = np.asarray([held_out_key(job.seed, i) for i in ids], dtype=np.float64)
    is_val = (val_keys < job.val_fraction) & (tokens > 0)
    np.save(job.scratch("tokens"), tokens)
    np.save(job.scratch("keys"), keys)
    np.save(job.scratch("val"), is_val)
    trainable = np.where(is_val, 0, tokens)
    histogram = np.zeros(1 << KEY_BUCKET_BITS, dtype=np.int64)
    np.add.at(histogram, keys >> np.uint64(64 - KEY_BUCKET_BITS), trainable)
    nonempty = np.flatnonzero(tokens > 0)
    # The first document by held-out key: the val document of a corpus too small to draw one.
    first = int(nonempty[np.argmin(val_keys[nonempty])]) if len(nonempty) else -1
    return {
        "docs": len(ids),
        "nonempty_docs": len(nonempty),
        "val_docs": int(is_val.sum()),
        "val_tokens": int(tokens[is_val].sum()),
        "available_tokens": int(trainable.sum()),
        "histogram": histogram,
        "first_held_out": None if first < 0 else (float(val_keys[first]), first, int(keys[first]), int(tokens[first])),
        "tokens_file": describe_file(job.tokens_path(), Path(job.work)),  # its checksum taken here, not at commit
        "worker": worker_id(),
    }


@dataclass(frozen=True)
class _BucketJob:
    part: _PartJob
    bucket: int
    extra_val_row: int  # the row made a val document after pass 1 (-1: none in this part)


def _bucket_docs(job: _BucketJob) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pass 2 on one part: the trainable documents whose sampling key falls in `bucket` (the one
    where the source's cut lies): keys, ordinals, tokens and ids."""
    keys, tokens, trainable = _trainable(job.part, job.extra_val_row)
    rows = np.flatnonzero((keys >> np.uint64(64 - KEY_BUCKET_BITS) == job.bucket) & (trainable > 0))
    ids = open_parquet(Path(job.part.part)).read(columns=["id"]).column("id").take(pa.array(rows)).to_pylist()
    return keys[rows], _ordinals(job.part.index, rows), tokens[rows], ids


def _trainable(job: _PartJob, extra_val_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, tokens, is_val = np.load(job.scratch("keys")), np.load(job.scratch("tokens")), np.load(job.scratch("val"))
    if extra_val_row >= 0:
        is_val[extra_val_row] = True
    return keys, tokens, np.where(is_val, 0, tokens)


def _ordinals(part: int, rows: np.ndarray) -> np.ndarray:
    """A document's place among all the mixture's parts: ties between equal keys go by it."""
    return (np.uint64(part) << np.uint64(32)) | rows.astype(np.uint64)


@dataclass(frozen=True)
class SourcePlan:
    """Which documents of one source are drawn, decided by their sampling keys: every trainable
    document `whole` times; once more those ordered before `below` = (key, ordinal); the document
    at `cut` = (key, ordinal) contributes one copy of its first `cut_tokens` tokens."""

    whole: int
    below: tuple[int, int] | None
    cut: tuple[int, int] | None
    cut_tokens: int

    def copies(self, keys: np.ndarray, ordinals: np.ndarray, trainable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        repeats = np.where(trainable > 0, self.whole, 0).astype(np.int64)
        partial = np.zeros(len(keys), dtype=np.int64)
        if self.below is not None:
            repeats += (trainable > 0) & _before(keys, ordinals, self.below)
        if self.cut is not None:
            partial[(keys == np.uint64(self.cut[0])) & (ordinals == np.uint64(self.cut[1]))] = self.cut_tokens
        return repeats, partial


def _before(keys: np.ndarray, ordinals: np.ndarray, bound: tuple[int, int]) -> np.ndarray:
    key, ordinal = bound
    if key >= 1 << 64:  # past the last bucket: every key
        return np.ones(len(keys), dtype=bool)
    return (keys < np.uint64(key)) | ((keys == np.uint64(key)) & (ordinals < np.uint64(ordinal)))


def _plan_source(whole: int, rest: int, histogram: np.ndarray, bucket_docs) -> tuple[SourcePlan, dict[str, Any] | None]:
    """The plan of a source that takes `rest` tokens beyond `whole` passes. The bucket of the
    keys' histogram where `rest` is reached is read in full (`bucket_docs(b)`: keys, ordinals,
    tokens, ids) and ordered; every bucket before it is taken whole. Returns the plan and the cut
    document ({"id", "tokens", "taken"}) if any."""
    if rest <= 0:
        return SourcePlan(whole, None, None, 0), None
    cumulative = np.cumsum(histogram)
    bucket = int(np.searchsorted(cumulative, rest, side="left"))  # the first bucket reaching `rest`
    need = rest - (int(cumulative[bucket - 1]) if bucket else 0)
    keys, ordinals, tokens, ids = bucket_docs(bucket)
    order = np.lexsort((ordinals, keys))
    running = np.cumsum(tokens[order])
    fits = int(np.searchsorted(running, need, side="right"))  # documents wholly inside `need`
    missing = need - (int(running[fits - 1]) if fits else 0)
    if fits == len(order):  # the bucket ends exactly at `rest`: everything up to the next bucket
        return SourcePlan(whole, ((bucket + 1) << (64 - KEY_BUCKET_BITS), 0), None, 0), None
    first_out = order[fits]
    bound = (int(keys[first_out]), int(ordinals[first_out]))
    if missing == 0:
        return SourcePlan(whole, bound, None, 0), None
    cut = {"id": ids[first_out], "tokens": int(tokens[first_out]), "taken": missing}
    return SourcePlan(whole, bound, bound, missing), cut


@dataclass(frozen=True)
class _WriteJob:
    part: _PartJob
    plan: SourcePlan
    extra_val_row: int


def _write_part(job: _WriteJob) -> tuple[DocumentCounts, dict[str, int], str]:
    """Pass 3 on one part: its documents with their plan columns, into the stage's temporary folder."""
    from pipeline.executor import worker_id

    keys, tokens, trainable = _trainable(job.part, job.extra_val_row)
    rows = np.arange(len(keys))
    repeats, partial = job.plan.copies(keys, _ordinals(job.part.index, rows), trainable)
    is_val = (tokens > 0) & (trainable == 0)
    offsets = np.concatenate([[0], np.cumsum(tokens)])
    types = annotation_types_of(pq.read_schema(job.part.part)) | PLAN_TYPES
    folder = PartFolder(STAGE_NAME, Path(job.part.work))
    row = 0
    with folder.part(job.part.index, types) as writer:
        for doc in read_documents(Path(job.part.part)):
            if row >= len(keys) or sample_key(job.part.seed, job.part.source, doc.id) != int(keys[row]):
                raise StageError(f"{job.part.part}: changed while the mixture read it (row {row})")
            doc.columns |= {
                TOKENS_COLUMN: int(tokens[row]),
                REPEATS_COLUMN: int(repeats[row]),
                PARTIAL_COLUMN: int(partial[row]),
                SPLIT_COLUMN: "val" if is_val[row] else "train",
                TOKEN_OFFSET_COLUMN: int(offsets[row]),
            }
            if tokens[row] == 0:
                doc.reject(EMPTY_DOCUMENT)
            elif not is_val[row] and repeats[row] == 0 and partial[row] == 0:
                doc.reject(NOT_SAMPLED)
            writer.write(doc)
            row += 1
    if row != len(keys):
        raise StageError(f"{job.part.part}: changed while the mixture read it ({row} rows, {len(keys)} counted)")
    selected = (repeats > 0) | (partial > 0)
    realized = {
        "realized_tokens": int((repeats * trainable).sum() + partial.sum()),
        "docs_selected": int(selected.sum()),
        "docs_not_sampled": int((~selected & (trainable > 0)).sum()),
    }
    return folder.counts, realized, worker_id()


def sample_mixture(
    source_dirs: dict[str, Path], tokenizer: Path, output: Path, config: MixtureConfig | None = None,
    reuse: bool = True, workers: int = 1, executor: Any = None, progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Plan the mixture over each source's final stage folder in real tokens of `tokenizer` (a
    tokenizer stage folder or .model file); write the mixture stage folder at `output`. Returns
    its manifest. With `reuse`, a folder already made from the same inputs and config is kept.
    The passes over parts run on `executor` (pipeline/executor.py: a cluster) or on `workers`
    processes here; the folder's bytes depend on neither. `progress(name, done, total)` is called as
    the count and write jobs finish (2 per part)."""
    from pipeline.executor import LocalExecutor, worker_id

    config = config or MixtureConfig()
    output = Path(output)
    source_dirs = {name: Path(path) for name, path in source_dirs.items()}
    missing = sorted(set(config.sources) - set(source_dirs))
    extra = sorted(set(source_dirs) - set(config.sources))
    if missing or extra:
        raise StageError(
            "mixture sources and source folders differ: "
            + (f"no folder for {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"no share configured for {', '.join(extra)}" if extra else "")
        )
    for name, path in source_dirs.items():
        if not is_complete(path):
            raise StageError(f"{path}: incomplete stage folder for source {name} (no manifest.json)")
    model_path = tokenizer_model_path(tokenizer)
    inputs = [source_dirs[name] / "manifest.json" for name in config.sources] + [model_path]
    folder = StageFolder(output, STAGE_NAME, config.model_dump(mode="json"), inputs=inputs, code_version=CODE_VERSION)
    if reuse and (manifest := folder.current()):
        return manifest
    runner = executor if executor is not None else LocalExecutor(workers, label=STAGE_NAME)
    here = worker_id()

    finished = [0, 0]  # part jobs done, of

    def run(fn, jobs: list[Any], counted: bool = False) -> list[Any]:
        results = []
        for result in runner.map(fn, jobs):
            results.append(result)
            if counted and progress:
                finished[0] += 1
                progress(STAGE_NAME, finished[0], finished[1])
        return results

    with folder:
        (folder.tmp / "scratch").mkdir()
        jobs = [_PartJob(0, name, str(part), str(folder.tmp), str(model_path), config.seed, config.val_fraction,
                         config.num_threads)
                for name in config.sources for part in kept_parts(source_dirs[name])]
        jobs = [replace(job, index=index) for index, job in enumerate(jobs)]
        of_source = {name: [job for job in jobs if job.source == name] for name in config.sources}
        finished[1] = 2 * len(jobs)

        # Pass 1: every part tokenized once; a histogram of trainable tokens over the keys per source.
        started = time.perf_counter()
        summaries = dict(zip((job.index for job in jobs), run(_count_part, jobs, counted=True)))
        folder.timings["count_wall_time_s"] = time.perf_counter() - started
        for summary in summaries.values():
            folder.counts.described[summary["tokens_file"]["path"]] = summary["tokens_file"]
        total_of = lambda name, key: sum(summaries[job.index][key] for job in of_source[name])
        histograms = {name: sum((summaries[job.index]["histogram"] for job in of_source[name]),
                                np.zeros(1 << KEY_BUCKET_BITS, dtype=np.int64)) for name in config.sources}
        available = {name: total_of(name, "available_tokens") for name in config.sources}
        val_docs = {name: total_of(name, "val_docs") for name in config.sources}
        val_tokens = {name: total_of(name, "val_tokens") for name in config.sources}

        # Held-out documents (never trained on); a tiny corpus still gets one: the first non-empty
        # document by held-out key among the sources with at least two.
        extra_val = (-1, -1)  # (part index, row)
        if config.val_fraction > 0 and not any(val_docs.values()):
            candidates = [(summary["first_held_out"], index, job.source) for job in jobs
                          if (summary := summaries[job.index])["first_held_out"] is not None
                          and total_of(job.source, "nonempty_docs") >= 2]
            if candidates:
                (_, row, key, tokens), index, name = min(candidates, key=lambda c: (c[0][0], c[1]))
                extra_val = (index, row)
                histograms[name][key >> (64 - KEY_BUCKET_BITS)] -= tokens
                available[name] -= tokens
                val_docs[name], val_tokens[name] = 1, tokens
        extra_row = lambda job: extra_val[1] if job.index == extra_val[0] else -1

        empty = [name for name, n in available.items() if n <= 0]
        if empty:
            raise StageError(f"mixture: source(s) {', '.join(empty)} have no tokens to train on in their final stage folder")
        total = resolve_total_tokens(config, available)
        targets = split_targets(total, {name: spec.share for name, spec in config.sources.items()})

        # Pass 2 (one bucket per source): the documents where each source's target is reached.
        warnings: list[str] = []
        plans: dict[str, SourcePlan] = {}
        cuts: dict[str, dict[str, Any] | None] = {}
        for name, spec in config.sources.items():
            epochs = targets[name] / available[name]
            if epochs > config.max_epochs:
                message = (
                    f"{name}: needs {epochs:.2f} epochs to supply {spec.share:.3f} of {total} tokens "
                    f"(max_epochs {config.max_epochs}, Table 1: {spec.epochs}); add data or lower its share"
                )
                log.warning("mixture: %s", message)
                warnings.append(message)
            whole, rest = divmod(targets[name], available[name])

            def bucket_docs(bucket: int, name: str = name) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
                found = run(_bucket_docs, [_BucketJob(job, bucket, extra_row(job)) for job in of_source[name]
                                           if summaries[job.index]["histogram"][bucket] > 0])
                return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]),
                        np.concatenate([f[2] for f in found]), [i for f in found for i in f[3]])

            plans[name], cuts[name] = _plan_source(whole, rest, histograms[name], bucket_docs)

        # Pass 3: every part written with its plan columns.
        started = time.perf_counter()
        realized: dict[str, dict[str, int]] = {name: {} for name in config.sources}
        written = run(_write_part, [_WriteJob(job, plans[job.source], extra_row(job)) for job in jobs], counted=True)
        for job, (counts, part_realized, who) in zip(jobs, written):
            folder.register_part(job.index)
            folder.counts.add(counts)
            for key, value in part_realized.items():
                realized[job.source][key] = realized[job.source].get(key, 0) + value
        folder.timings["write_wall_time_s"] = time.perf_counter() - started
        for who in [summaries[job.index]["worker"] for job in jobs] + [who for _, _, who in written]:
            if who != here:
                folder.part_workers[who] = folder.part_workers.get(who, 0) + 1
        shutil.rmtree(folder.tmp / "scratch")

        per_source: dict[str, dict[str, Any]] = {}
        for name, spec in config.sources.items():
            epochs = targets[name] / available[name]
            per_source[name] = {
                "available_docs": total_of(name, "nonempty_docs") - val_docs[name],
                "available_tokens": available[name],
                "val_docs": val_docs[name],
                "val_tokens": val_tokens[name],
                "empty_docs": total_of(name, "docs") - total_of(name, "nonempty_docs"),
                "target_share": spec.share,
                "target_tokens": targets[name],
                "realized_tokens": realized[name].get("realized_tokens", 0),
                "epochs": round(epochs, 6),
                "table1_epochs": spec.epochs,
                "whole_passes": math.floor(epochs),
                "docs_selected": realized[name].get("docs_selected", 0),
                "docs_not_sampled": realized[name].get("docs_not_sampled", 0),
                "cut_document": cuts[name],
            }
        realized_total = sum(s["realized_tokens"] for s in per_source.values())
        for stats in per_source.values():
            stats["realized_share"] = round(stats["realized_tokens"] / realized_total, 8)
        folder.stats.update(
            {
                "total_tokens": total,
                "total_tokens_mode": "auto" if config.total_tokens == "auto" else "fixed",
                "realized_tokens": realized_total,
                "token_count": "BOS + SentencePiece ids + EOS per document",
                "tokenizer_sha256": sha256_file(model_path),
                "sources": per_source,
                "warnings": warnings,
            }
        )
    return read_manifest(output)


def read_plan_columns(mixture_dir: Path) -> list[Path]:
    """The kept parts of a mixture folder, checked to carry the plan columns."""
    mixture_dir = Path(mixture_dir)
    if not is_complete(mixture_dir):
        raise StageError(f"{mixture_dir}: incomplete mixture stage folder (no manifest.json)")
    parts = kept_parts(mixture_dir)
    for part in parts:
        names = pq.read_schema(part).names
        for column in (TOKENS_COLUMN, REPEATS_COLUMN, PARTIAL_COLUMN, SPLIT_COLUMN, TOKEN_OFFSET_COLUMN):
            if column not in names:
                raise StageError(f"{part}: no '{column}' column; is {mixture_dir} a mixture stage folder?")
    return parts


# ---------------------------------------------------------------------------------------------
# Export: the sampled mixture as jsonl.zst, the layout RedPajama and dolma readers take


def export_jsonl_zst(mixture_dir: Path, output: Path, docs_per_file: int = 100_000, level: int = 3) -> dict[str, Any]:
    """Write the kept documents of a mixture folder as <output>/<source>/<source>-NNNNN.jsonl.zst,
    one {"text", "meta"} object per line (RedPajama's layout; dolma reads the same fields). Each
    document appears once; meta carries its id, source, the mixture's plan (repeats,
    partial_tokens, tokens, split) and the source's own metadata (url, title, license...).
    Returns {source: {"files": [...], "docs": n}}, also written to <output>/export.json."""
    output = Path(output)
    parts = read_plan_columns(mixture_dir)
    output.mkdir(parents=True, exist_ok=True)
    plan_keys = (TOKENS_COLUMN, REPEATS_COLUMN, PARTIAL_COLUMN, SPLIT_COLUMN)
    written: dict[str, dict[str, Any]] = {}
    open_files: dict[str, tuple[Any, Any, int]] = {}

    def close(source: str) -> None:
        text_stream, raw, _ = open_files.pop(source)
        text_stream.close()
        raw.close()

    try:
        for part in parts:
            for doc in read_documents(part):
                entry = written.setdefault(doc.source, {"files": [], "docs": 0})
                if doc.source in open_files and open_files[doc.source][2] >= docs_per_file:
                    close(doc.source)
                if doc.source not in open_files:
                    path = output / doc.source / f"{doc.source}-{len(entry['files']):05d}.jsonl.zst"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    raw = open(path, "wb")
                    writer = zstandard.ZstdCompressor(level=level).stream_writer(raw)
                    open_files[doc.source] = (io.TextIOWrapper(writer, encoding="utf-8"), raw, 0)
                    entry["files"].append(str(path.relative_to(output)))
                stream, raw, count = open_files[doc.source]
                meta = {"id": doc.id, "source": doc.source} | {k: doc.columns[k] for k in plan_keys} | doc.meta
                stream.write(json.dumps({"text": doc.text, "meta": meta}, ensure_ascii=False) + "\n")
                open_files[doc.source] = (stream, raw, count + 1)
                entry["docs"] += 1
    finally:
        for source in list(open_files):
            close(source)
    (output / "export.json").write_text(json.dumps({"mixture": str(mixture_dir), "sources": written}, indent=2) + "\n")
    return written
