"""The pretraining mixture: how many tokens each source contributes, and which documents repeat.

LLaMA (Touvron et al. 2023, arXiv 2302.13971, Table 1) fixes for each source a sampling proportion
and the number of epochs its data is seen over 1.4T training tokens: Wikipedia and Books about
2.4 and 2.2 epochs, most others about one, GitHub 0.64 (part of it is never seen).

`sample_mixture` reads each source's final stage folder and writes one stage folder (the same
contract as every stage, pipeline.documents.StageFolder):
  - kept:     every document selected at least once, with the annotation column `repeats` (int64):
              how many times it enters the token stream (floor(epochs) whole passes, plus one more
              for the first documents of a seeded permutation until the fractional pass is filled);
  - rejected: documents never selected, reason "not_sampled" (only when a source's epochs < 1).

Tokens are ESTIMATED here from UTF-8 bytes (`bytes_per_token`): the tokenizer is trained after the
mixture, on a sample of it, so real token counts do not exist yet. The token shards manifest
reports the real realized tokens and shares.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.documents import (
    SOURCES,
    StageError,
    StageFolder,
    annotation_types_of,
    is_complete,
    kept_parts,
    read_documents,
    read_manifest,
)
from pipeline.documents import code_version_of

log = logging.getLogger(__name__)

STAGE_NAME = "mixture"
REPEATS_COLUMN = "repeats"
NOT_SAMPLED = "not_sampled"
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
    # Token estimate before a tokenizer exists: ~4 UTF-8 bytes per token for English BPE
    # (LLaMA's 32k SentencePiece gives 3.5-4.5 on web text). Issue 5 makes targets exact.
    bytes_per_token: float = 4.0
    seed: int = 0

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

    @model_validator(mode="after")
    def _positive_numbers(self) -> "MixtureConfig":
        if self.max_epochs <= 0 or self.bytes_per_token <= 0:
            raise ValueError("max_epochs and bytes_per_token must be > 0")
        return self


# ---------------------------------------------------------------------------------------------


def _text_bytes(part: Path) -> np.ndarray:
    """UTF-8 byte length of every document of one Parquet part, in row order."""
    try:
        table = pq.read_table(part, columns=["text"])
    except Exception as exc:
        raise StageError(f"{part}: not a readable Parquet file ({exc})") from exc
    return pc.binary_length(pc.cast(table.column("text"), pa.binary())).to_numpy(zero_copy_only=False).astype(np.int64)


def source_rng(seed: int, source: str) -> np.random.Generator:
    """One generator per (seed, source), stable across runs (no Python hash randomisation)."""
    return np.random.default_rng([seed, SOURCES.index(source)])


def fractional_selection(sizes: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask: the first documents of a seeded permutation whose sizes add up to `target`.
    The last document is taken only if that brings the sum closer to the target."""
    chosen = np.zeros(len(sizes), dtype=bool)
    if target <= 0:
        return chosen
    order = rng.permutation(len(sizes))
    cumulative = np.cumsum(sizes[order])
    count = int(np.searchsorted(cumulative, target, side="left"))  # first index with cum >= target
    if count < len(order):
        below = cumulative[count - 1] if count > 0 else 0
        if cumulative[count] - target <= target - below:
            count += 1
    chosen[order[:count]] = True
    return chosen


def plan_repeats(sizes: np.ndarray, epochs: float, rng: np.random.Generator) -> np.ndarray:
    """repeats per document: floor(epochs) whole passes plus a seeded fractional pass."""
    whole = math.floor(epochs)
    repeats = np.full(len(sizes), whole, dtype=np.int64)
    fraction_target = (epochs - whole) * float(sizes.sum())
    repeats += fractional_selection(sizes, fraction_target, rng)
    return repeats


def resolve_total_tokens(config: MixtureConfig, available: dict[str, float]) -> int:
    if config.total_tokens != "auto":
        return int(config.total_tokens)
    return int(min(available[s] * spec.epochs / spec.share for s, spec in config.sources.items()))


def sample_mixture(source_dirs: dict[str, Path], output: Path, config: MixtureConfig | None = None) -> dict[str, Any]:
    """Select and repeat documents of each source's final stage folder to meet the mixture; write
    the mixture stage folder at `output`. Returns its manifest."""
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

    # Pass 1: sizes of every document (estimated tokens), per source in part/row order.
    parts = {name: kept_parts(source_dirs[name]) for name in config.sources}
    sizes = {name: [_text_bytes(p) / config.bytes_per_token for p in parts[name]] for name in config.sources}
    available = {name: float(sum(s.sum() for s in sizes[name])) for name in config.sources}
    empty = [name for name, tokens in available.items() if tokens <= 0]
    if empty:
        raise StageError(f"mixture: source(s) {', '.join(empty)} have no text in their final stage folder")

    total = resolve_total_tokens(config, available)
    warnings: list[str] = []
    plans: dict[str, list[np.ndarray]] = {}
    per_source: dict[str, dict[str, Any]] = {}
    for name, spec in config.sources.items():
        target = spec.share * total
        epochs = target / available[name]
        if epochs > config.max_epochs:
            message = (
                f"{name}: needs {epochs:.2f} epochs to supply {spec.share:.3f} of {total} tokens "
                f"(max_epochs {config.max_epochs}, Table 1: {spec.epochs}); add data or lower its share"
            )
            log.warning("mixture: %s", message)
            warnings.append(message)
        flat = np.concatenate(sizes[name]) if sizes[name] else np.zeros(0)
        repeats = plan_repeats(flat, epochs, source_rng(config.seed, name))
        bounds = np.cumsum([0] + [len(s) for s in sizes[name]])
        plans[name] = [repeats[bounds[i] : bounds[i + 1]] for i in range(len(sizes[name]))]
        per_source[name] = {
            "available_docs": int(len(flat)),
            "available_tokens_est": round(available[name]),
            "target_tokens": round(target),
            "target_share": spec.share,
            "epochs": round(epochs, 6),
            "table1_epochs": spec.epochs,
            "docs_selected": int((repeats > 0).sum()),
            "docs_not_sampled": int((repeats == 0).sum()),
            "realized_tokens_est": round(float((flat * repeats).sum())),
        }
    realized_total = sum(s["realized_tokens_est"] for s in per_source.values())
    for stats in per_source.values():
        stats["realized_share_est"] = round(stats["realized_tokens_est"] / realized_total, 6) if realized_total else 0.0

    # Pass 2: stream each part once more, writing kept (with repeats) and rejected documents.
    inputs = [source_dirs[name] / "manifest.json" for name in config.sources]
    with StageFolder(output, STAGE_NAME, config.model_dump(mode="json"), inputs=inputs, code_version=CODE_VERSION) as folder:
        index = 0
        for name in config.sources:
            for part, repeats in zip(parts[name], plans[name]):
                types = annotation_types_of(pq.read_schema(part)) | {REPEATS_COLUMN: pa.int64()}
                with folder.part(index, types) as writer:
                    for row, doc in enumerate(read_documents(part)):
                        if doc.source != name:
                            raise StageError(f"{part}: document {doc.id} has source {doc.source!r}, expected {name!r}")
                        doc.columns[REPEATS_COLUMN] = int(repeats[row])
                        if repeats[row] == 0:
                            doc.reject(NOT_SAMPLED)
                        writer.write(doc)
                index += 1
        folder.stats.update(
            {
                "total_tokens": total,
                "total_tokens_mode": "auto" if config.total_tokens == "auto" else "fixed",
                "token_estimate": f"utf8_bytes / {config.bytes_per_token}",
                "realized_tokens_est": realized_total,
                "sources": per_source,
                "warnings": warnings,
            }
        )
    return read_manifest(output)
