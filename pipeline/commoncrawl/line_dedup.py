"""cc_line_dedup: cc_net's paragraph (line) deduplication (CCNet §3.1, LLaMA §2).

Every line is normalized with `normalize_for_dedup` and hashed (`line_hash`: SHA-1, first 8
bytes, little-endian uint64). Input parts are taken in groups of `group_size` (cc_net: the hashes
of 50 shards are held in memory at once). A line whose hash occurs twice or more within its group
(in one page or across pages) is removed from EVERY page of the group, the first copy included:
cc_net's two-pass `deduplicate_two_pass` ("even removing the first occurrence", as in the paper).
The same line in two different groups is kept in both (cc_net's dedup is per group).

Lines that normalize to "" (only Unicode punctuation / control characters) are dropped and kept out
of the counts: in cc_net they all share the hash of "" and so always count as duplicates.
A page left with fewer than `min_length_after` characters (default: no line left) is rejected
"empty_after_line_dedup": cc_net's DuplicatesRemover drops a page when no line is kept.

The per-group index is a sorted numpy uint64 array of the hashes seen 2+ times (never a Python set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.documents import Document, read_documents
from pipeline.stage import Stage, StageConfig
from pipeline.text import line_hashes, normalize_for_dedup


class LineDedupConfig(StageConfig):
    # cc_net mine.py Config.hash_in_mem = 50: shards whose line hashes are deduplicated together.
    group_size: int = 50
    # Pages shorter than this after line removal are rejected; 0 = only pages with no line left
    # (cc_net DuplicatesRemover). cc_net's min_len=300 is applied at ingest here.
    min_length_after: int = 0


def _normalized_lines(text: str) -> tuple[list[str], list[str]]:
    lines = text.split("\n")
    return lines, [normalize_for_dedup(line) for line in lines]


def page_line_hashes(text: str) -> np.ndarray:
    """The hashes of the non-blank normalized lines of a page."""
    _, normalized = _normalized_lines(text)
    return line_hashes([n for n in normalized if n])


class CCLineDedup(Stage):
    name = "cc_line_dedup"
    source = "cc"
    Config = LineDedupConfig
    description = "cc_net line dedup: lines seen 2+ times in a group of shards are removed everywhere"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._duplicates_by_group: list[np.ndarray] = []
        self.lines_in = 0
        self.lines_removed = 0
        self.blank_lines_dropped = 0

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        size = self.config.group_size
        self._duplicates_by_group = []
        self.lines_in = self.lines_removed = self.blank_lines_dropped = 0
        unique_hashes = 0
        for start in range(0, len(inputs), size):
            duplicates, n_unique = self._group_duplicates(inputs[start : start + size])
            self._duplicates_by_group.append(duplicates)
            unique_hashes += n_unique
        return {
            "group_size": size,
            "groups": len(self._duplicates_by_group),
            "unique_line_hashes": unique_hashes,
            "duplicated_line_hashes": int(sum(len(d) for d in self._duplicates_by_group)),
            "hash": "sha1(normalize_for_dedup(line))[:8] as little-endian uint64",
        }

    @staticmethod
    def _group_duplicates(parts: list[Path]) -> tuple[np.ndarray, int]:
        hashes = [page_line_hashes(doc.text) for path in parts for doc in read_documents(path, columns=["id", "text"])]
        if not hashes:
            return np.zeros(0, np.uint64), 0
        unique, counts = np.unique(np.concatenate(hashes), return_counts=True)
        return unique[counts >= 2], int(len(unique))

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if not self._duplicates_by_group:  # called directly (tests): the docs are one group
            docs = list(docs)
            unique, counts = np.unique(
                np.concatenate([page_line_hashes(d.text) for d in docs] or [np.zeros(0, np.uint64)]),
                return_counts=True,
            )
            self._duplicates_by_group = [unique[counts >= 2]]
            part = 0
        duplicates = self._duplicates_by_group[part // self.config.group_size]
        for doc in docs:
            lines, normalized = _normalized_lines(doc.text)
            blank = np.array([not n for n in normalized], dtype=bool)
            hashes = line_hashes(normalized)
            found = np.searchsorted(duplicates, hashes).clip(max=max(len(duplicates) - 1, 0))
            duplicated = (duplicates[found] == hashes) if len(duplicates) else np.zeros(len(lines), bool)
            keep = ~blank & ~duplicated
            self.lines_in += int((~blank).sum())
            self.lines_removed += int((duplicated & ~blank).sum())
            self.blank_lines_dropped += int(blank.sum())
            doc.meta["lines_removed"] = int((duplicated & ~blank).sum())
            doc.text = "\n".join(line for line, k in zip(lines, keep) if k)
            if not doc.text or len(doc.text) < self.config.min_length_after:
                doc.reject("empty_after_line_dedup")
            yield doc

    def final_stats(self) -> dict[str, Any]:
        return {"lines_in": self.lines_in, "lines_removed": self.lines_removed,
                "blank_lines_dropped": self.blank_lines_dropped}
