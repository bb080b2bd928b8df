"""cc_line_dedup: cc_net's paragraph (line) deduplication (CCNet §3.1, LLaMA §2).

Every line is normalized with `normalize_for_dedup` and hashed (`line_hash`: SHA-1, first 8
bytes, little-endian uint64). Input parts are taken in groups of about `group_pages` pages (whole
parts, in order, until the group holds that many): cc_net deduplicates the hashes of 50 of a dump's
1,600 shards together (mine.py hash_in_mem, num_shards), 1/32 of a dump, ~90 M pages.

cc_net's rule (dedup.py, as mine.py runs it): a line found in two or more PAGES of its group is
removed from every page of the group, the first copy included ("even removing the first
occurrence", as in the paper); a line repeated only inside one page is a duplicate of nothing —
that page keeps its first copy and drops the repeats (HashesCollector looks up all of a page's
hashes before adding them; finalize_doc keeps the first of equal lines). So two identical pages
are both emptied (cc_net has no page-level dedup; `cc_doc_dedup` before this stage, which keeps a
first copy, is a named deviation in the specs). The same line in two groups is kept in both.

Lines that normalize to "" (only Unicode punctuation / control characters) are dropped and kept out
of the counts: in cc_net they all share the hash of "" and so always count as duplicates.
A page left with fewer than `min_length_after` characters (default: no line left) is rejected
"empty_after_line_dedup": cc_net's DuplicatesRemover drops a page when no line is kept.

No process holds a group's hashes (issue 13): the stage runs in passes that exchange files in its
artifacts folder (pipeline/exchange.py), each a job on a cluster or a forked process here.
  1. per part: the hash of every line (8 bytes per line, kept for pass 3, so each line is normalized
     and hashed once, as cc_net writes its hashes to disk) and the part's unique hashes with a
     "in two pages of this part" byte, sorted by (partition, hash), partition = hash % `partitions`;
  2. per (group, partition): that slice of each of the group's parts, merged: a hash in two pages of
     one part or in two parts is a duplicate; the sorted duplicates are written;
  3. per part (the filter): each line's hash looked up in its partition's duplicates (memory-mapped).
A pass holds one part's lines or about 9 bytes x a group's unique lines / partitions; a hash's fate
depends only on the hash, so the output is the same bytes whatever the partition or worker count.
The files are deleted before commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pydantic import Field

from pipeline.documents import Document, open_parquet, read_texts
from pipeline.exchange import ExchangeStage
from pipeline.stage import Judgement, StageConfig
from pipeline.text import EMPTY_LINE_HASH, dedup_line_hashes


# cc_net mine.py: hash_in_mem = 50 of num_shards = 1600 shards per dump; a dump of ~3 billion pages
# (CC-MAIN-2019-09, cc_net's paper) makes a group of ~93 M pages.
CCNET_GROUP_PAGES = 93_000_000


class LineDedupConfig(StageConfig):
    # Pages whose line hashes are deduplicated together (whole input parts, in order, until a group
    # holds at least this many): cc_net's 1/32 of a dump. A larger group finds more duplicates.
    group_pages: int = Field(default=CCNET_GROUP_PAGES, ge=1)
    # Pages shorter than this after line removal are rejected; 0 = only pages with no line left
    # (cc_net DuplicatesRemover). cc_net's min_len=300 is applied at ingest here.
    min_length_after: int = 0


def page_line_hashes(text: str) -> np.ndarray:
    """The hashes of the non-blank normalized lines of a page."""
    hashes = dedup_line_hashes(text)
    return hashes[hashes != EMPTY_LINE_HASH]


def page_counts(per_page: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct non-blank line hashes of some pages, sorted, and how many pages hold each."""
    distinct = [np.unique(h[h != EMPTY_LINE_HASH]) for h in per_page]
    return np.unique(np.concatenate(distinct) if distinct else np.zeros(0, np.uint64), return_counts=True)


def first_in_page(hashes: np.ndarray, lines_per_page: np.ndarray) -> np.ndarray:
    """For each line of consecutive pages, whether it is the first of its hash in its page."""
    page = np.repeat(np.arange(len(lines_per_page)), lines_per_page)
    order = np.lexsort((np.arange(len(hashes)), hashes, page))
    first_sorted = np.ones(len(hashes), np.bool_)
    first_sorted[1:] = (page[order][1:] != page[order][:-1]) | (hashes[order][1:] != hashes[order][:-1])
    first = np.empty(len(hashes), np.bool_)
    first[order] = first_sorted
    return first


def groups_of(part_pages: list[int], group_pages: int) -> list[range]:
    """Consecutive parts, each group closed once it holds `group_pages` pages (the last may hold fewer)."""
    groups, start, pages = [], 0, 0
    for index, n in enumerate(part_pages):
        pages += n
        if pages >= group_pages:
            groups.append(range(start, index + 1))
            start, pages = index + 1, 0
    if start < len(part_pages):
        groups.append(range(start, len(part_pages)))
    return groups


class CCLineDedup(ExchangeStage):
    name = "cc_line_dedup"
    source = "cc"
    Config = LineDedupConfig
    description = "cc_net line dedup: lines in 2+ pages of a group are removed everywhere, repeats within a page"
    columns = {"lines_removed": pa.int32()}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._part_lines: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._groups: list[range] = []

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self.open_exchange(inputs)
        part_pages = [open_parquet(path).metadata.num_rows for path in inputs]
        self._groups = groups_of(part_pages, self.config.group_pages)
        lines = sum(self.map_parts("_hash_part", list(range(len(inputs)))))
        reduced = list(self.map_parts("_reduce_partition", [(g, p) for g in range(len(self._groups))
                                                             for p in range(self.partitions)]))
        return {
            "group_pages": self.config.group_pages,
            "groups": len(self._groups),
            "pages_per_group": [sum(part_pages[i] for i in group) for group in self._groups],
            "lines_hashed": int(lines),
            "unique_line_hashes": int(sum(unique for unique, _ in reduced)),
            "duplicated_line_hashes": int(sum(duplicated for _, duplicated in reduced)),
            "hash": "sha1(normalize_for_dedup(line))[:8] as little-endian uint64",
        }

    def worker_state(self) -> dict[str, Any]:
        return super().worker_state() | {"groups": [[g.start, g.stop] for g in self._groups]}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._groups = [range(start, stop) for start, stop in state["groups"]]

    def _group_of(self, part: int) -> int:
        return next(g for g, group in enumerate(self._groups) if part in group)

    # -- pass 1: every line's hash; the part's unique hashes split by partition
    def _hash_part(self, part: int) -> int:
        per_doc = [dedup_line_hashes(text) for text in read_texts(self._inputs[part])]
        hashes = np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64)
        np.save(self._path("hashes", part), hashes)  # blank lines as EMPTY_LINE_HASH, for pass 3
        np.save(self._path("lines", part), np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc)))
        unique, pages = page_counts(per_doc)  # a line repeated inside one page counts once
        del per_doc
        partition = unique % np.uint64(self.partitions)
        order = np.argsort(partition, kind="stable")  # by partition, then hash (unique is sorted)
        self.spill(part, partition, order, unique=unique, twice=pages >= 2)
        return int(len(hashes))

    # -- pass 2: the duplicates of one partition of one group
    def _reduce_partition(self, item: tuple[int, int]) -> tuple[int, int]:
        group, partition = item
        parts = self._groups[group]
        all_hashes = self.gather_partition(partition, "unique", parts)
        all_twice = self.gather_partition(partition, "twice", parts)
        order = np.argsort(all_hashes, kind="stable")
        all_hashes, all_twice = all_hashes[order], all_twice[order]
        del order
        first = np.ones(len(all_hashes), np.bool_)
        first[1:] = all_hashes[1:] != all_hashes[:-1]
        starts = np.flatnonzero(first)
        # A duplicate: in two parts of the group (a group of more than one entry), or in two pages of one.
        entries = np.diff(np.r_[starts, len(all_hashes)])
        twice_in_a_part = np.logical_or.reduceat(all_twice, starts) if len(starts) else np.zeros(0, np.bool_)
        duplicates = all_hashes[starts][(entries >= 2) | twice_in_a_part]
        np.save(self._path("duplicates", group, partition), duplicates)
        return int(len(starts)), int(len(duplicates))

    # -- pass 3 (the parts): each line looked up in its partition's duplicates
    def _lines_of(self, part: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The part's line hashes, lines per page, each page's first line and which lines are
        duplicated (computed once per part)."""
        if self._part_lines is None or self._part_lines[0] != part:
            hashes, lines = np.load(self._path("hashes", part)), np.load(self._path("lines", part))
            duplicated = np.zeros(len(hashes), np.bool_)
            partition = hashes % np.uint64(self.partitions)
            by_partition = np.argsort(partition, kind="stable")
            bounds = np.searchsorted(partition[by_partition], np.arange(self.partitions + 1, dtype=np.uint64))
            del partition
            group = self._group_of(part)
            for p in range(self.partitions):
                at = by_partition[bounds[p] : bounds[p + 1]]
                duplicates = self.load(self._path("duplicates", group, p), mmap=True)
                if len(at) and len(duplicates):
                    found = np.searchsorted(duplicates, hashes[at]).clip(max=len(duplicates) - 1)
                    duplicated[at] = np.asarray(duplicates[found]) == hashes[at]
            self._part_lines = (part, hashes, lines, duplicated)
        _, hashes, lines, duplicated = self._part_lines
        return hashes, lines, np.r_[0, np.cumsum(lines)], duplicated

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if self._root is None:  # called directly (tests): the docs are one group
            docs = list(docs)
            per_doc = [dedup_line_hashes(d.text) for d in docs]
            hashes = np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64)
            unique, pages = page_counts(per_doc)
            duplicated = np.isin(hashes, unique[pages >= 2])
            self._part_lines = (0, hashes, np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc)), duplicated)
            part = 0
        yield from super().process(iter(docs), part)

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        all_hashes, lines_per_doc, starts, all_duplicated = self._lines_of(part)
        begin, end = int(starts[first_row]), int(starts[first_row + len(texts)])
        hashes, line_counts = all_hashes[begin:end], lines_per_doc[first_row : first_row + len(texts)]
        blank = hashes == EMPTY_LINE_HASH
        duplicated = all_duplicated[begin:end] & ~blank
        repeated = ~blank & ~duplicated & ~first_in_page(hashes, line_counts)  # cc_net finalize_doc
        removed = duplicated | repeated
        keep = (~blank & ~removed).tolist()
        removed_per_doc = np.add.reduceat(removed.astype(np.int64), starts[first_row : first_row + len(texts)] - begin) if len(
            hashes) else np.zeros(len(texts), np.int64)
        self.tally("lines_in", int(len(hashes) - blank.sum()))
        self.tally("lines_removed", int(duplicated.sum()))
        self.tally("repeats_in_page_removed", int(repeated.sum()))
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
        return super().final_stats() | {key: int(self.counters.get(key, 0)) for key in ("lines_in", "lines_removed", "repeats_in_page_removed", "blank_lines_dropped")}
