"""Books: Project Gutenberg plain texts and Books3 (as The Pile ships it) -> deduplicated books.

LLaMA-1 (Touvron et al. 2023, sec. 2): "Gutenberg and Books3 [4.5%]. We include two book corpora in
our training dataset: the Gutenberg Project, which contains books that are in the public domain, and
the Books3 section of ThePile [...]. We perform deduplication at the book level, removing books with
more than 90% content overlap."

Two stages:
  books_ingest  one Document per book: PG header/footer/license removed (c-w/gutenberg's
                strip_headers markers), Books3 jsonl.zst records streamed.
  books_dedup   MinHash candidates, then an exact shingle-overlap check; near-duplicates (overlap
                above 0.9) collapse to one book per cluster.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zstandard
from datasketch import MinHash, MinHashLSHEnsemble

from pipeline.documents import Document, StageError, read_documents
from pipeline.stage import ReaderConfig, Stage, StageConfig

SOURCE = "books"

# ---------------------------------------------------------------------------------------------
# Project Gutenberg header/footer markers: the lists of c-w/gutenberg
# (gutenberg/_domain_model/text.py, Apache-2.0), itself a port of Johannes Krugel's strip_headers.cpp.
# A line that STARTS with a header marker ends the header (everything so far is dropped; checked
# within the first 600 kept lines); a line starting with a footer marker starts the footer
# (checked from kept line 100 on, so title pages mentioning "Project Gutenberg" survive).

GUTENBERG_HEADER_MARKERS = (
    "*END*THE SMALL PRINT",
    "*** START OF THE PROJECT GUTENBERG",
    "*** START OF THIS PROJECT GUTENBERG",
    "This etext was prepared by",
    "E-text prepared by",
    "Produced by",
    "Distributed Proofreading Team",
    "Proofreading Team at http://www.pgdp.net",
    "http://gallica.bnf.fr)",
    "      http://archive.org/details/",
    "http://www.pgdp.net",
    "by The Internet Archive)",
    "by The Internet Archive/Canadian Libraries",
    "by The Internet Archive/American Libraries",
    "public domain material from the Internet Archive",
    "Internet Archive)",
    "Internet Archive/Canadian Libraries",
    "Internet Archive/American Libraries",
    "material from the Google Print project",
    "*END THE SMALL PRINT",
    "***START OF THE PROJECT GUTENBERG",
    "This etext was produced by",
    "*** START OF THE COPYRIGHTED",
    "The Project Gutenberg",
    "http://gutenberg.spiegel.de/ erreichbar.",
    "Project Runeberg publishes",
    "Beginning of this Project Gutenberg",
    "Project Gutenberg Online Distributed",
    "Gutenberg Online Distributed",
    "the Project Gutenberg Online Distributed",
    "Project Gutenberg TEI",
    "This eBook was prepared by",
    "http://gutenberg2000.de erreichbar.",
    "This Etext was prepared by",
    "This Project Gutenberg Etext was prepared by",
    "Gutenberg Distributed Proofreaders",
    "Project Gutenberg Distributed Proofreaders",
    "the Project Gutenberg Online Distributed Proofreading Team",
    "**The Project Gutenberg",
    "*SMALL PRINT!",
    "More information about this book is at the top of this file.",
    "tells you about restrictions in how the file may be used.",
    "l'authorization à les utilizer pour preparer ce texte.",
    "of the etext through OCR.",
    "*****These eBooks Were Prepared By Thousands of Volunteers!*****",
    "We need your donations more than ever!",
    " *** START OF THIS PROJECT GUTENBERG",
    "****     SMALL PRINT!",
    '["Small Print" V.',
    "      (http://www.ibiblio.org/gutenberg/",
    "and the Project Gutenberg Online Distributed Proofreading Team",
    "Mary Meehan, and the Project Gutenberg Online Distributed Proofreading",
    "                this Project Gutenberg edition.",
)
GUTENBERG_FOOTER_MARKERS = (
    "*** END OF THE PROJECT GUTENBERG",
    "*** END OF THIS PROJECT GUTENBERG",
    "***END OF THE PROJECT GUTENBERG",
    "End of the Project Gutenberg",
    "End of The Project Gutenberg",
    "Ende dieses Project Gutenberg",
    "by Project Gutenberg",
    "End of Project Gutenberg",
    "End of this Project Gutenberg",
    "Ende dieses Projekt Gutenberg",
    "        ***END OF THE PROJECT GUTENBERG",
    "*** END OF THE COPYRIGHTED",
    "End of this is COPYRIGHTED",
    "Ende dieses Etextes ",
    "Ende dieses Project Gutenber",
    "Ende diese Project Gutenberg",
    "**This is a COPYRIGHTED Project Gutenberg Etext, Details Above**",
    "Fin de Project Gutenberg",
    "The Project Gutenberg Etext of ",
    "Ce document fut presente en lecture",
    "Ce document fut présenté en lecture",
    "More information about this book is at the top of this file.",
    "We need your donations more than ever!",
    "END OF PROJECT GUTENBERG",
    " End of the Project Gutenberg",
    " *** END OF THIS PROJECT GUTENBERG",
)
# c-w's "legalese" section: from a line starting with the first marker to one starting with the
# second, lines are skipped (and not counted towards the 100/600-line limits).
GUTENBERG_LEGALESE_START_MARKERS = ("<<THIS ELECTRONIC VERSION OF",)
GUTENBERG_LEGALESE_END_MARKERS = ("SERVICE THAT CHARGES FOR DOWNLOAD",)
# The official "*** END OF" line is unambiguous, so it ends the text even in a book shorter than
# c-w's 100-line guard (which exists for the looser markers such as "by Project Gutenberg").
OFFICIAL_FOOTER = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
HEADER_SEARCH_LINES = 600
FOOTER_GUARD_LINES = 100


def strip_gutenberg_boilerplate(text: str, tidy: bool = False) -> str:
    """The book without the PG header, footer and license, line for line what c-w/gutenberg's
    strip_headers returns (the lines joined with "\n", the blank lines around the book and each
    line's trailing spaces kept as they are), except that the official "*** END OF" line ends the
    book even within c-w's first 100 lines (see OFFICIAL_FOOTER). `tidy`: also drop trailing
    whitespace on every line and the blank lines before and after the book."""
    kept: list[str] = []
    kept_count = 0  # lines kept so far, including those a later header marker throws away
    in_legalese = False
    for line in text.splitlines():
        if kept_count <= HEADER_SEARCH_LINES and line.startswith(GUTENBERG_HEADER_MARKERS):
            kept = []
            continue
        if OFFICIAL_FOOTER.match(line) or (
            kept_count >= FOOTER_GUARD_LINES and line.startswith(GUTENBERG_FOOTER_MARKERS)
        ):
            break
        if line.startswith(GUTENBERG_LEGALESE_START_MARKERS):
            in_legalese = True
            continue
        if line.startswith(GUTENBERG_LEGALESE_END_MARKERS):
            in_legalese = False
            continue
        if not in_legalese:
            kept.append(line.rstrip() if tidy else line)
            kept_count += 1
    return "\n".join(kept).strip("\n") if tidy else "\n".join(kept)


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding used): UTF-8 (BOM dropped), else Latin-1, which decodes any byte sequence
    (PG's older files are ISO-8859-1; a Windows-1252 file loses only its curly quotes)."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def gutenberg_header_fields(text: str) -> dict[str, Any]:
    """Title, author and ebook number from the PG header (first 120 lines); continuation lines
    of a field are indented or non-empty lines without a "Key:" before the next blank line."""
    fields: dict[str, Any] = {}
    lines = text.splitlines()[:120]
    for index, line in enumerate(lines):
        match = re.match(r"^(Title|Author):\s*(.*\S)", line)
        if match and match.group(1).lower() not in fields:
            value = match.group(2)
            for follow in lines[index + 1 : index + 4]:
                if not follow.strip() or re.match(r"^\w[\w ]*:", follow):
                    break
                value += " " + follow.strip()
            fields[match.group(1).lower()] = re.sub(r"\s+", " ", value)
    number = re.search(r"\[\s*E(?:Book|book|text|Text|BOOK)\s*#\s*(\d+)\s*\]", text[:20000])
    if number:
        fields["ebook_number"] = int(number.group(1))
    return fields


class TruncatedZstd(Exception):
    pass


class OversizedLine:
    """A line longer than the cap, read past without being kept: only its size."""

    def __init__(self, size: int):
        self.size = size


# Not from Books3 or RedPajama: a cap on one JSON line of a shard, so a zstd bomb (60 KB that
# inflate to gigabytes of one line) costs at most this much memory. A long Books3 book is a few MB.
MAX_LINE_BYTES = 64 << 20
_ZSTD_MAGIC = 0xFD2FB528


def zstd_cut_short(fh) -> str | None:
    """Why the zstd stream in `fh` ends inside a frame (None when every frame is whole), from the
    frame and block headers alone (RFC 8878 3.1): one small read per block, nothing inflated."""
    size = fh.seek(0, 2)
    pos = 0
    while pos < size:
        fh.seek(pos)
        head = fh.read(18)  # the longest frame header
        magic = int.from_bytes(head[:4], "little")
        if len(head) >= 8 and magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != _ZSTD_MAGIC:
            return None if len(head) >= 4 else f"stream ends inside a zstd frame header (byte {pos})"
        try:
            pos += zstandard.frame_header_size(head)
        except zstandard.ZstdError:
            return f"stream ends inside a zstd frame header (byte {pos})"
        checksum = 4 if head[4] & 0x04 else 0
        while True:
            fh.seek(pos)
            block = int.from_bytes(fh.read(3).ljust(3, b"\xff"), "little")
            block_type, block_size = (block >> 1) & 3, block >> 3
            pos += 3 + (1 if block_type == 1 else block_size)  # an RLE block stores one byte
            if pos > size:
                return f"stream ends inside a zstd frame (a block runs past byte {size})"
            if block & 1:  # the frame's last block
                break
        pos += checksum
    return None if pos == size else f"stream ends inside a zstd frame (checksum past byte {size})"


def zstd_lines(fh, max_line_bytes: int = MAX_LINE_BYTES, chunk_size: int = 1 << 20) -> Iterator[bytes | OversizedLine]:
    """The lines of a (multi-frame) zstd stream, as bytes, without their newline; a line longer
    than `max_line_bytes` comes out as an OversizedLine (its bytes are read past, never held).

    zstandard's stream_reader returns at most `chunk_size` bytes per read, so memory stays bounded
    (a decompressobj returns everything a chunk inflates to at once: a 60 KB bomb is 2 GB in one
    call). But the reader ends silently at a truncated frame (0.25), so a cut-off shard would look
    complete: the frame headers are checked first (zstd_cut_short), and lines decoded before the
    cut come out before TruncatedZstd is raised. Lines are bytes so a bad byte costs one record,
    not the rest of the shard."""
    cut = zstd_cut_short(fh)
    fh.seek(0)
    reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True, closefd=False)
    parts: list[bytes] = []  # the current line so far
    size = 0
    skipped: int | None = None  # bytes of an oversized line read past so far
    while chunk := reader.read(chunk_size):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            start = end + 1
            if skipped is not None or size + len(piece) > max_line_bytes:
                yield OversizedLine((skipped if skipped is not None else size) + len(piece))
            else:
                parts.append(piece)
                yield b"".join(parts)
            parts, size, skipped = [], 0, None
        piece = chunk[start:]
        if skipped is not None:
            skipped += len(piece)
        elif size + len(piece) > max_line_bytes:
            parts, size, skipped = [], 0, size + len(piece)
        else:
            parts.append(piece)
            size += len(piece)
    if cut:
        raise TruncatedZstd(f"{cut} ({size or skipped or 0} bytes of a partial line)")
    if skipped is not None:
        yield OversizedLine(skipped)
    elif size:
        yield b"".join(parts)


class BooksIngestConfig(ReaderConfig):
    # Not from the paper. A PG "book" under ~one printed page is an index, a placeholder or an
    # audio-book stub, not book-length prose.
    min_chars: int = 1000
    # False (c-w/gutenberg): a Gutenberg book is exactly what strip_headers returns, with the blank
    # lines around it (4-8 before and 3-7 after on c-w's test books) and trailing spaces kept.
    # True: drop them too; a deliberate deviation for tidier text (no token of the book changes).
    tidy_whitespace: bool = False


class BooksIngest(Stage):
    """Gutenberg .txt files and Books3 .jsonl.zst shards -> one Document per book."""

    name = "books_ingest"
    parallel_parts = True  # one book file or Books3 shard per part, read on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "raw"
    raw_patterns = ("*.txt", "*.jsonl.zst")
    Config = BooksIngestConfig
    description = "Project Gutenberg texts (header/footer/license removed) and Books3 records."

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{path}: book file not found")
        if path.stat().st_size == 0:
            yield Document(id=f"{SOURCE}/{path.name}@0", text="", source=SOURCE).reject("empty_file")
        elif path.name.endswith(".jsonl.zst"):
            yield from self._books3(path)
        else:
            yield self._gutenberg(path)

    def _length_check(self, doc: Document) -> Document:
        if not doc.rejected and len(doc.text.strip()) < self.config.min_chars:
            doc.reject("too_short")
        return doc

    def _gutenberg(self, path: Path) -> Document:
        raw, encoding = decode_text(path.read_bytes())
        fields = gutenberg_header_fields(raw)
        by_name = re.match(r"^(?:pg)?(\d+)(?:\D|$)", path.name)
        number = by_name.group(1) if by_name else str(fields.get("ebook_number", path.stem))
        meta: dict[str, Any] = {"format": "gutenberg", "encoding": encoding}
        meta |= {key: fields[key] for key in ("title", "author") if key in fields}
        doc = Document(
            id=f"{SOURCE}/gutenberg/{number}",
            text=strip_gutenberg_boilerplate(raw, tidy=self.config.tidy_whitespace),
            source=SOURCE,
            meta=meta,
        )
        return self._length_check(doc)

    def _books3(self, path: Path) -> Iterator[Document]:
        stem = path.name[: -len(".jsonl.zst")]
        line_number = 0
        with open(path, "rb") as fh:
            try:
                for raw_line in zstd_lines(fh):
                    line_number += 1
                    if isinstance(raw_line, OversizedLine):
                        yield Document(id=f"{SOURCE}/books3/{stem}/{line_number}", text="", source=SOURCE).reject(
                            f"unreadable_record:line_too_long ({raw_line.size} bytes)"
                        )
                    elif raw_line.strip():
                        yield self._books3_record(stem, line_number, raw_line)
            except (TruncatedZstd, zstandard.ZstdError) as exc:
                # Records before the damage are already out; this row accounts for the rest.
                code = "truncated_zstd" if isinstance(exc, TruncatedZstd) else "unreadable_file"
                yield Document(id=f"{SOURCE}/books3/{stem}@{line_number + 1}", text="", source=SOURCE).reject(
                    f"{code}:{str(exc)[:80]}"
                )
                return
        if line_number == 0:
            yield Document(id=f"{SOURCE}/books3/{stem}@0", text="", source=SOURCE).reject("empty_file")

    def _books3_record(self, stem: str, line_number: int, raw_line: bytes) -> Document:
        doc_id = f"{SOURCE}/books3/{stem}/{line_number}"
        try:
            record = json.loads(raw_line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            excerpt = raw_line[:200].decode("utf-8", "replace")
            return Document(id=doc_id, text=excerpt, source=SOURCE).reject(f"unreadable_record:{type(exc).__name__}")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            return Document(id=doc_id, text="", source=SOURCE).reject("unreadable_record:no_text")
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        return self._length_check(
            Document(id=doc_id, text=record["text"], source=SOURCE, meta=dict(meta) | {"format": "books3"})
        )


# ---------------------------------------------------------------------------------------------
# Book-level near-deduplication
#
# A book becomes the set of its word 5-grams ("shingles"), each a 64-bit hash. Words are hashed
# once per distinct word (blake2b), and a shingle's hash combines its five word hashes with odd
# multipliers (uint64 arithmetic in numpy), so a whole book is hashed in a few numpy passes instead
# of one Python hash call per shingle (what datasketch's update_batch does).

_WORD = re.compile(r"\w+")
# Odd 64-bit multipliers (digits of pi and e): a shingle hash is sum(word_hash[k] * M[k]) mod 2^64.
_SHINGLE_MULTIPLIERS = (
    0x243F6A8885A308D3, 0x13198A2E03707345, 0xA4093822299F31D1, 0x082EFA98EC4E6C89, 0x452821E638D01377,
    0xBE5466CF34E90C6D, 0xC0AC29B7C97C50DD, 0x3F84D5B5B5470917, 0x9216D5D98979FB1B, 0xB7E151628AED2A6B,
)  # fmt: skip


def shingle_array(text: str, size: int) -> np.ndarray:
    r"""The distinct 64-bit hashes of the word `size`-grams of a book (lower-cased \w+ words,
    punctuation ignored), sorted (np.unique). A text shorter than `size` words is one shingle."""
    if size > len(_SHINGLE_MULTIPLIERS):
        raise ValueError(f"shingles of more than {len(_SHINGLE_MULTIPLIERS)} words are not supported")
    words = _WORD.findall(text.lower())
    if len(words) < size:
        words += [""] * (size - len(words))  # a tiny text is still one shingle, not zero
    table: dict[str, int] = {}
    for word in set(words):
        table[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    word_hashes = np.fromiter(map(table.__getitem__, words), dtype=np.uint64, count=len(words))
    count = len(words) - size + 1
    shingles = np.zeros(count, dtype=np.uint64)
    for k in range(size):
        shingles += word_hashes[k : k + count] * np.uint64(_SHINGLE_MULTIPLIERS[k])
    return np.unique(shingles)


def shingle_hashes(text: str, size: int) -> set[int]:
    return set(shingle_array(text, size).tolist())


def content_overlap(a: set[int] | np.ndarray, b: set[int] | np.ndarray) -> float:
    """|A ∩ B| / min(|A|, |B|): the share of the smaller book's shingles found in the other.
    A novel reprinted inside an anthology overlaps it 100%, though their Jaccard is low."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        common = len(np.intersect1d(a, b, assume_unique=True))
    else:
        common = len(set(a) & set(b))
    return common / min(len(a), len(b))


# MurmurHash3's 32-bit finalizer, which datasketch (2.x, scheme "affine32") applies to each hash
# value before its affine permutations h -> a*h + b mod 2^32.
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


def minhash_signature(shingles: np.ndarray, permutations: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """datasketch's MinHash (scheme affine32) of a set of shingles, computed in numpy over the whole
    array: identical hash values to MinHash(permutations).update_batch(values) with an identity
    hashfunc on the same 32-bit values (the top half of each 64-bit shingle hash)."""
    a, b = permutations
    signature = np.full(a.shape[0], np.iinfo(np.uint32).max, dtype=np.uint32)
    values = (shingles >> np.uint64(32)).astype(np.uint32)
    s1, m1, s2, m2, s3 = _FMIX32
    values = values ^ (values >> np.uint32(s1))
    values = values * np.uint32(m1)
    values = values ^ (values >> np.uint32(s2))
    values = values * np.uint32(m2)
    values = values ^ (values >> np.uint32(s3))
    for start in range(0, len(values), chunk):
        block = values[start : start + chunk, None] * a + b  # uint32: wraps mod 2^32
        np.minimum(signature, block.min(axis=0), out=signature)
    return signature


class BooksDedupConfig(StageConfig):
    # LLaMA-1 sec. 2: "removing books with more than 90% content overlap".
    overlap_threshold: float = 0.9
    # Word 5-grams: the shingle size of the Gopher/RefinedWeb-style MinHash dedup (not given by
    # the paper).
    shingle_words: int = 5
    # datasketch defaults; 128 permutations keep the MinHash estimate within ~±0.09 (1/sqrt(128)).
    num_perm: int = 128
    # Candidate recall: MinHash LSH (containment) finds pairs whose estimated containment exceeds
    # this, well below overlap_threshold so estimation error does not lose true pairs; each
    # candidate is then checked exactly.
    candidate_threshold: float = 0.7


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class BooksDedup(Stage):
    """Removes books that overlap another book by more than 90% (one kept per cluster).

    prepare() makes two passes over the books, holding at most one book's text at a time:
      1. every book -> its MinHash signature (numpy, see minhash_signature) and shingle count;
         a datasketch MinHashLSHEnsemble (containment, not Jaccard: plain MinHashLSH would miss a
         short book contained in a long one) gives the candidate pairs;
      2. the books of candidate pairs only -> their exact shingle sets; each pair's overlap
         |A ∩ B| / min(|A|, |B|) is computed exactly and pairs above the threshold are joined into
         clusters (union-find: a chain of near-duplicates is one cluster).
    Memory: one signature per book (num_perm x 4 bytes) plus the shingle sets of candidate books.
    Each cluster keeps its longest book (ties: smallest id); the others are rejected as
    near_duplicate_book:<kept id>, and the clusters with their verified pair overlaps go to the
    manifest's stats."""

    name = "books_dedup"
    source = SOURCE
    reads = "documents"
    Config = BooksDedupConfig
    description = "Book-level near-dedup: MinHash LSH candidates, exact overlap > 0.9, one book per cluster."
    parallel_parts = True  # process() only reads duplicate_of, which prepare() fills
    # The sketch pass and the parts are cluster jobs; duplicate_of (one entry per removed book)
    # travels with them. The LSH index itself is built in one process: 4 x num_perm bytes per book,
    # ~140 MB for the 270k books of Gutenberg + Books3 (docs/SCALING.md).
    remote_parts = True

    def __init__(self, config=None, refs=None):
        super().__init__(config, refs)
        self.duplicate_of: dict[str, str] = {}  # removed book id -> kept book id
        self._wanted: list[str] = []  # the books of candidate pairs, while their shingles are read
        self.permutations = MinHash(num_perm=self.config.num_perm, seed=1, scheme="affine32").permutations

    def sketch_part(self, path: Path) -> list[tuple[str, int, int, np.ndarray]]:
        """(id, distinct shingles, characters, signature) for every book of one part."""
        out = []
        for doc in read_documents(path, columns=["id", "text"]):
            shingles = shingle_array(doc.text, self.config.shingle_words)
            out.append((doc.id, len(shingles), len(doc.text), minhash_signature(shingles, self.permutations)))
        return out

    def candidate_shingles(self, path: Path) -> dict[str, np.ndarray]:
        """The shingle sets of the candidate books (`_wanted`) in one part."""
        wanted = set(self._wanted)
        return {doc.id: shingle_array(doc.text, self.config.shingle_words)
                for doc in read_documents(path, columns=["id", "text"]) if doc.id in wanted}

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        cfg = self.config
        self.duplicate_of = {}
        sizes: dict[str, int] = {}
        lengths: dict[str, int] = {}
        sketches: dict[str, MinHash] = {}
        for part in self.map_parts("sketch_part", [str(path) for path in inputs]):
            for book_id, size, length, signature in part:
                if book_id in sizes:
                    raise StageError(f"books_dedup: book id {book_id!r} appears twice in the input")
                sizes[book_id], lengths[book_id] = size, length
                sketches[book_id] = MinHash(seed=1, hashvalues=signature, scheme="affine32")
        if len(sizes) < 2:
            return {"books": len(sizes), "candidate_pairs": 0, "duplicate_pairs": 0, "books_removed": 0, "clusters": []}

        index = MinHashLSHEnsemble(threshold=cfg.candidate_threshold, num_perm=cfg.num_perm, num_part=8)
        index.index([(book_id, sketches[book_id], sizes[book_id]) for book_id in sorted(sizes)])
        candidates: set[tuple[str, str]] = set()
        for book_id in sorted(sizes):
            for other in index.query(sketches[book_id], sizes[book_id]):
                if other != book_id:
                    candidates.add((min(book_id, other), max(book_id, other)))

        # Pass 2: exact overlap of the candidate pairs, on the shingle sets of their books only.
        self._wanted = sorted({book_id for pair in candidates for book_id in pair})
        shingles: dict[str, np.ndarray] = {}
        if self._wanted:
            for found in self.map_parts("candidate_shingles", [str(path) for path in inputs]):
                shingles.update(found)
        self._wanted = []
        clusters = _UnionFind()
        overlaps: list[tuple[str, str, float]] = []
        for a, b in sorted(candidates):
            overlap = content_overlap(shingles[a], shingles[b])
            if overlap > cfg.overlap_threshold:
                overlaps.append((a, b, overlap))
                clusters.union(a, b)

        members: dict[str, list[str]] = {}
        for book_id in sorted({x for a, b, _ in overlaps for x in (a, b)}):
            members.setdefault(clusters.find(book_id), []).append(book_id)
        report = []
        for root, ids in sorted(members.items()):
            # The longest book carries the most text; ties go to the smallest id (deterministic).
            kept = min(ids, key=lambda i: (-lengths[i], i))
            for book_id in ids:
                if book_id != kept:
                    self.duplicate_of[book_id] = kept
            report.append(
                {
                    "kept": kept,
                    "removed": sorted(i for i in ids if i != kept),
                    "pairs": [
                        {"a": a, "b": b, "overlap": round(o, 4)} for a, b, o in overlaps if clusters.find(a) == root
                    ],
                }
            )
        return {
            "books": len(sizes),
            "candidate_pairs": len(candidates),
            "candidate_pairs_rejected_on_exact_overlap": len(candidates) - len(overlaps),
            "duplicate_pairs": len(overlaps),
            "books_removed": len(self.duplicate_of),
            "overlap_definition": "|shingles(a) & shingles(b)| / min(|shingles(a)|, |shingles(b)|)",
            "clusters": report,
        }

    def worker_state(self) -> dict[str, Any]:
        return {"duplicate_of": self.duplicate_of, "wanted": self._wanted}

    def restore(self, state: dict[str, Any]) -> None:
        self.duplicate_of, self._wanted = dict(state["duplicate_of"]), list(state["wanted"])

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        for doc in docs:
            kept = self.duplicate_of.get(doc.id)
            yield doc.reject(f"near_duplicate_book:{kept}") if kept else doc
