"""Reads the token shards written by pipeline/token_shards.py and cuts training windows from them.

    <tokens dir>/manifest.json          StageFolder manifest; its "stats" describe the shards:
                                        format "llama-recipe-tokens", version 1, dtype "uint16",
                                        vocab_size, bos_id, eos_id, shards: [{split, path, idx_path, tokens, docs, sha256}]
    <tokens dir>/train/shard-NNNNN.bin  flat little-endian uint16 ids: BOS doc EOS BOS doc EOS ...
    <tokens dir>/train/shard-NNNNN.idx  little-endian int64 document start offsets (docs + 1 of them)
    <tokens dir>/val/...                the same for held-out documents

Shards are memory-mapped, never loaded. Training windows are contiguous runs of seq_len + 1 tokens
that may span document boundaries: LLaMA packs documents into 2048-token sequences without masking
across them (as GPT-3 and most pretraining runs do), the BOS/EOS ids marking the seams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "llama-recipe-tokens"
VERSION = 1
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
    def __init__(self, tokens_dir: Path | str):
        self.dir = Path(tokens_dir)
        manifest_path = self.dir / "manifest.json"
        if not self.dir.is_dir():
            raise TokenDataError(f"{self.dir}: tokens folder does not exist")
        if not manifest_path.is_file():
            raise TokenDataError(f"{manifest_path}: missing; the token_shards stage did not finish here")
        try:
            stats = json.loads(manifest_path.read_text())["stats"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TokenDataError(f"{manifest_path}: not a stage manifest with a 'stats' object ({exc})") from exc
        if stats.get("format") != FORMAT or stats.get("version") != VERSION:
            raise TokenDataError(
                f"{manifest_path}: format {stats.get('format')!r} version {stats.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION}"
            )
        if stats.get("dtype") != "uint16":
            raise TokenDataError(f"{manifest_path}: dtype {stats.get('dtype')!r}, only 'uint16' is supported")
        self.vocab_size: int = int(stats["vocab_size"])
        self.bos_id: int = int(stats.get("bos_id", 1))
        self.eos_id: int = int(stats.get("eos_id", 2))
        self.splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for shard in stats.get("shards", []):
            path = self.dir / shard["path"]
            if not path.is_file():
                raise TokenDataError(f"{path}: shard listed in the manifest is missing")
            size = path.stat().st_size
            if size != 2 * int(shard["tokens"]):
                raise TokenDataError(f"{path}: {size} bytes, manifest says {shard['tokens']} uint16 tokens")
            tokens = np.memmap(path, dtype=DTYPE, mode="r") if size else np.zeros(0, dtype=DTYPE)
            self.splits.setdefault(shard["split"], []).append(tokens)
        if self.num_tokens("train") == 0:
            raise TokenDataError(f"{manifest_path}: no train tokens")

    def num_tokens(self, split: str) -> int:
        return sum(len(t) for t in self.splits.get(split, []))

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


class RandomWindows:
    """Random contiguous windows of seq_len + 1 tokens from one rank's slice, from a generator seeded by
    (seed, rank): reproducible, and different on every rank."""

    def __init__(self, segments: list[Segment], seq_len: int, seed: int, rank: int):
        self.seq_len = seq_len
        self.segments = [s for s in segments if len(s) > seq_len]
        if not self.segments:
            longest = max((len(s) for s in segments), default=0)
            raise TokenDataError(
                f"rank {rank}: no run of {seq_len + 1} tokens in its share of the data (longest {longest}); "
                "use a shorter --seq-len, fewer processes, or more data"
            )
        starts = np.array([len(s) - seq_len for s in self.segments], dtype=np.float64)
        self.weights = starts / starts.sum()  # every window start equally likely
        self.rng = np.random.default_rng([seed, rank])

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        which = self.rng.choice(len(self.segments), size=batch_size, p=self.weights)
        for row, index in enumerate(which):
            seg = self.segments[index]
            start = seg.start + int(self.rng.integers(0, len(seg) - self.seq_len))
            rows[row] = seg.tokens[start : start + self.seq_len + 1]
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]


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
