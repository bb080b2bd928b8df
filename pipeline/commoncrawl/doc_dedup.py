"""cc_doc_dedup: exact document deduplication across all input parts.

The key of a page is the SHA-1 of its text after `normalize_for_dedup` (cc_net's line
normalization: lowercase, digits -> 0, Unicode punctuation and control characters removed, each
line stripped) applied line by line, empty lines dropped, lines joined with "\n": two pages that
differ only in case, numbers, spacing or typographic punctuation are the same page. The first
occurrence (part order, then row order) is kept; later copies are rejected "duplicate_document"
with meta["duplicate_of"] naming the kept id. A digest is the first 8 bytes of the SHA-1 (uint64,
little-endian, as cc_net's line hashes).

No process holds a whole dump's digests: the partitioned passes of pipeline/exact_dedup.py, whose
files live in the stage's artifacts folder; the output is the same bytes whatever the partition
count, worker count or executor.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np

from pipeline.exact_dedup import FirstCopyDedup
from pipeline.stage import StageConfig
from pipeline.text import HASH_BYTES, dedup_key


def document_digest(text: str) -> int:
    """SHA-1 of the non-empty `normalize_for_dedup` lines joined with "\n", first 8 bytes."""
    normalized = b"\n".join(key for key in map(dedup_key, text.split("\n")) if key)
    return int.from_bytes(hashlib.sha1(normalized).digest()[:HASH_BYTES], "little")


class DocDedupConfig(StageConfig):
    pass  # no threshold: exact duplicates only (near-duplicate dedup is a later issue)


class CCDocDedup(FirstCopyDedup):
    name = "cc_doc_dedup"
    source = "cc"
    Config = DocDedupConfig
    description = "exact page dedup on the SHA-1 of the normalized text; the first copy is kept"
    DIGEST_WORDS = 1
    duplicate_reason = "duplicate_document"

    def digests(self, texts: Iterator[str]) -> np.ndarray:
        return np.fromiter(map(document_digest, texts), dtype=np.uint64)

    def dedup_stats(self, texts: int, duplicates: int) -> dict[str, Any]:
        return {"documents_hashed": texts, "unique_documents": texts - duplicates,
                "duplicate_documents": duplicates, "normalization": "normalize_for_dedup per line, sha1[:8]"}
