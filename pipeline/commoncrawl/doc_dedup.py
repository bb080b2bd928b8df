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

from pipeline.documents import Document, read_documents
from pipeline.stage import Stage, StageConfig
from pipeline.text import HASH_BYTES, normalize_for_dedup


def document_digest(text: str) -> int:
    normalized = "\n".join(line for line in map(normalize_for_dedup, text.split("\n")) if line)
    return int.from_bytes(hashlib.sha1(normalized.encode("utf-8")).digest()[:HASH_BYTES], "little")


class DocDedupConfig(StageConfig):
    pass  # no threshold: exact duplicates only (near-duplicate dedup is a later issue)


class CCDocDedup(Stage):
    name = "cc_doc_dedup"
    source = "cc"
    Config = DocDedupConfig
    description = "exact page dedup on the SHA-1 of the normalized text; the first copy is kept"

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        per_part = [
            np.fromiter((document_digest(d.text) for d in read_documents(p, columns=["id", "text"])), dtype=np.uint64)
            for p in inputs
        ]
        self._part_offsets = np.cumsum([0] + [len(h) for h in per_part])
        digests = np.concatenate(per_part) if per_part else np.zeros(0, np.uint64)
        # np.unique's return_index is the index of the first occurrence of each digest.
        _, first_index, inverse = np.unique(digests, return_index=True, return_inverse=True)
        self._kept_index = first_index[inverse]  # for each document, the global row kept in its place
        duplicates = self._kept_index != np.arange(len(digests))
        self._kept_ids = self._ids_at(inputs, np.unique(self._kept_index[duplicates]))
        self.duplicates = int(duplicates.sum())
        return {"documents_hashed": int(len(digests)), "unique_documents": int(len(first_index)),
                "duplicate_documents": self.duplicates, "normalization": "normalize_for_dedup per line, sha1[:8]"}

    def _ids_at(self, inputs: list[Path], wanted: np.ndarray) -> dict[int, str]:
        """The ids of the kept copies of duplicated pages (a second pass reading only `id`)."""
        ids: dict[int, str] = {}
        for part, path in enumerate(inputs):
            base, end = int(self._part_offsets[part]), int(self._part_offsets[part + 1])
            rows = wanted[(wanted >= base) & (wanted < end)] - base
            if len(rows) == 0:
                continue
            for row, doc in enumerate(read_documents(path, columns=["id"])):
                if rows[np.searchsorted(rows, row).clip(max=len(rows) - 1)] == row:
                    ids[base + row] = doc.id
        return ids

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if not hasattr(self, "_kept_index"):  # called directly (tests): dedup within these docs only
            docs = list(docs)
            digests = np.fromiter((document_digest(d.text) for d in docs), dtype=np.uint64)
            _, first_index, inverse = np.unique(digests, return_index=True, return_inverse=True)
            self._kept_index, self._part_offsets = first_index[inverse], np.array([0, len(docs)])
            self._kept_ids = {int(i): docs[int(i)].id for i in first_index}
            part = 0
        base = int(self._part_offsets[part])
        for row, doc in enumerate(docs):
            kept = int(self._kept_index[base + row])
            if kept != base + row:
                doc.meta["duplicate_of"] = self._kept_ids.get(kept)
                doc.reject("duplicate_document")
            yield doc
