"""Token shards: the mixture, tokenized, repeated and shuffled, in the flat files the trainer reads.

On-disk format (model/data.py depends on it exactly; bump FORMAT_VERSION on any change):

    <output>/
      manifest.json            written last (pipeline.documents.StageFolder, kind "token_shards")
      train/shard-00000.bin    flat little-endian uint16 token ids (vocab <= 65536, checked);
                               each document copy is BOS, its tokens, EOS; copies concatenated
      train/shard-00000.idx    little-endian int64 start offset of each copy in the .bin,
                               copies + 1 entries (the last one = tokens in the shard)
      val/shard-00000.bin/.idx the same format, for the held-out documents
      ...                      more shards of each split, numbered from 00000

A shard is closed once it holds `shard_tokens` tokens (a copy is never split across shards). An
empty split writes no shard. The only copy that does not end with EOS is a source's cut copy (the
mixture's `partial_tokens`: a document's first tokens, BOS included, that complete the source's
exact token target); at most one per source.

Training stream: the mixture plans, per document, `repeats` whole copies and at most one cut copy
(pipeline/mixture.py). The list of all copies is shuffled with one permutation seeded by `seed`,
so sources and the copies of one document interleave across the stream; val documents are written
once, in their own shuffled order. Packing into training sequences is done by the reader
(model/data.py TokenStream): sequence i of context length L is tokens[i*L : i*L + L + 1] of the
concatenated split, the BOS/EOS ids marking where documents meet inside a sequence (LLaMA and
GPT-3 pack without masking across documents). The same shards thus serve any context length.

Tokenization runs in SentencePiece's C++ thread pool (`num_workers` threads on batches of rows),
each unique document once, into a scratch file; the shuffled copies are then copied out of it.
Tokens per source and their shares are counted over the train split, the stream the mixture
planned: they equal the mixture's targets to the token, which the manifest reports side by side.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator

from pipeline.documents import StageError, StageFolder, code_version_of, read_manifest, sha256_file
from pipeline.mixture import PARTIAL_COLUMN, REPEATS_COLUMN, SPLIT_COLUMN, TOKENS_COLUMN, read_plan_columns
from pipeline.tokenizer import load_tokenizer, tokenizer_model_path

STAGE_NAME = "token_shards"
FORMAT = "llama-recipe-tokens"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<i8")
SPLITS = ("train", "val")
ENCODE_BATCH = 1024  # rows per SentencePiece batch: enough work for its thread pool
CODE_VERSION = code_version_of(__file__)


class TokenShardsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_tokens: int = 100_000_000  # ~200 MB of uint16 per shard
    seed: int = 0
    num_workers: int = 2  # SentencePiece threads per encode batch

    @field_validator("shard_tokens", "num_workers")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value


def pack_documents(ids: list[list[int]], bos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids as one uint16 array, each as BOS ids EOS, and each one's length."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 2
    ends = np.cumsum(lengths)
    starts = ends - lengths
    packed = np.empty(int(ends[-1]) if len(ends) else 0, dtype=TOKEN_DTYPE)
    body = np.ones(len(packed), dtype=bool)
    body[starts] = body[ends - 1] = False
    packed[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=TOKEN_DTYPE, count=len(packed) - 2 * len(ids))
    packed[starts], packed[ends - 1] = bos, eos
    return packed, lengths


class _ShardWriter:
    """Writes one split's copies into .bin/.idx shards of about `shard_tokens` tokens."""

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
    reuse: bool = True,
) -> dict[str, Any]:
    """Tokenize the mixture and write train/val token shards at `output`. Returns the manifest.
    With `reuse`, shards already written from the same mixture, tokenizer and config are kept.
    `tokenizer_model` is a tokenizer stage folder or a tokenizer.model file; it must be the one
    the mixture counted tokens with."""
    config = config or TokenShardsConfig()
    mixture_dir, output = Path(mixture_dir), Path(output)
    parts = read_plan_columns(mixture_dir)
    mixture_stats = read_manifest(mixture_dir)["stats"]
    model_path = tokenizer_model_path(tokenizer_model)
    model_sha = sha256_file(model_path)
    if mixture_stats.get("tokenizer_sha256") != model_sha:
        raise StageError(f"{mixture_dir}: the mixture counted tokens with another tokenizer than {model_path}")
    sp = load_tokenizer(model_path)
    vocab_size = sp.get_piece_size()
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise StageError(f"{model_path}: vocab size {vocab_size} does not fit the uint16 token format")
    bos, eos = sp.bos_id(), sp.eos_id()
    if bos < 0 or eos < 0:
        raise StageError(f"{model_path}: the tokenizer has no BOS/EOS piece (bos_id {bos}, eos_id {eos})")
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = StageFolder(
        output,
        STAGE_NAME,
        config.model_dump(mode="json"),
        inputs=[mixture_dir / "manifest.json", model_path],
        code_version=CODE_VERSION,
        kind="token_shards",
    )
    if reuse and (manifest := folder.current()):
        return manifest
    with folder:
        scratch = folder.tmp / "scratch"
        scratch.mkdir()
        # Pass 1: tokenize each unique document once (BOS + ids + EOS) into a scratch file.
        lengths, repeats, partial, source_of, is_val = [], [], [], [], []
        sources: list[str] = []
        columns = ["id", "text", "source", TOKENS_COLUMN, REPEATS_COLUMN, PARTIAL_COLUMN, SPLIT_COLUMN]
        with open(scratch / "unique.bin", "wb") as unique:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=ENCODE_BATCH, columns=columns):
                    texts = batch.column("text").to_pylist()
                    packed, doc_lengths = pack_documents(sp.encode(texts, num_threads=config.num_workers), bos, eos)
                    planned = batch.column(TOKENS_COLUMN).to_numpy()
                    if not np.array_equal(doc_lengths, planned):
                        row = int(np.flatnonzero(doc_lengths != planned)[0])
                        raise StageError(
                            f"{part}: document {batch.column('id')[row]} has {doc_lengths[row]} tokens, "
                            f"the mixture counted {planned[row]}"
                        )
                    unique.write(packed.tobytes())
                    lengths.append(doc_lengths)
                    repeats.append(batch.column(REPEATS_COLUMN).to_numpy())
                    partial.append(batch.column(PARTIAL_COLUMN).to_numpy())
                    is_val.append(pc.equal(batch.column(SPLIT_COLUMN), "val").to_numpy(zero_copy_only=False))
                    names = batch.column("source").to_pylist()
                    for name in set(names) - set(sources):
                        sources.append(name)
                    source_of.append(np.asarray([sources.index(n) for n in names], dtype=np.int16))
                    text_bytes = int(pc.sum(pc.binary_length(pc.cast(batch.column("text"), pa.binary()))).as_py() or 0)
                    folder.counts.docs_in += len(texts)
                    folder.counts.docs_kept += len(texts)
                    folder.counts.bytes_out += text_bytes
                    folder.counts.bytes_kept += text_bytes
        if not lengths:
            raise StageError(f"{mixture_dir}: the mixture has no documents to tokenize")
        lengths_all = np.concatenate(lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths_all)])
        repeats_all, partial_all = np.concatenate(repeats), np.concatenate(partial)
        source_all, val_all = np.concatenate(source_of), np.concatenate(is_val)

        # The copies: (document, tokens taken). Whole copies take the document's length.
        rng = np.random.default_rng(config.seed)
        train_rows = np.flatnonzero(~val_all)
        whole_docs = np.repeat(train_rows, repeats_all[train_rows])
        cut_docs = train_rows[partial_all[train_rows] > 0]
        train_docs = np.concatenate([whole_docs, cut_docs])
        train_take = np.concatenate([lengths_all[whole_docs], partial_all[cut_docs]])
        order = rng.permutation(len(train_docs))
        val_docs = rng.permutation(np.flatnonzero(val_all))
        copies = {
            "train": (train_docs[order], train_take[order]),
            "val": (val_docs, lengths_all[val_docs]),
        }

        # Pass 2: copy documents from the scratch file into the shards, in shuffled order.
        unique_tokens = np.memmap(scratch / "unique.bin", dtype=TOKEN_DTYPE, mode="r")
        shards: list[dict[str, Any]] = []
        emitted = {split: np.zeros(len(sources), dtype=np.int64) for split in SPLITS}
        for split, (docs, take) in copies.items():
            writer = _ShardWriter(folder.tmp, split, config.shard_tokens)
            for doc, count in zip(docs.tolist(), take.tolist()):
                writer.write(unique_tokens[offsets[doc] : offsets[doc] + count])
            np.add.at(emitted[split], source_all[docs], take)
            shards += writer.finish()
        del unique_tokens
        shutil.rmtree(scratch)

        planned = mixture_stats.get("sources", {})
        # Ties in share (Table 1: github, wikipedia, books at 4.5%) by name: a set's order changes
        # with PYTHONHASHSEED, and the manifest must be the same bytes on every run.
        names = sorted(set(sources) | set(planned), key=lambda s: (-planned.get(s, {}).get("target_share", 0), s))
        train_tokens = {s: int(emitted["train"][sources.index(s)]) if s in sources else 0 for s in names}
        val_tokens = {s: int(emitted["val"][sources.index(s)]) if s in sources else 0 for s in names}
        total_train = sum(train_tokens.values())
        target_tokens = {s: planned.get(s, {}).get("target_tokens", 0) for s in names}
        available = {s: planned.get(s, {}).get("available_tokens", 0) for s in names}
        folder.stats.update(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "dtype": "uint16",
                "byte_order": "little",
                "vocab_size": vocab_size,
                "bos_id": bos,
                "eos_id": eos,
                "tokenizer_sha256": model_sha,
                "shards": shards,
                "total_tokens": total_train + sum(val_tokens.values()),
                "split_tokens": {"train": total_train, "val": sum(val_tokens.values())},
                "split_docs": {split: int(len(docs)) for split, (docs, _) in copies.items()},
                "unique_docs": {"train": int(len(train_rows)), "val": int(val_all.sum())},
                "cut_copies": int(len(cut_docs)),
                # Per source, over the train split (the stream the mixture planned).
                "tokens_per_source": train_tokens,
                "target_tokens": target_tokens,
                "target_share": {s: planned.get(s, {}).get("target_share", 0.0) for s in names},
                "realized_share": {s: round(n / total_train, 8) if total_train else 0.0 for s, n in train_tokens.items()},
                "epochs": {s: round(train_tokens[s] / available[s], 6) if available[s] else 0.0 for s in names},
                "table1_epochs": {s: planned.get(s, {}).get("table1_epochs") for s in names},
                "val_tokens_per_source": val_tokens,
                "mixture_warnings": mixture_stats.get("warnings", []),
            }
        )
    return read_manifest(output)


# ---------------------------------------------------------------------------------------------
# Reader (numpy only; the trainer's reader with its resumable position is model/data.py)


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

