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

Memory (issue 3: at most 16 bytes per unique line, never a Python set): while a group is hashed,
`GroupIndex` holds its unique hashes as one sorted uint64 array plus one byte per hash ("seen
twice"), grown with spare capacity and merged in place, part after part: ~9-11 bytes per unique
line (`index_peak_bytes` in the manifest; bench/cc_bench.py reports it per unique line). After a
group only the hashes seen 2+ times are kept for the filtering pass. The per-line hashes of each
part computed in `prepare` are spilled to a temporary file (8 bytes per line) and reread in
`process`, so every line is normalized and hashed once (cc_net writes its hashes to disk too).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.documents import Document, read_texts
from pipeline.stage import Judgement, Stage, StageConfig
from pipeline.text import EMPTY_LINE_HASH, dedup_line_hashes


class LineDedupConfig(StageConfig):
    # cc_net mine.py Config.hash_in_mem = 50: shards whose line hashes are deduplicated together.
    group_size: int = 50
    # Pages shorter than this after line removal are rejected; 0 = only pages with no line left
    # (cc_net DuplicatesRemover). cc_net's min_len=300 is applied at ingest here.
    min_length_after: int = 0


def page_line_hashes(text: str) -> np.ndarray:
    """The hashes of the non-blank normalized lines of a page."""
    hashes = dedup_line_hashes(text)
    return hashes[hashes != EMPTY_LINE_HASH]


class GroupIndex:
    """The unique line hashes of one group and whether each was seen twice or more.

    `hashes[:size]` is sorted; `seen_twice[:size]` is one byte per hash. Both arrays have spare
    capacity (x1.25 growth) so a part's new hashes are merged in place, from the back, a chunk at a
    time: the merge needs no second copy of the index, which is what keeps the peak near 9-11 bytes
    per unique line instead of the ~30 of np.unique over a concatenation of every line.
    """

    CHUNK = 1 << 20  # hashes moved per step of the in-place merge (8 MiB of temporaries)

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)
        self.seen_twice = np.zeros(0, np.bool_)
        self.size = 0
        self.peak_bytes = 0

    def add(self, line_hashes: np.ndarray) -> None:
        """Add the hashes of one part (blank lines already removed)."""
        part_unique, counts = np.unique(line_hashes, return_counts=True)
        current = self.hashes[: self.size]
        at = np.searchsorted(current, part_unique)
        known = at < self.size
        known[known] = current[at[known]] == part_unique[known]
        self.seen_twice[at[known]] = True  # already in an earlier part of the group
        new, new_twice = part_unique[~known], counts[~known] >= 2
        del current, at, known, part_unique, counts  # no view of the index may outlive a resize
        if len(new):
            self._merge(new, new_twice)
        self.peak_bytes = max(self.peak_bytes, self.hashes.nbytes + self.seen_twice.nbytes)

    def _merge(self, new: np.ndarray, new_twice: np.ndarray) -> None:
        old_size, total = self.size, self.size + len(new)
        # Final positions of the new hashes (none of them is in the index): computed before any move.
        new_at = np.searchsorted(self.hashes[:old_size], new) + np.arange(len(new))
        if total > len(self.hashes):
            capacity = max(total, int(len(self.hashes) * 1.25))
            # In-place realloc (mremap for large blocks): no second copy of the index while growing.
            self.hashes.resize(capacity, refcheck=False)
            self.seen_twice.resize(capacity, refcheck=False)
        # Old hash i goes to i + (number of new hashes below it); move chunks from the back so no
        # position is overwritten before it is read.
        for end in range(old_size, 0, -self.CHUNK):
            begin = max(0, end - self.CHUNK)
            chunk, twice = self.hashes[begin:end].copy(), self.seen_twice[begin:end].copy()
            to = np.arange(begin, end) + np.searchsorted(new, chunk)
            self.hashes[to], self.seen_twice[to] = chunk, twice
        self.hashes[new_at], self.seen_twice[new_at] = new, new_twice
        self.size = total

    def duplicates(self) -> np.ndarray:
        """The sorted hashes seen twice or more: all the filtering pass needs."""
        return self.hashes[: self.size][self.seen_twice[: self.size]].copy()


class CCLineDedup(Stage):
    name = "cc_line_dedup"
    source = "cc"
    Config = LineDedupConfig
    description = "cc_net line dedup: lines seen 2+ times in a group of shards are removed everywhere"
    parallel_parts = True  # pass 2 reads only its part's spilled hashes and its group's duplicates
    columns = {"lines_removed": pa.int32()}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._duplicates_by_group: list[np.ndarray] = []
        self._spill: tempfile.TemporaryDirectory | None = None
        self._inputs: list[Path] = []
        self._part_lines: tuple[int, np.ndarray, np.ndarray] | None = None

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        size = self.config.group_size
        self._duplicates_by_group = []
        self._spill = tempfile.TemporaryDirectory(prefix="cc_line_dedup-")
        self._inputs = inputs
        unique_hashes = peak = 0
        per_unique = 0.0
        # Pass 1, per part (in parallel with workers > 1): hash every line, spill the hashes.
        # Then per group, in part order: merge the parts' hashes into the group's index.
        for _ in self.map_parts("_hash_part", list(range(len(inputs)))):
            pass
        for start in range(0, len(inputs), size):
            index = GroupIndex()
            for part in range(start, min(start + size, len(inputs))):
                hashes = np.load(self._spill_path(part, "hashes"))
                index.add(hashes[hashes != EMPTY_LINE_HASH])
            self._duplicates_by_group.append(index.duplicates())
            unique_hashes += index.size
            peak = max(peak, index.peak_bytes)
            per_unique = max(per_unique, index.peak_bytes / max(index.size, 1))
        return {
            "group_size": size,
            "groups": len(self._duplicates_by_group),
            "unique_line_hashes": unique_hashes,
            "duplicated_line_hashes": int(sum(len(d) for d in self._duplicates_by_group)),
            "index_peak_bytes": int(peak),
            "index_bytes_per_unique_line": round(per_unique, 2),  # issue 3 goal: <= 16
            "hash": "sha1(normalize_for_dedup(line))[:8] as little-endian uint64",
        }

    def _spill_path(self, part: int, kind: str) -> Path:
        return Path(self._spill.name) / f"{kind}-{part:05d}.npy"

    def _hash_part(self, part: int) -> None:
        """Spill the hashes of every line of every page of a part (blank lines as EMPTY_LINE_HASH)
        and the number of lines of each page."""
        per_doc = [dedup_line_hashes(text) for text in read_texts(self._inputs[part])]
        lines = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
        np.save(self._spill_path(part, "hashes"), np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64))
        np.save(self._spill_path(part, "lines"), lines)

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if not self._duplicates_by_group:  # called directly (tests): the docs are one group
            docs = list(docs)
            per_doc = [dedup_line_hashes(d.text) for d in docs]
            hashes = np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64)
            index = GroupIndex()
            index.add(hashes[hashes != EMPTY_LINE_HASH])
            self._duplicates_by_group = [index.duplicates()]
            self._part_lines = (0, hashes, np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc)))
            part = 0
        yield from super().process(iter(docs), part)

    def _lines_of(self, part: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The part's spilled line hashes, lines per page, and each page's first line."""
        if self._part_lines is None or self._part_lines[0] != part:
            self._part_lines = (part, np.load(self._spill_path(part, "hashes")), np.load(self._spill_path(part, "lines")))
        _, hashes, lines_per_doc = self._part_lines
        return hashes, lines_per_doc, np.r_[0, np.cumsum(lines_per_doc)]

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        all_hashes, lines_per_doc, starts = self._lines_of(part)
        begin, end = int(starts[first_row]), int(starts[first_row + len(texts)])
        hashes, line_counts = all_hashes[begin:end], lines_per_doc[first_row : first_row + len(texts)]
        duplicates = self._duplicates_by_group[part // self.config.group_size]
        # One vectorized lookup for the whole batch, then per page only list slicing.
        blank = hashes == EMPTY_LINE_HASH
        if len(duplicates):
            found = np.searchsorted(duplicates, hashes).clip(max=len(duplicates) - 1)
            duplicated = (duplicates[found] == hashes) & ~blank
        else:
            duplicated = np.zeros(len(hashes), np.bool_)
        keep = (~blank & ~duplicated).tolist()
        removed_per_doc = np.add.reduceat(duplicated, starts[first_row : first_row + len(texts)] - begin) if len(
            hashes) else np.zeros(len(texts), np.int64)
        self.tally("lines_in", int(len(hashes) - blank.sum()))
        self.tally("lines_removed", int(duplicated.sum()))
        self.tally("blank_lines_dropped", int(blank.sum()))
        new_texts, reasons = [], []
        offset = 0
        for text, n_lines in zip(texts, line_counts.tolist()):
            lines = text.split("\n")
            if len(lines) != n_lines:
                raise RuntimeError(f"{self.name}: part {part} changed between the two passes")
            kept = keep[offset : offset + n_lines]
            offset += n_lines
            if not all(kept):  # else nothing removed: the text stays as it is
                text = "\n".join([line for line, k in zip(lines, kept) if k])
            new_texts.append(text)
            reasons.append("empty_after_line_dedup" if not text or len(text) < self.config.min_length_after else None)
        return Judgement(reasons, {"lines_removed": [int(n) for n in removed_per_doc]}, texts=new_texts)

    def final_stats(self) -> dict[str, Any]:
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None
        return {key: int(self.counters.get(key, 0)) for key in ("lines_in", "lines_removed", "blank_lines_dropped")}
