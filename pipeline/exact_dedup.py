"""Exact dedup that keeps the first copy, in partitioned passes: no process holds a dump's digests.

The base of cc_doc_dedup (a page's normalized text) and github_dedup (a file's bytes): a stage
says how a text becomes a digest of `DIGEST_WORDS` uint64 words and what a duplicate's rejection
reason is; this module runs the passes, which exchange sorted files in the stage's artifacts folder
(pipeline/exchange.py), as datatrove's and cc_net's dedups do.

  1. per part: each text's (digest, ordinal = part << 32 | row), sorted by (partition, digest,
     ordinal), one file per part with the offsets of its `partitions` slices (partition = the
     digest's first word % partitions);
  2. per partition: that slice of every part, sorted; in each group of equal digests the smallest
     ordinal is the first copy, the others are duplicates: (duplicate, kept) ordinal pairs sorted by
     duplicate, and the kept ordinals they name;
  3. per part: the ids of its rows that duplicates name (row, id), sorted by row;
  4. per part (the filter): its duplicates, from every partition's sorted pairs, with the ids they
     duplicate, read one kept part's (row, id) file at a time.
A pass holds one part's or one partition's share, so memory per process is about
(8 x DIGEST_WORDS + 8) bytes x texts / partitions at most. Which copy is first depends only on each
digest's ordinals, so the output is the same bytes whatever the partition count, worker count or
executor. The files are deleted before commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.documents import Document, read_texts
from pipeline.exchange import ORDINAL_BITS, ExchangeStage, ordinal_range
from pipeline.stage import Judgement


class FirstCopyDedup(ExchangeStage):
    """A stage that rejects every copy of a text but the first (part order, then row order)."""

    DIGEST_WORDS: ClassVar[int] = 1  # uint64 words per digest
    duplicate_reason: ClassVar[str] = "duplicate"

    def digests(self, texts: Iterator[str]) -> np.ndarray:
        """One row of DIGEST_WORDS uint64 per text."""
        raise NotImplementedError

    def dedup_stats(self, texts: int, duplicates: int) -> dict[str, Any]:
        """The stage's manifest statistics from the exchange's counts."""
        return {"texts": texts, "duplicates": duplicates}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_memory: dict[int, str] | None = None  # process() on in-memory documents (tests)
        self._part_duplicates: tuple[int, dict[int, str]] | None = None

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self.open_exchange(inputs)
        rows = sum(self.map_parts("_spill_part", list(range(len(inputs)))))
        duplicates = sum(self.map_parts("_reduce_partition", list(range(self.partitions))))
        list(self.map_parts("_write_kept_ids", list(range(len(inputs)))))
        return self.dedup_stats(int(rows), int(duplicates))

    # -- pass 1: digests per part, split by partition
    def _spill_part(self, part: int) -> int:
        digests = self.digests(read_texts(self._inputs[part])).reshape(-1, self.DIGEST_WORDS)
        ordinals = (np.uint64(part) << np.uint64(ORDINAL_BITS)) | np.arange(len(digests), dtype=np.uint64)
        partition = digests[:, 0] % np.uint64(self.partitions)
        order = np.lexsort((ordinals, *digests.T[::-1], partition))
        self.spill(part, partition, order, digests=np.column_stack([digests, ordinals]))
        return len(digests)

    # -- pass 2: first copies per partition
    def _reduce_partition(self, partition: int) -> int:
        records = self.gather_partition(partition, "digests")
        records = records[np.lexsort(records.T[::-1])]  # by digest, then ordinal
        digests, ordinals = records[:, :-1], records[:, -1]
        first = np.ones(len(records), dtype=bool)
        first[1:] = (digests[1:] != digests[:-1]).any(axis=1)
        kept_of_each = ordinals[np.maximum.accumulate(np.where(first, np.arange(len(records)), 0))]
        duplicate = ~first
        found = np.stack([ordinals[duplicate], kept_of_each[duplicate]], axis=1)
        np.save(self._path("duplicates", partition), found[np.argsort(found[:, 0], kind="stable")])
        np.save(self._path("kept", partition), np.unique(found[:, 1]))
        return int(duplicate.sum())

    # -- pass 3: the ids of the kept copies each part holds
    def _write_kept_ids(self, part: int) -> None:
        rows = np.unique(self.gather_part(part, "kept")) - np.uint64(ordinal_range(part)[0])
        ids = pq.read_table(self._inputs[part], columns=["id"])["id"].take(pa.array(rows, pa.uint64()))
        pq.write_table(pa.table({"row": pa.array(rows, pa.uint64()), "id": ids}), self._path("ids", part, suffix=".parquet"))

    # -- pass 4 (the parts): each part's duplicates and the ids they duplicate
    def _duplicates_of_part(self, part: int) -> dict[int, str]:
        """Row -> kept id for the duplicates in `part` (computed once per part)."""
        if self._part_duplicates is not None and self._part_duplicates[0] == part:
            return self._part_duplicates[1]
        low = ordinal_range(part)[0]
        pairs = self.gather_part(part, "duplicates")
        pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]  # by kept copy: one kept-id file at a time
        kept_parts = pairs[:, 1] >> np.uint64(ORDINAL_BITS)
        result: dict[int, str] = {}
        for kept_part in np.unique(kept_parts).tolist():
            these = pairs[kept_parts == kept_part]
            table = pq.read_table(self._path("ids", kept_part, suffix=".parquet"))
            at = np.searchsorted(table["row"].to_numpy(), these[:, 1] - np.uint64(kept_part << ORDINAL_BITS))
            for duplicate, kept_id in zip((these[:, 0] - np.uint64(low)).tolist(), table["id"].take(at).to_pylist()):
                result[duplicate] = kept_id
        self._part_duplicates = (part, result)
        return result

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if self._root is None:  # called directly (tests): dedup within these docs only
            docs = list(docs)
            digests = self.digests(iter([d.text for d in docs])).reshape(-1, self.DIGEST_WORDS)
            first: dict[bytes, int] = {}
            self._in_memory = {}
            for row, digest in enumerate(digests):
                kept = first.setdefault(digest.tobytes(), row)
                if kept != row:
                    self._in_memory[row] = docs[kept].id
            part = 0
        yield from super().process(iter(docs), part)

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        duplicates = self._in_memory if self._root is None else self._duplicates_of_part(part)
        reasons: list[str | None] = [None] * len(texts)
        meta: dict[int, dict[str, Any]] = {}
        for i in range(len(texts)):
            kept_id = duplicates.get(first_row + i)
            if kept_id is not None:
                reasons[i] = self.duplicate_reason
                meta[i] = {"duplicate_of": kept_id}
        return Judgement(reasons, meta=meta)
