"""The pretraining mixture: exactly how many tokens each source contributes, and which documents repeat.

LLaMA (Touvron et al. 2023, arXiv 2302.13971, Table 1) fixes for each source a sampling proportion
and the number of epochs its data is seen over 1.4T training tokens: Wikipedia and Books about
2.4 and 2.2 epochs, most others about one, GitHub 0.64 (part of it is never seen).

`sample_mixture` counts the real tokens of every document of each source's final stage folder with
the trained tokenizer (BOS + ids + EOS, as the token shards will hold them), then, per source:
  target   = share * total_tokens (largest-remainder rounding, so the targets sum to the total);
  epochs   = target / the source's training tokens (all its documents but the held-out ones);
  plan     = floor(epochs) whole passes over every document, then the documents of a permutation
             seeded by (seed, source) until the remaining tokens are reached; the first document
             that does not fit whole contributes one cut copy of exactly the tokens still missing.
So every source's realized tokens equal its target to the token, for any epochs above or below one.

A deterministic `val_fraction` of the documents (a hash of seed and id) is held out before
planning: validation documents are written once to the val split and never trained on, and the
training targets are met on the remaining documents.

Output: one stage folder (pipeline.documents.StageFolder) with the annotation columns
  tokens          int64  BOS + ids + EOS of the document with the mixture's tokenizer;
  repeats         int64  whole copies in the training stream;
  partial_tokens  int64  length of one extra cut copy (its first tokens, no EOS), 0 if none;
  split           string "train" or "val";
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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.documents import (
    SOURCES,
    StageError,
    StageFolder,
    annotation_types_of,
    code_version_of,
    is_complete,
    kept_parts,
    open_parquet,
    read_documents,
    read_manifest,
    sha256_file,
)
from pipeline.tokenizer import load_tokenizer, token_counts, tokenizer_model_path

log = logging.getLogger(__name__)

STAGE_NAME = "mixture"
TOKENS_COLUMN = "tokens"
REPEATS_COLUMN = "repeats"
PARTIAL_COLUMN = "partial_tokens"
SPLIT_COLUMN = "split"
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


def source_rng(seed: int, source: str) -> np.random.Generator:
    """One generator per (seed, source), stable across runs (no Python hash randomisation)."""
    return np.random.default_rng([seed, SOURCES.index(source)])


def held_out_key(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document id): below val_fraction = held out."""
    digest = hashlib.blake2b(f"val\x00{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def plan_copies(tokens: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(repeats, partial) per document such that sum(repeats * tokens + partial) == target:
    floor(target / available) whole passes, then whole documents of a seeded permutation, and the
    first one that does not fit cut to the tokens still missing (partial < its tokens)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    available = int(tokens.sum())
    if available <= 0:
        raise ValueError("plan_copies: no tokens to draw from")
    whole, rest = divmod(int(target), available)
    repeats = np.where(tokens > 0, whole, 0).astype(np.int64)
    partial = np.zeros(len(tokens), dtype=np.int64)
    order = rng.permutation(len(tokens))
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
# The stage


def _count_part(part: Path, processor, num_threads: int) -> tuple[list[str], np.ndarray]:
    """Document ids and token counts (BOS + ids + EOS; 0 for a document with no ids) of one part."""
    ids: list[str] = []
    counts: list[int] = []
    for batch in open_parquet(part).iter_batches(batch_size=COUNT_BATCH, columns=["id", "text"]):
        ids += batch.column("id").to_pylist()
        counts += [n + 2 if n else 0 for n in token_counts(processor, batch.column("text").to_pylist(), num_threads)]
    return ids, np.asarray(counts, dtype=np.int64)


def sample_mixture(
    source_dirs: dict[str, Path], tokenizer: Path, output: Path, config: MixtureConfig | None = None,
    reuse: bool = True,
) -> dict[str, Any]:
    """Plan the mixture over each source's final stage folder in real tokens of `tokenizer` (a
    tokenizer stage folder or .model file); write the mixture stage folder at `output`. Returns
    its manifest. With `reuse`, a folder already made from the same inputs and config is kept."""
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
    processor = load_tokenizer(model_path)

    # Pass 1: real token counts of every document, per source in part/row order.
    parts = {name: kept_parts(source_dirs[name]) for name in config.sources}
    doc_ids: dict[str, list[str]] = {}
    tokens: dict[str, np.ndarray] = {}
    for name in config.sources:
        counted = [_count_part(p, processor, config.num_threads) for p in parts[name]]
        doc_ids[name] = [i for ids, _ in counted for i in ids]
        tokens[name] = np.concatenate([c for _, c in counted]) if counted else np.zeros(0, dtype=np.int64)

    # Held-out documents (never trained on); a tiny corpus still gets one.
    is_val: dict[str, np.ndarray] = {}
    val_keys: dict[str, np.ndarray] = {}
    for name in config.sources:
        val_keys[name] = np.asarray([held_out_key(config.seed, i) for i in doc_ids[name]], dtype=np.float64)
        is_val[name] = (val_keys[name] < config.val_fraction) & (tokens[name] > 0)
    if config.val_fraction > 0 and not any(v.any() for v in is_val.values()):
        best: tuple[float, str, int] | None = None
        for name in config.sources:
            keyed = np.where(tokens[name] > 0, val_keys[name], np.inf)
            if (tokens[name] > 0).sum() >= 2 and (best is None or keyed.min() < best[0]):
                best = (float(keyed.min()), name, int(np.argmin(keyed)))
        if best is not None:
            is_val[best[1]][best[2]] = True

    trainable = {name: np.where(is_val[name], 0, tokens[name]) for name in config.sources}
    available = {name: int(trainable[name].sum()) for name in config.sources}
    empty = [name for name, n in available.items() if n <= 0]
    if empty:
        raise StageError(f"mixture: source(s) {', '.join(empty)} have no tokens to train on in their final stage folder")

    total = resolve_total_tokens(config, available)
    targets = split_targets(total, {name: spec.share for name, spec in config.sources.items()})
    warnings: list[str] = []
    plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    per_source: dict[str, dict[str, Any]] = {}
    for name, spec in config.sources.items():
        epochs = targets[name] / available[name]
        if epochs > config.max_epochs:
            message = (
                f"{name}: needs {epochs:.2f} epochs to supply {spec.share:.3f} of {total} tokens "
                f"(max_epochs {config.max_epochs}, Table 1: {spec.epochs}); add data or lower its share"
            )
            log.warning("mixture: %s", message)
            warnings.append(message)
        repeats, partial = plan_copies(trainable[name], targets[name], source_rng(config.seed, name))
        plans[name] = (repeats, partial)
        realized = int((repeats * trainable[name]).sum() + partial.sum())
        cut = np.flatnonzero(partial)
        per_source[name] = {
            "available_docs": int((trainable[name] > 0).sum()),
            "available_tokens": available[name],
            "val_docs": int(is_val[name].sum()),
            "val_tokens": int(tokens[name][is_val[name]].sum()),
            "empty_docs": int((tokens[name] == 0).sum()),
            "target_share": spec.share,
            "target_tokens": targets[name],
            "realized_tokens": realized,
            "epochs": round(epochs, 6),
            "table1_epochs": spec.epochs,
            "whole_passes": math.floor(epochs),
            "docs_selected": int(((repeats > 0) | (partial > 0)).sum()),
            "docs_not_sampled": int(((repeats == 0) & (partial == 0) & (trainable[name] > 0)).sum()),
            "cut_document": (
                {"id": doc_ids[name][cut[0]], "tokens": int(tokens[name][cut[0]]), "taken": int(partial[cut[0]])}
                if len(cut)
                else None
            ),
        }
    realized_total = sum(s["realized_tokens"] for s in per_source.values())
    for stats in per_source.values():
        stats["realized_share"] = round(stats["realized_tokens"] / realized_total, 8)

    # Pass 2: stream each part once more, writing kept and rejected documents with their plan.
    extra_types = {TOKENS_COLUMN: pa.int64(), REPEATS_COLUMN: pa.int64(), PARTIAL_COLUMN: pa.int64(), SPLIT_COLUMN: pa.string()}
    with folder:
        index = 0
        for name in config.sources:
            repeats, partial = plans[name]
            row = 0
            for part in parts[name]:
                types = annotation_types_of(pq.read_schema(part)) | extra_types
                with folder.part(index, types) as writer:
                    for doc in read_documents(part):
                        if doc.source != name:
                            raise StageError(f"{part}: document {doc.id} has source {doc.source!r}, expected {name!r}")
                        if doc.id != doc_ids[name][row]:
                            raise StageError(f"{part}: changed while the mixture read it (row {row})")
                        doc.columns |= {
                            TOKENS_COLUMN: int(tokens[name][row]),
                            REPEATS_COLUMN: int(repeats[row]),
                            PARTIAL_COLUMN: int(partial[row]),
                            SPLIT_COLUMN: "val" if is_val[name][row] else "train",
                        }
                        if tokens[name][row] == 0:
                            doc.reject(EMPTY_DOCUMENT)
                        elif not is_val[name][row] and repeats[row] == 0 and partial[row] == 0:
                            doc.reject(NOT_SAMPLED)
                        writer.write(doc)
                        row += 1
                index += 1
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
        for column in (TOKENS_COLUMN, REPEATS_COLUMN, PARTIAL_COLUMN, SPLIT_COLUMN):
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
