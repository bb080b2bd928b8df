"""cc_doc_dedup: exact document deduplication across all input parts.

The key of a page is the SHA-1 of its text after `normalize_for_dedup` (cc_net's line
normalization: lowercase, digits -> 0, Unicode punctuation and control characters removed, each
line stripped) applied line by line, empty lines dropped, lines joined with "\n": two pages that
differ only in case, numbers, spacing or typographic punctuation are the same page. The first
occurrence (part order, then row order) is kept; later copies are rejected "duplicate_document"
with meta["duplicate_of"] naming the kept id. A digest is the first 8 bytes of the SHA-1 (uint64,
little-endian, as cc_net's line hashes).

No process holds a whole dump's digests: the stage runs in passes that exchange sorted files in its
artifacts folder, as datatrove's and cc_net's dedups do.
  1. per part: each page's (digest, ordinal = part << 32 | row), sorted by (partition, digest), one
     file per part with the offsets of its `partitions` slices (partition = digest % partitions);
  2. per partition: that slice of every part, sorted by (digest, ordinal); in each group of equal
     digests the smallest ordinal is the first copy, the others are duplicates: (duplicate, kept)
     pairs sorted by duplicate, and the kept ordinals they name;
  3. per part: the ids of its rows that duplicates name;
  4. per part (the filter): its duplicates, from every partition's sorted pairs, with their kept ids.
A pass holds one part's or one partition's share, so memory per process is about 16 bytes x pages /
partitions at most; the decisions depend only on each digest's ordinals, so the output is the same
bytes whatever the partition count, worker count or executor. The files are deleted before commit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.documents import Document, read_texts
from pipeline.stage import Judgement, Stage, StageConfig
from pipeline.text import HASH_BYTES, dedup_key


def document_digest(text: str) -> int:
    """SHA-1 of the non-empty `normalize_for_dedup` lines joined with "\n", first 8 bytes."""
    normalized = b"\n".join(key for key in map(dedup_key, text.split("\n")) if key)
    return int.from_bytes(hashlib.sha1(normalized).digest()[:HASH_BYTES], "little")


class DocDedupConfig(StageConfig):
    pass  # no threshold: exact duplicates only (near-duplicate dedup is a later issue)


PARTITIONS = 64  # the digests' split; memory per reduce is 1/PARTITIONS of them (not in the identity)
ORDINAL_BITS = 32  # rows per part < 2**32


class CCDocDedup(Stage):
    name = "cc_doc_dedup"
    source = "cc"
    Config = DocDedupConfig
    description = "exact page dedup on the SHA-1 of the normalized text; the first copy is kept"
    parallel_parts = True
    remote_parts = True  # the filter pass reads what the earlier passes wrote into the artifacts

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.partitions = PARTITIONS  # a run-time choice like `workers`: the bytes do not depend on it
        self._root: Path | None = None
        self._kept_ids: dict[int, str] | None = None  # set by process() on in-memory documents (tests)
        self._part_duplicates: tuple[int, dict[int, str]] | None = None

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self._inputs = inputs
        self._root = Path(self.artifacts or tempfile.mkdtemp(prefix="cc_doc_dedup-")) / "doc_dedup"
        self._root.mkdir(parents=True, exist_ok=True)
        rows = sum(self.map_parts("_spill_part", list(range(len(inputs)))))
        duplicates = sum(self.map_parts("_reduce_partition", list(range(self.partitions))))
        list(self.map_parts("_write_kept_ids", list(range(len(inputs)))))
        return {"documents_hashed": int(rows), "unique_documents": int(rows - duplicates),
                "duplicate_documents": int(duplicates), "normalization": "normalize_for_dedup per line, sha1[:8]"}

    # -- pass 1: digests per part, split by partition
    def _spill_part(self, part: int) -> int:
        digests = np.fromiter(map(document_digest, read_texts(self._inputs[part])), dtype=np.uint64)
        ordinals = (np.uint64(part) << np.uint64(ORDINAL_BITS)) | np.arange(len(digests), dtype=np.uint64)
        partition = digests % np.uint64(self.partitions)
        order = np.lexsort((ordinals, digests, partition))
        pairs = np.stack([digests[order], ordinals[order]], axis=1)
        offsets = np.searchsorted(partition[order], np.arange(self.partitions + 1, dtype=np.uint64))
        np.save(self._path("digests", part), pairs)
        np.save(self._path("offsets", part), offsets.astype(np.int64))
        return len(digests)

    # -- pass 2: first copies per partition
    def _reduce_partition(self, partition: int) -> int:
        slices = []
        for part in range(len(self._inputs)):
            offsets = np.load(self._path("offsets", part))
            pairs = np.load(self._path("digests", part), mmap_mode="r")
            slices.append(np.asarray(pairs[offsets[partition]:offsets[partition + 1]]))
        pairs = np.concatenate(slices) if slices else np.zeros((0, 2), np.uint64)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        digests, ordinals = pairs[:, 0], pairs[:, 1]
        first = np.ones(len(digests), dtype=bool)
        first[1:] = digests[1:] != digests[:-1]
        kept_of_each = ordinals[np.maximum.accumulate(np.where(first, np.arange(len(digests)), 0))]
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
        ids = pq.read_table(self._inputs[part], columns=["id"])["id"] if len(rows) else None
        with open(self._path("ids", part, ".json"), "w") as fh:
            json.dump({str(int(row)): ids[int(row)].as_py() for row in rows}, fh)

    # -- pass 4 (the parts): each part's duplicates and the ids they duplicate
    def worker_state(self) -> dict[str, Any]:
        return {"partitions": self.partitions}

    def restore(self, state: dict[str, Any]) -> None:
        self.partitions = state["partitions"]
        self._root = Path(self.artifacts) / "doc_dedup"

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
        ids_of: dict[int, dict[str, str]] = {}
        result: dict[int, str] = {}
        for duplicate, kept in pairs.tolist():
            kept_part = kept >> ORDINAL_BITS
            if kept_part not in ids_of:
                ids_of[kept_part] = json.loads(self._path("ids", kept_part, ".json").read_text())
            result[duplicate - low] = ids_of[kept_part][str(kept - (kept_part << ORDINAL_BITS))]
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
            digests = [document_digest(d.text) for d in docs]
            first: dict[int, int] = {}
            self._kept_ids = {}
            for row, digest in enumerate(digests):
                kept = first.setdefault(digest, row)
                if kept != row:
                    self._kept_ids[row] = docs[kept].id
            part = 0
        yield from super().process(iter(docs), part)

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        duplicates = self._kept_ids if self._root is None else self._duplicates_of_part(part)
        reasons: list[str | None] = [None] * len(texts)
        meta: dict[int, dict[str, Any]] = {}
        for i in range(len(texts)):
            kept_id = duplicates.get(first_row + i)
            if kept_id is not None:
                reasons[i] = "duplicate_document"
                meta[i] = {"duplicate_of": kept_id}
        return Judgement(reasons, meta=meta)
