"""cc_doc_dedup: exact document deduplication across all input parts.

The key of a page is the SHA-1 of its text after `normalize_for_dedup` (cc_net's line
normalization: lowercase, digits -> 0, Unicode punctuation and control characters removed, each
line stripped) applied line by line, empty lines dropped, lines joined with "\n": two pages that
differ only in case, numbers, spacing or typographic punctuation are the same page. The first
occurrence (part order, then row order) is kept; later copies are rejected "duplicate_document"
with meta["duplicate_of"] naming the kept id. Digests are kept as the first 8 bytes of the SHA-1
(uint64, little-endian, as cc_net's line hashes), one numpy array for the whole input.
"""

from __future__ import annotations

import hashlib
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


class CCDocDedup(Stage):
    name = "cc_doc_dedup"
    source = "cc"
    Config = DocDedupConfig
    description = "exact page dedup on the SHA-1 of the normalized text; the first copy is kept"
    parallel_parts = True

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self._inputs = inputs
        per_part = list(self.map_parts("_part_digests", list(range(len(inputs)))))  # in parallel with workers
        self._index(per_part)
        duplicates = self._kept_index != np.arange(len(self._kept_index))
        self._kept_ids = self._ids_at(inputs, np.unique(self._kept_index[duplicates]))
        return {"documents_hashed": int(len(self._kept_index)), "unique_documents": int((~duplicates).sum()),
                "duplicate_documents": int(duplicates.sum()), "normalization": "normalize_for_dedup per line, sha1[:8]"}

    def _part_digests(self, part: int) -> np.ndarray:
        return np.fromiter(map(document_digest, read_texts(self._inputs[part])), dtype=np.uint64)

    def _index(self, per_part: list[np.ndarray]) -> None:
        """For every document (global row: parts in order), the global row of the copy kept."""
        self._part_offsets = np.cumsum([0] + [len(h) for h in per_part])
        digests = np.concatenate(per_part) if per_part else np.zeros(0, np.uint64)
        # np.unique's return_index is the index of the first occurrence of each digest.
        _, first_index, inverse = np.unique(digests, return_index=True, return_inverse=True)
        self._kept_index = first_index[inverse]

    def _ids_at(self, inputs: list[Path], wanted: np.ndarray) -> dict[int, str]:
        """The ids of the kept copies of duplicated pages (a second pass reading only `id`)."""
        ids: dict[int, str] = {}
        for part, path in enumerate(inputs):
            base, end = int(self._part_offsets[part]), int(self._part_offsets[part + 1])
            rows = wanted[(wanted >= base) & (wanted < end)] - base
            if len(rows) == 0:
                continue
            part_ids = pq.read_table(path, columns=["id"])["id"]
            ids.update({base + int(row): part_ids[int(row)].as_py() for row in rows})
        return ids

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if not hasattr(self, "_kept_index"):  # called directly (tests): dedup within these docs only
            docs = list(docs)
            self._index([np.fromiter((document_digest(d.text) for d in docs), dtype=np.uint64, count=len(docs))])
            self._kept_ids = {int(i): docs[int(i)].id for i in set(self._kept_index.tolist())}
            part = 0
        yield from super().process(iter(docs), part)

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        base = int(self._part_offsets[part]) + first_row
        kept_rows = self._kept_index[base : base + len(texts)]
        reasons: list[str | None] = [None] * len(texts)
        meta: dict[int, dict[str, Any]] = {}
        for i in np.flatnonzero(kept_rows != np.arange(base, base + len(texts))).tolist():
            reasons[i] = "duplicate_document"
            meta[i] = {"duplicate_of": self._kept_ids.get(int(kept_rows[i]))}
        return Judgement(reasons, meta=meta)
