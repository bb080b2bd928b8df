"""Reads the token shards written by pipeline/token_shards.py and cuts training windows from them.

    <tokens dir>/manifest.json          StageFolder manifest; its "stats" describe the shards:
                                        format "llama-recipe-tokens", version 1 or 2, dtype "uint16",
                                        vocab_size, bos_id, eos_id, shards: [{split, path, idx_path, tokens, docs, sha256}]
    <tokens dir>/train/shard-NNNNN.bin  flat little-endian uint16 ids: BOS doc EOS BOS doc EOS ...
    <tokens dir>/train/shard-NNNNN.idx  little-endian int64 document start offsets (docs + 1 of them)
    <tokens dir>/val/...                the same for held-out documents, plus (version 2) shard-NNNNN.src:
                                        uint8 per document, its source (an index into stats["sources"])

Shards are memory-mapped, never loaded. Training sequences are contiguous runs of seq_len + 1 tokens
that may span document boundaries: LLaMA packs documents into 2048-token sequences without masking
across them (as GPT-3 and most pretraining runs do), the BOS/EOS ids marking the seams.
`TokenStream` reads them in order with a position that a checkpoint can save and restore.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "llama-recipe-tokens"
VERSIONS = (1, 2)  # 2 adds the val documents' sources
DTYPE = np.dtype("<u2")


class TokenDataError(ValueError):
    """The tokens folder is missing, incomplete, or not in the format this reader knows."""


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens of one shard: tokens[start:end]."""

    tokens: np.ndarray
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class TokenShards:
    def __init__(self, tokens_dir: Path | str, require_train: bool = True):
        self.dir = Path(tokens_dir)
        manifest_path = self.dir / "manifest.json"
        if not self.dir.is_dir():
            raise TokenDataError(f"{self.dir}: tokens folder does not exist")
        if not manifest_path.is_file():
            raise TokenDataError(f"{manifest_path}: missing; the token_shards stage did not finish here")
        try:
            manifest_bytes = manifest_path.read_bytes()
            stats = json.loads(manifest_bytes)["stats"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TokenDataError(f"{manifest_path}: not a stage manifest with a 'stats' object ({exc})") from exc
        if stats.get("format") != FORMAT or stats.get("version") not in VERSIONS:
            raise TokenDataError(
                f"{manifest_path}: format {stats.get('format')!r} version {stats.get('version')!r}, "
                f"expected {FORMAT!r} version {' or '.join(map(str, VERSIONS))}"
            )
        if stats.get("dtype") != "uint16":
            raise TokenDataError(f"{manifest_path}: dtype {stats.get('dtype')!r}, only 'uint16' is supported")
        self.manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()[:16]
        self.vocab_size: int = int(stats["vocab_size"])
        self.bos_id: int = int(stats.get("bos_id", 1))
        self.eos_id: int = int(stats.get("eos_id", 2))
        self.tokenizer_sha256: str | None = stats.get("tokenizer_sha256")
        self.source_names: list[str] = list(stats.get("sources", []))
        self.splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        self._val_documents: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (tokens, offsets, sources) per val shard
        for shard in stats.get("shards", []):
            path = self.dir / shard["path"]
            if not path.is_file():
                raise TokenDataError(f"{path}: shard listed in the manifest is missing")
            size = path.stat().st_size
            if size != 2 * int(shard["tokens"]):
                raise TokenDataError(f"{path}: {size} bytes, manifest says {shard['tokens']} uint16 tokens")
            tokens = np.memmap(path, dtype=DTYPE, mode="r") if size else np.zeros(0, dtype=DTYPE)
            self.splits.setdefault(shard["split"], []).append(tokens)
            if shard["split"] == "val" and "src_path" in shard:
                offsets = np.fromfile(self.dir / shard["idx_path"], dtype="<i8")
                sources = np.fromfile(self.dir / shard["src_path"], dtype=np.uint8)
                if len(offsets) != len(sources) + 1 or int(offsets[-1]) != len(tokens):
                    raise TokenDataError(f"{self.dir / shard['src_path']}: does not match {shard['idx_path']}")
                self._val_documents.append((tokens, offsets, sources))
        if require_train and self.num_tokens("train") == 0:
            raise TokenDataError(f"{manifest_path}: no train tokens")

    def num_tokens(self, split: str) -> int:
        return sum(len(t) for t in self.splits.get(split, []))

    def val_sources(self) -> list[str]:
        """The sources that have held-out documents (version 2 folders; none for version 1)."""
        present = {int(code) for _, _, sources in self._val_documents for code in np.unique(sources)}
        return [name for code, name in enumerate(self.source_names) if code in present]

    def source_segments(self, source: str, rank: int, world_size: int) -> list[Segment]:
        """This rank's share of one source's held-out documents: that source's val documents, in
        their val order, concatenated (a small copy: val is a sliver of the corpus) and cut into
        world_size contiguous equal ranges, as rank_segments cuts a split."""
        code = self.source_names.index(source)
        pieces = [tokens[offsets[d]:offsets[d + 1]] for tokens, offsets, sources in self._val_documents
                  for d in np.flatnonzero(sources == code)]
        joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=DTYPE)
        lo, hi = len(joined) * rank // world_size, len(joined) * (rank + 1) // world_size
        return [Segment(joined, lo, hi)] if hi > lo else []

    def rank_segments(self, split: str, rank: int, world_size: int) -> list[Segment]:
        """This rank's disjoint share of a split: the concatenated shards cut into world_size
        contiguous, equal ranges (so no two ranks ever train on the same token)."""
        total = self.num_tokens(split)
        lo, hi = total * rank // world_size, total * (rank + 1) // world_size
        segments, offset = [], 0
        for tokens in self.splits.get(split, []):
            start, end = max(lo, offset), min(hi, offset + len(tokens))
            if start < end:
                segments.append(Segment(tokens, start - offset, end - offset))
            offset += len(tokens)
        return segments


STREAM_STATE_VERSION = 1


class TokenStream:
    """The training split packed into sequences and read in order, with a resumable position.

    Packing: sequence i of the split is tokens[i*L : i*L + L + 1] of all shards concatenated
    (L = seq_len; x = the first L tokens, y = the last L), so consecutive sequences share one
    token and every token but the last is a target exactly once per epoch. There are
    N = (tokens - 1) // L sequences; the tail that does not fill one is left out.

    Order: sequences are numbered globally; every micro-batch takes the next batch_size *
    world_size of them and rank r reads numbers [r * batch_size, (r + 1) * batch_size) of that
    block, so ranks read disjoint sequences. Global number g is sequence perm_e(g mod N) of
    epoch e = g // N: epoch 0 reads the shards in written order (the writer already shuffled the
    documents), each later epoch in an affine permutation i -> (a*i + b) mod N whose a, b come
    from a generator seeded by (seed, e).

    Position: `state_dict()` is the number of sequences consumed by all ranks together (plus the
    epoch, the shard and offset where the next sequence starts, the seed, and a fingerprint of
    the data) - the same on every rank, so rank 0 saves it. `load_state_dict` puts a stream at
    that position: the next batch is exactly the sequences an uninterrupted run would read next.
    World-size rule: the position is global, so a run resumed with another world size or
    per-rank batch size continues from the first sequence no rank has read; only the assignment
    of the following sequences to ranks changes. No sequence is skipped or read twice. The data
    (shards) and seq_len must be the same; load_state_dict refuses otherwise.
    """

    def __init__(self, shards: TokenShards, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 0, split: str = "train"):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.seq_len, self.rank, self.world_size, self.seed = seq_len, rank, world_size, seed
        self.pieces = shards.splits.get(split, [])
        self.starts = np.cumsum([0] + [len(t) for t in self.pieces])
        total = int(self.starts[-1])
        self.num_sequences = (total - 1) // seq_len if total > 0 else 0
        if self.num_sequences < world_size:
            raise TokenDataError(
                f"{shards.dir}: {total} {split} tokens make {self.num_sequences} sequences of {seq_len + 1} tokens, "
                f"fewer than the {world_size} process(es); use a shorter --seq-len, fewer processes, or more data"
            )
        self.fingerprint = f"{split}:{total}:{len(self.pieces)}:{shards.manifest_digest}"
        self.consumed = 0  # sequences read by all ranks together
        self._epoch_map: tuple[int, int, int] | None = None

    # -- order
    def _permutation(self, epoch: int) -> tuple[int, int]:
        """(a, b) of epoch's affine permutation; epoch 0 is the identity."""
        if epoch == 0:
            return 1, 0
        if self._epoch_map is None or self._epoch_map[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            n = self.num_sequences
            a = int(rng.integers(1, max(2, n)))
            while math.gcd(a, n) != 1:
                a = a % (n - 1) + 1 if n > 2 else 1
            self._epoch_map = (epoch, a, int(rng.integers(0, n)))
        return self._epoch_map[1], self._epoch_map[2]

    def sequence_start(self, number: int) -> int:
        """Token offset (in the concatenated split) where global sequence `number` starts."""
        epoch, i = divmod(number, self.num_sequences)
        a, b = self._permutation(epoch)
        return ((a * i + b) % self.num_sequences) * self.seq_len

    def _read(self, start: int, stop: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            local = start - int(self.starts[shard])
            end = min(stop, int(self.starts[shard + 1]))
            pieces.append(np.asarray(self.pieces[shard][local : local + end - start], dtype=np.int64))
            start, shard = end, shard + 1
        return np.concatenate(pieces)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next batch_size sequences: (x, y) int64 of shape (batch_size, seq_len)."""
        first = self.consumed + self.rank * batch_size
        rows = np.stack([self._read(s, s + self.seq_len + 1) for s in map(self.sequence_start, range(first, first + batch_size))])
        self.consumed += batch_size * self.world_size
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    # -- position
    def state_dict(self) -> dict:
        epoch = self.consumed // self.num_sequences
        start = self.sequence_start(self.consumed)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        return {
            "version": STREAM_STATE_VERSION,
            "consumed_sequences": self.consumed,
            "epoch": epoch,
            "shard": shard,
            "offset": start - int(self.starts[shard]),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "rng": {"epoch_permutation": list(self._permutation(epoch))},
            "num_sequences": self.num_sequences,
            "data": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STREAM_STATE_VERSION:
            raise TokenDataError(f"loader state version {state.get('version')!r}, expected {STREAM_STATE_VERSION}")
        for key, mine in (("seq_len", self.seq_len), ("seed", self.seed), ("data", self.fingerprint)):
            if state.get(key) != mine:
                raise TokenDataError(f"loader state was saved with {key} {state.get(key)!r}, this run has {mine!r}")
        self.consumed = int(state["consumed_sequences"])


def eval_batches(
    segments: list[Segment], seq_len: int, batch_size: int, num_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of validation batches: consecutive non-overlapping windows from the start of this
    rank's val share, cycled if there are too few. Empty if the share holds no full window."""
    windows = []
    for seg in segments:
        for start in range(seg.start, seg.end - seq_len, seq_len):
            windows.append(np.asarray(seg.tokens[start : start + seq_len + 1], dtype=np.int64))
    if not windows:
        return []
    needed = batch_size * num_batches
    rows = torch.from_numpy(np.stack([windows[i % len(windows)] for i in range(needed)]))
    return [(rows[i : i + batch_size, :-1], rows[i : i + batch_size, 1:]) for i in range(0, needed, batch_size)]
