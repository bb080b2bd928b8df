"""Exact dedup that keeps the first copy, in partitioned passes: no process holds a dump's digests.

The base of cc_doc_dedup (a page's normalized text) and github_dedup (a file's bytes): a stage
says how a text becomes a digest of `DIGEST_WORDS` uint64 words and what a duplicate's rejection
reason is; this module runs the passes, which exchange sorted files in the stage's artifacts folder
(a filesystem every worker sees), as datatrove's and cc_net's dedups do. Each pass is a
`Stage.map_parts` call: a job per item on a cluster, forked processes on this machine.

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

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.documents import Document, read_texts
from pipeline.stage import Judgement, Stage

PARTITIONS = 64  # the digests' split; memory per reduce is 1/PARTITIONS of them (not in the identity)
ORDINAL_BITS = 32  # rows per part < 2**32


class FirstCopyDedup(Stage):
    """A stage that rejects every copy of a text but the first (part order, then row order)."""

    DIGEST_WORDS: ClassVar[int] = 1  # uint64 words per digest
    duplicate_reason: ClassVar[str] = "duplicate"
    parallel_parts = True
    remote_parts = True  # every pass is a job on a cluster: they exchange files in the artifacts folder

    def digests(self, texts: Iterator[str]) -> np.ndarray:
        """One row of DIGEST_WORDS uint64 per text."""
        raise NotImplementedError

    def dedup_stats(self, texts: int, duplicates: int) -> dict[str, Any]:
        """The stage's manifest statistics from the exchange's counts."""
        return {"texts": texts, "duplicates": duplicates}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.partitions = PARTITIONS  # a run-time choice like `workers`: the bytes do not depend on it
        self._root: Path | None = None
        self._inputs: list[Path] = []
        self._in_memory: dict[int, str] | None = None  # process() on in-memory documents (tests)
        self._part_duplicates: tuple[int, dict[int, str]] | None = None

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self._inputs = inputs
        self._root = Path(self.artifacts or tempfile.mkdtemp(prefix=f"{self.name}-")) / "exact_dedup"
        self._root.mkdir(parents=True, exist_ok=True)
        rows = sum(self.map_parts("_spill_part", list(range(len(inputs)))))
        duplicates = sum(self.map_parts("_reduce_partition", list(range(self.partitions))))
        list(self.map_parts("_write_kept_ids", list(range(len(inputs)))))
        return self.dedup_stats(int(rows), int(duplicates))

    def worker_state(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "inputs": [str(p) for p in self._inputs]}

    def restore(self, state: dict[str, Any]) -> None:
        self.partitions = state["partitions"]
        self._inputs = [Path(p) for p in state["inputs"]]
        self._root = Path(self.artifacts) / "exact_dedup"

    # -- pass 1: digests per part, split by partition
    def _spill_part(self, part: int) -> int:
        digests = self.digests(read_texts(self._inputs[part])).reshape(-1, self.DIGEST_WORDS)
        ordinals = (np.uint64(part) << np.uint64(ORDINAL_BITS)) | np.arange(len(digests), dtype=np.uint64)
        partition = digests[:, 0] % np.uint64(self.partitions)
        order = np.lexsort((ordinals, *digests.T[::-1], partition))
        records = np.column_stack([digests[order], ordinals[order]])
        offsets = np.searchsorted(partition[order], np.arange(self.partitions + 1, dtype=np.uint64))
        np.save(self._path("digests", part), records)
        np.save(self._path("offsets", part), offsets.astype(np.int64))
        return len(digests)

    # -- pass 2: first copies per partition
    def _reduce_partition(self, partition: int) -> int:
        slices = []
        for part in range(len(self._inputs)):
            offsets = np.load(self._path("offsets", part))
            records = np.load(self._path("digests", part), mmap_mode="r")
            slices.append(np.asarray(records[offsets[partition]:offsets[partition + 1]]))
        records = np.concatenate(slices) if slices else np.zeros((0, self.DIGEST_WORDS + 1), np.uint64)
        del slices
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
        low, high = self._ordinal_range(part)
        rows = np.unique(np.concatenate([self._between(np.load(self._path("kept", p), mmap_mode="r"), low, high)
                                         for p in range(self.partitions)] or [np.zeros(0, np.uint64)])) - low
        ids = pq.read_table(self._inputs[part], columns=["id"])["id"].take(pa.array(rows, pa.uint64()))
        pq.write_table(pa.table({"row": pa.array(rows, pa.uint64()), "id": ids}), self._path("ids", part, ".parquet"))

    # -- pass 4 (the parts): each part's duplicates and the ids they duplicate
    def _duplicates_of_part(self, part: int) -> dict[int, str]:
        """Row -> kept id for the duplicates in `part` (computed once per part)."""
        if self._part_duplicates is not None and self._part_duplicates[0] == part:
            return self._part_duplicates[1]
        low, high = self._ordinal_range(part)
        found = []
        for p in range(self.partitions):
            pairs = np.load(self._path("duplicates", p), mmap_mode="r")
            start, end = np.searchsorted(pairs[:, 0], [low, high])
            found.append(np.asarray(pairs[start:end]))
        pairs = np.concatenate(found) if found else np.zeros((0, 2), np.uint64)
        pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]  # by kept copy: one kept-id file at a time
        kept_parts = pairs[:, 1] >> np.uint64(ORDINAL_BITS)
        result: dict[int, str] = {}
        for kept_part in np.unique(kept_parts).tolist():
            these = pairs[kept_parts == kept_part]
            table = pq.read_table(self._path("ids", kept_part, ".parquet"))
            at = np.searchsorted(table["row"].to_numpy(), these[:, 1] - np.uint64(kept_part << ORDINAL_BITS))
            for duplicate, kept_id in zip((these[:, 0] - np.uint64(low)).tolist(), table["id"].take(at).to_pylist()):
                result[duplicate] = kept_id
        self._part_duplicates = (part, result)
        return result

    def _path(self, kind: str, index: int, suffix: str = ".npy") -> Path:
        return self._root / f"{kind}-{index:05d}{suffix}"

    @staticmethod
    def _ordinal_range(part: int) -> tuple[int, int]:
        return part << ORDINAL_BITS, (part + 1) << ORDINAL_BITS

    @staticmethod
    def _between(values: np.ndarray, low: int, high: int) -> np.ndarray:
        start, end = np.searchsorted(values, [low, high])
        return np.asarray(values[start:end])

    def final_stats(self) -> dict[str, Any]:
        if self._root is not None:  # the exchange files are scaffolding, not output
            shutil.rmtree(self._root, ignore_errors=True)
        return {}

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
