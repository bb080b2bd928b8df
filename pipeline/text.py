"""Text normalizers, one per purpose, shared by every stage that needs them.

The character sets and the order of the steps are cc_net's `text_normalizer.py`
(facebookresearch/cc_net), so hashes and perplexities are comparable with CCNet's:

- `normalize_for_dedup`: the key of cc_net's line deduplication (and, here, of exact document
  dedup): strip, lowercase, every digit -> "0", drop cc_net's Unicode punctuation and the control
  characters. ASCII punctuation is kept, accents are kept (cc_net does the same).
- `normalize_for_lm`: cc_net's `normalize(line)` with its defaults, applied before SentencePiece
  and KenLM: strip, lowercase, strip accents, digits -> "0", map Unicode punctuation to ASCII,
  drop control characters.
- `line_hash`: cc_net's `str_hash`: SHA-1 of the UTF-8 text, first 8 bytes read as a
  little-endian uint64 (cc_net reads them with `np.frombuffer(..., dtype=np.uint64)` on x86, i.e.
  little-endian; we pin the byte order so the value does not depend on the machine).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

# cc_net text_normalizer.UNICODE_PUNCT, verbatim (including its quirk "１" -> '"'; with the
# digit rule applied first, a fullwidth one has already become "0" by the time this map runs).
UNICODE_PUNCT: dict[str, str] = {
    "，": ",",
    "。": ".",
    "、": ",",
    "„": '"',
    "”": '"',
    "“": '"',
    "«": '"',
    "»": '"',
    "１": '"',
    "」": '"',
    "「": '"',
    "《": '"',
    "》": '"',
    "´": "'",
    "∶": ":",
    "：": ":",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "；": ";",
    "–": "-",
    "—": " - ",
    "．": ". ",
    "～": "~",
    "’": "'",
    "…": "...",
    "━": "-",
    "〈": "<",
    "〉": ">",
    "【": "[",
    "】": "]",
    "％": "%",
    "►": "-",
}

# cc_net: control characters are code points 0-31 and 127-159.
NON_PRINTING_CHARS = "".join(map(chr, list(range(0, 32)) + list(range(127, 160))))

_UNICODE_PUNCT_RE = re.compile("[" + re.escape("".join(UNICODE_PUNCT)) + "]")
_NON_PRINTING_RE = re.compile("[" + re.escape(NON_PRINTING_CHARS) + "]")
_PUNCT_OR_NON_PRINTING_RE = re.compile("[" + re.escape("".join(UNICODE_PUNCT) + NON_PRINTING_CHARS) + "]")
_DIGIT_RE = re.compile(r"\d")  # Unicode digits too, as in cc_net (Python's \d)

HASH_BYTES = 8
HASH_DTYPE = np.dtype("<u8")  # little-endian uint64, see module docstring


def replace_unicode_punct(text: str) -> str:
    return "".join(UNICODE_PUNCT.get(c, c) for c in text)


def remove_unicode_punct(text: str) -> str:
    return _UNICODE_PUNCT_RE.sub("", text)


def remove_non_printing_chars(text: str) -> str:
    return _NON_PRINTING_RE.sub("", text)


def strip_accents(text: str) -> str:
    """NFD, then drop the combining marks (category Mn): "café" -> "cafe"."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def digits_to_zero(text: str) -> str:
    return _DIGIT_RE.sub("0", text)


def normalize_for_dedup(line: str) -> str:
    """cc_net `normalize_for_dedup`: the key two lines must share to count as duplicates."""
    line = line.strip()
    if not line:
        return line
    # lower -> digits -> removal, inlined: this runs once per line of the crawl.
    return _PUNCT_OR_NON_PRINTING_RE.sub("", _DIGIT_RE.sub("0", line.lower()))


# The same normalization on an ASCII line, as bytes: lowercase, digits -> "0", control characters
# deleted (cc_net's Unicode punctuation is all non-ASCII). bytes.translate runs ~2.5x faster than
# the two regex passes, and an English crawl is mostly ASCII lines (78% on the bench corpus).
_ASCII_DIGITS_TO_ZERO = bytes(ord("0") if chr(b).isdigit() else b for b in range(256))
_ASCII_CONTROL = bytes(c for c in range(128) if chr(c) in NON_PRINTING_CHARS)


def dedup_key(line: str) -> bytes:
    """`normalize_for_dedup(line)` as UTF-8 bytes (what is hashed), with a fast path for ASCII
    lines (`str.isascii` is O(1): CPython records it when the string is made)."""
    line = line.strip()
    if line.isascii():
        return line.lower().encode("ascii").translate(_ASCII_DIGITS_TO_ZERO, _ASCII_CONTROL)
    return _PUNCT_OR_NON_PRINTING_RE.sub("", _DIGIT_RE.sub("0", line.lower())).encode("utf-8", "surrogatepass")


def normalize_for_lm(line: str) -> str:
    """cc_net `normalize(line)` (accent=True, case=True, numbers=True, punct=1): the text the
    SentencePiece + KenLM perplexity model is trained on and scores."""
    line = line.strip()
    if not line:
        return line
    if line.isascii():  # most of an English crawl: no accents, no Unicode punctuation to map
        return remove_non_printing_chars(digits_to_zero(line.lower()))
    line = strip_accents(line.lower())
    line = digits_to_zero(line)
    line = replace_unicode_punct(line)
    return remove_non_printing_chars(line)


def line_hash(normalized: str) -> int:
    """cc_net `str_hash`: first 8 bytes of SHA-1 as a little-endian uint64."""
    return int.from_bytes(hashlib.sha1(normalized.encode("utf-8")).digest()[:HASH_BYTES], "little")


def line_hashes(normalized_lines: list[str] | list[bytes]) -> np.ndarray:
    """`line_hash` of many lines at once (str, or their UTF-8 bytes), as a uint64 array (the form
    the dedup indexes keep)."""
    # One C-level SHA-1 per line is the floor; the generator + slice measured faster than
    # map(sha1) + a numpy column slice of 20-byte digests (bench/cc_bench.py, hash limit row).
    digests = b"".join([sha1(s if isinstance(s, bytes) else s.encode("utf-8")).digest()[:HASH_BYTES]
                        for s in normalized_lines])
    return np.frombuffer(digests, dtype=HASH_DTYPE).astype(np.uint64)


def dedup_line_hashes(text: str) -> np.ndarray:
    """`line_hash(normalize_for_dedup(line))` for every "\n"-separated line of `text`, blank lines
    included (they get the hash of "", `EMPTY_LINE_HASH`)."""
    return line_hashes([dedup_key(line) for line in text.split("\n")])


sha1 = hashlib.sha1
EMPTY_LINE_HASH = np.uint64(int.from_bytes(sha1(b"").digest()[:HASH_BYTES], "little"))
