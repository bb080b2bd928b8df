"""Token shards: the mixture, tokenized, repeated and shuffled, in the flat files the trainer reads.

On-disk format (model/train.py depends on it exactly; bump FORMAT_VERSION on any change):

    <output>/
      manifest.json            written last (pipeline.documents.StageFolder, kind "token_shards")
      train/shard-00000.bin    flat little-endian uint16 token ids (vocab <= 65536, checked);
                               each document is BOS, its tokens, EOS; documents concatenated
      train/shard-00000.idx    little-endian int64 start offset of each document in the .bin,
                               docs + 1 entries (the last one = tokens in the shard)
      val/shard-00000.bin/.idx the same format, for the held-out documents
      ...                      more shards of each split, numbered from 00000

A shard is closed once it holds `shard_tokens` tokens (documents are never split across shards).
An empty split writes no shard. `manifest.json` stats hold format/version/dtype, vocab_size,
bos_id, eos_id, tokenizer_sha256, the shard list {split, path, idx_path, tokens, docs, sha256},
tokens per source, target and realized shares and realized epochs.

Training stream: a mixture document with `repeats` r appears r times. The (document, repeat) list
is shuffled with one seeded permutation, so sources and the copies of one document interleave.
For the skeleton that list and the per-document offsets live in memory (8 bytes per entry), and the
tokens of the unique documents in a scratch file; issue 5 may replace it with a streaming shuffle.
Validation: a deterministic `val_fraction` of the unique documents (chosen by a hash of seed and
id), each written once - repeating a held-out document adds nothing to a loss estimate.

Token counts include the BOS and EOS of every document (they are trained on). `epochs` per source =
tokens emitted / tokens of all the source's unique documents (including those the mixture did not
sample, which are tokenized only to be counted).
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator

from pipeline.documents import (
    Document,
    StageError,
    StageFolder,
    is_complete,
    kept_parts,
    read_documents,
    read_manifest,
    rejected_parts,
    sha256_file,
)
from pipeline.mixture import REPEATS_COLUMN
from pipeline.documents import code_version_of
from pipeline.tokenizer import load_tokenizer, tokenizer_model_path

STAGE_NAME = "token_shards"
FORMAT = "llama-recipe-tokens"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<i8")
SPLITS = ("train", "val")
EMPTY_DOCUMENT = "empty_document"
ENCODE_BATCH = 256
CODE_VERSION = code_version_of(__file__)


class TokenShardsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_tokens: int = 100_000_000  # ~200 MB of uint16 per shard
    # Held-out documents for validation loss (the paper reports none; a small slice is customary,
    # e.g. nanoGPT keeps 0.05% of OpenWebText). At least one document when the fraction is > 0.
    val_fraction: float = 0.0005
    seed: int = 0
    num_workers: int = 1  # threads SentencePiece encodes a batch with

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {value}")
        return value

    @field_validator("shard_tokens", "num_workers")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value


def _unit_interval(seed: int, doc_id: str) -> float:
    digest = hashlib.blake2b(f"val\x00{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _batched(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    """Writes one split's documents into .bin/.idx shards of about `shard_tokens` tokens."""

    def __init__(self, root: Path, split: str, shard_tokens: int):
        self.root, self.split, self.shard_tokens = root, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._bin = None
        self._offsets: list[int] = []

    def write(self, tokens: np.ndarray) -> None:
        if self._bin is None:
            self._open()
        self._bin.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
        self._offsets.append(self._offsets[-1] + len(tokens))
        if self._offsets[-1] >= self.shard_tokens:
            self._close()

    def _open(self) -> None:
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self._name = f"{self.split}/shard-{len(self.shards):05d}"
        self._bin = open(self.root / f"{self._name}.bin", "wb")
        self._offsets = [0]

    def _close(self) -> None:
        self._bin.close()
        self._bin = None
        np.asarray(self._offsets, dtype=OFFSET_DTYPE).tofile(self.root / f"{self._name}.idx")
        self.shards.append(
            {
                "split": self.split,
                "path": f"{self._name}.bin",
                "idx_path": f"{self._name}.idx",
                "tokens": self._offsets[-1],
                "docs": len(self._offsets) - 1,
                "sha256": sha256_file(self.root / f"{self._name}.bin"),
                "idx_sha256": sha256_file(self.root / f"{self._name}.idx"),
            }
        )

    def finish(self) -> list[dict[str, Any]]:
        if self._bin is not None:
            self._close()
        return self.shards


def write_token_shards(
    mixture_dir: Path,
    tokenizer_model: Path,
    output: Path,
    config: TokenShardsConfig | None = None,
    mixture_manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenize the mixture and write train/val token shards at `output`. Returns the manifest.
    `tokenizer_model` is a tokenizer stage folder or a tokenizer.model file."""
    config = config or TokenShardsConfig()
    mixture_dir, output = Path(mixture_dir), Path(output)
    if not is_complete(mixture_dir):
        raise StageError(f"{mixture_dir}: incomplete mixture stage folder (no manifest.json)")
    mixture_manifest = mixture_manifest or read_manifest(mixture_dir)
    model_path = tokenizer_model_path(tokenizer_model)
    sp = load_tokenizer(model_path)
    vocab_size = sp.get_piece_size()
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise StageError(f"{model_path}: vocab size {vocab_size} does not fit the uint16 token format")
    bos, eos = sp.bos_id(), sp.eos_id()
    if bos < 0 or eos < 0:
        raise StageError(f"{model_path}: the tokenizer has no BOS/EOS piece (bos_id {bos}, eos_id {eos})")
    output.parent.mkdir(parents=True, exist_ok=True)

    def encode(batch: list[Document]) -> list[list[int]]:
        return sp.encode([d.text for d in batch], num_threads=config.num_workers)

    with StageFolder(
        output,
        STAGE_NAME,
        config.model_dump(mode="json"),
        inputs=[mixture_dir / "manifest.json", model_path],
        code_version=CODE_VERSION,
        kind="token_shards",
    ) as folder:
        scratch = folder.tmp / "scratch"
        scratch.mkdir()
        # Pass 1: tokenize each unique kept document once (BOS + tokens + EOS) into a scratch file.
        doc_offsets = [0]
        doc_source: list[str] = []
        doc_repeats: list[int] = []
        doc_is_val: list[bool] = []
        doc_val_key: list[float] = []
        unique_tokens: Counter[str] = Counter()
        empty_ids: list[str] = []
        parts = kept_parts(mixture_dir)
        for part in parts:
            if REPEATS_COLUMN not in pq.read_schema(part).names:
                raise StageError(f"{part}: no '{REPEATS_COLUMN}' column; is {mixture_dir} a mixture stage folder?")
        with open(scratch / "unique.bin", "wb") as unique:
            for part in parts:
                for batch in _batched(read_documents(part), ENCODE_BATCH):
                    for doc, ids in zip(batch, encode(batch)):
                        if not ids:
                            folder.count(doc.reject(EMPTY_DOCUMENT))
                            if len(empty_ids) < 100:
                                empty_ids.append(doc.id)
                            continue
                        folder.count(doc)
                        tokens = np.asarray([bos, *ids, eos], dtype=TOKEN_DTYPE)
                        unique.write(tokens.tobytes())
                        doc_offsets.append(doc_offsets[-1] + len(tokens))
                        doc_source.append(doc.source)
                        doc_repeats.append(int(doc.columns[REPEATS_COLUMN]))
                        key = _unit_interval(config.seed, doc.id)
                        doc_val_key.append(key)
                        doc_is_val.append(key < config.val_fraction)
                        unique_tokens[doc.source] += len(tokens)
        # Documents the mixture did not sample still count toward what each source had available.
        for part in rejected_parts(mixture_dir):
            for batch in _batched(read_documents(part, columns=["id", "text", "source"]), ENCODE_BATCH):
                for doc, ids in zip(batch, encode(batch)):
                    if ids:
                        unique_tokens[doc.source] += len(ids) + 2

        n_docs = len(doc_source)
        if n_docs == 0:
            raise StageError(f"{mixture_dir}: no document produced any token")
        is_val = np.asarray(doc_is_val, dtype=bool)
        if config.val_fraction > 0 and not is_val.any() and n_docs >= 2:
            is_val[int(np.argmin(doc_val_key))] = True  # a tiny corpus still gets a validation set
        offsets = np.asarray(doc_offsets, dtype=np.int64)
        repeats = np.asarray(doc_repeats, dtype=np.int64)
        rng = np.random.default_rng(config.seed)
        train_docs = np.flatnonzero(~is_val)
        train_order = rng.permutation(np.repeat(train_docs, repeats[train_docs]))
        val_order = rng.permutation(np.flatnonzero(is_val))

        # Pass 2: copy documents from the scratch file into the shards, in shuffled order.
        unique_tokens_file = np.memmap(scratch / "unique.bin", dtype=TOKEN_DTYPE, mode="r")
        emitted: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
        shards: list[dict[str, Any]] = []
        for split, order in (("train", train_order), ("val", val_order)):
            writer = _ShardWriter(folder.tmp, split, config.shard_tokens)
            for doc in order:
                tokens = unique_tokens_file[offsets[doc] : offsets[doc + 1]]
                writer.write(tokens)
                emitted[split][doc_source[doc]] += len(tokens)
            shards += writer.finish()
        del unique_tokens_file
        shutil.rmtree(scratch)

        tokens_per_source = emitted["train"] + emitted["val"]
        total = sum(tokens_per_source.values())
        mixture_sources = mixture_manifest.get("stats", {}).get("sources", {})
        sources = sorted(set(unique_tokens) | set(mixture_sources))
        folder.stats.update(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "dtype": "uint16",
                "byte_order": "little",
                "vocab_size": vocab_size,
                "bos_id": bos,
                "eos_id": eos,
                "tokenizer_sha256": sha256_file(model_path),
                "shards": shards,
                "total_tokens": total,
                "split_tokens": {split: sum(emitted[split].values()) for split in SPLITS},
                "split_docs": {"train": int(len(train_order)), "val": int(len(val_order))},
                "unique_docs": {"train": int(len(train_docs)), "val": int(is_val.sum())},
                "tokens_per_source": {s: tokens_per_source[s] for s in sources},
                "train_tokens_per_source": {s: emitted["train"][s] for s in sources},
                "unique_tokens_per_source": {s: unique_tokens[s] for s in sources},
                "target_share": {s: mixture_sources.get(s, {}).get("target_share", 0.0) for s in sources},
                "realized_share": {s: round(tokens_per_source[s] / total, 6) for s in sources},
                "epochs": {
                    s: round(tokens_per_source[s] / unique_tokens[s], 6) if unique_tokens[s] else 0.0 for s in sources
                },
                "empty_document_ids": empty_ids,
            }
        )
    return read_manifest(output)


# ---------------------------------------------------------------------------------------------
# Reader (used by model/train.py; numpy only)


class TokenView:
    """The tokens of several shard memmaps seen as one sequence; slicing copies only the slice."""

    def __init__(self, shards: list[np.memmap]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenView supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop and shard < len(self.shards):
            local_start = start - self.starts[shard]
            local_stop = min(stop, self.starts[shard + 1]) - self.starts[shard]
            pieces.append(np.asarray(self.shards[shard][local_start:local_stop]))
            start = int(self.starts[shard] + local_stop)
            shard += 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=TOKEN_DTYPE)


class TokenShards:
    """Read one split of a token_shards folder: `tokens` (all shards as one view), document
    offsets, and `sample_batch` for next-token training windows."""

    def __init__(self, path: Path | str, split: str = "train"):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        stats = manifest.get("stats", {})
        if stats.get("format") != FORMAT or stats.get("version") != FORMAT_VERSION:
            raise StageError(
                f"{self.path}: not a {FORMAT} v{FORMAT_VERSION} folder "
                f"(format {stats.get('format')!r}, version {stats.get('version')!r})"
            )
        self.split = split
        self.vocab_size: int = stats["vocab_size"]
        self.bos_id: int = stats["bos_id"]
        self.eos_id: int = stats["eos_id"]
        self.manifest = manifest
        entries = [s for s in stats["shards"] if s["split"] == split]
        if not entries:
            raise StageError(f"{self.path}: no {split!r} tokens (splits present: {sorted({s['split'] for s in stats['shards']})})")
        self.shard_entries = entries
        self.shards = [np.memmap(self.path / e["path"], dtype=TOKEN_DTYPE, mode="r") for e in entries]
        for entry, shard in zip(entries, self.shards):
            if len(shard) != entry["tokens"]:
                raise StageError(f"{self.path / entry['path']}: {len(shard)} tokens, manifest says {entry['tokens']}")
        self.tokens = TokenView(self.shards)
        self.num_tokens = len(self.tokens)

    def document_offsets(self) -> np.ndarray:
        """Start offsets of every document in `tokens` (docs + 1 entries, last = num_tokens)."""
        offsets, base = [np.zeros(1, dtype=np.int64)], 0
        for entry in self.shard_entries:
            idx = np.fromfile(self.path / entry["idx_path"], dtype=OFFSET_DTYPE)
            offsets.append(idx[1:] + base)
            base += int(idx[-1])
        return np.concatenate(offsets)

    def rank_range(self, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
        """The token range rank `rank` of `world_size` samples from: disjoint across ranks."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return rank * self.num_tokens // world_size, (rank + 1) * self.num_tokens // world_size

    def sample_batch(
        self,
        batch_size: int,
        seq_len: int,
        rng: np.random.Generator | int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` random contiguous windows of `seq_len + 1` tokens from this rank's range:
        x = window[:-1], y = window[1:], both int64 of shape (batch_size, seq_len)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        low, high = self.rank_range(rank, world_size)
        if high - low < seq_len + 1:
            raise ValueError(
                f"rank {rank}/{world_size} owns {high - low} {self.split} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )
        starts = rng.integers(low, high - seq_len, size=batch_size)  # last window ends at `high`
        windows = np.stack([self.tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        return windows[:, :-1], windows[:, 1:]

