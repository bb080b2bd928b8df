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
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zstandard
from datasketch import MinHash, MinHashLSHEnsemble
from datasketch.lshensemble_partition import optimal_partitions

from pipeline.documents import Document, StageError, read_documents
from pipeline.exchange import ExchangeStage
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
    # The LSH Ensemble's set-size partitions (datasketch's num_part). Each partition's index is built
    # and queried by its own job, holding only the signatures of its books; more partitions mean less
    # memory per job and slightly better accuracy (datasketch), and more query work.
    lsh_partitions: int = 8


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


class BooksDedup(ExchangeStage):
    """Removes books that overlap another book by more than 90% (one kept per cluster).

    prepare() runs four passes, each a job per part, per LSH partition or per group of pairs (on a
    cluster with --dask/--ray), exchanging files in the artifacts folder (pipeline/exchange.py):
      1. per part: every book -> its MinHash signature (numpy, see minhash_signature), shingle count
         and length, spilled to a file; the driver gets the ids (to refuse duplicates) and a
         histogram of shingle counts;
      2. per set-size partition of datasketch's MinHashLSHEnsemble (containment, not Jaccard: plain
         MinHashLSH would miss a short book contained in a long one), with the partition bounds the
         ensemble would compute from that histogram: the partition's books indexed, every book
         queried -> candidate pairs. The union over partitions is what one whole ensemble returns
         (tests/test_books.py checks it against datasketch's own);
      3. per part: the exact shingle sets of the books of candidate pairs, spilled to a file;
      4. per group of candidate pairs: each pair's overlap |A ∩ B| / min(|A|, |B|), computed exactly
         from the spilled sets (memory-mapped), and the pairs above the threshold returned.
    The driver joins those pairs into clusters (union-find: a chain of near-duplicates is one
    cluster). Memory: a part's books one at a time; a partition's signatures (num_perm x 4 bytes a
    book, 1/lsh_partitions of the books or so); one pair's shingle sets; in the driver, the book ids
    and the candidate pairs. Each cluster keeps its longest book (ties: smallest id); the others are
    rejected as near_duplicate_book:<kept id>, and the clusters with their verified pair overlaps go
    to the manifest's stats."""

    name = "books_dedup"
    source = SOURCE
    reads = "documents"
    Config = BooksDedupConfig
    description = "Book-level near-dedup: MinHash LSH candidates, exact overlap > 0.9, one book per cluster."

    def __init__(self, config=None, refs=None):
        super().__init__(config, refs)
        self.duplicate_of: dict[str, str] = {}  # removed book id -> kept book id
        self._wanted: list[str] = []  # the books of candidate pairs, while their shingles are spilled
        self.permutations = MinHash(num_perm=self.config.num_perm, seed=1, scheme="affine32").permutations

    # -- pass 1 (the parts): signatures, shingle counts and lengths
    def _sketch_part(self, part: int) -> tuple[list[str], dict[int, int]]:
        ids, signatures, sizes = [], [], []
        for doc in read_documents(self._inputs[part], columns=["id", "text"]):
            shingles = shingle_array(doc.text, self.config.shingle_words)
            ids.append(doc.id)
            signatures.append(minhash_signature(shingles, self.permutations))
            sizes.append((len(shingles), len(doc.text)))
        np.save(self._path("signatures", part), np.array(signatures, dtype=np.uint32).reshape(-1, self.config.num_perm))
        np.save(self._path("sizes", part), np.array(sizes, dtype=np.int64).reshape(-1, 2))
        self._path("ids", part, suffix=".json").write_text(json.dumps(ids))
        return ids, dict(Counter(size for size, _ in sizes))

    def _sketches(self, part: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, signatures, shingle counts) of one part, as pass 1 spilled them."""
        ids = json.loads(self._path("ids", part, suffix=".json").read_text())
        return ids, self.load(self._path("signatures", part), mmap=True), self.load(self._path("sizes", part))[:, 0]

    def _minhash(self, signature: np.ndarray) -> MinHash:
        return MinHash(seed=1, hashvalues=np.array(signature), scheme="affine32")

    # -- pass 2 (the LSH partitions): one size range's index, queried with every book
    def _query_size_range(self, bounds: tuple[int, int]) -> list[tuple[str, str]]:
        lower, upper = bounds
        members = []
        for part in range(len(self._inputs)):
            ids, signatures, sizes = self._sketches(part)
            for row in np.flatnonzero((sizes >= lower) & (sizes <= upper)).tolist():
                members.append((ids[row], self._minhash(signatures[row]), int(sizes[row])))
        # One partition of the whole ensemble: built alone, its upper bound is its largest book's
        # shingle count, as in the whole ensemble, so a query probes it with the same (b, r).
        index = MinHashLSHEnsemble(threshold=self.config.candidate_threshold, num_perm=self.config.num_perm, num_part=1)
        index.index(members)
        del members
        pairs: set[tuple[str, str]] = set()
        for part in range(len(self._inputs)):
            ids, signatures, sizes = self._sketches(part)
            for row, book_id in enumerate(ids):
                for other in index.query(self._minhash(signatures[row]), int(sizes[row])):
                    if other != book_id:
                        pairs.add((min(book_id, other), max(book_id, other)))
        return sorted(pairs)

    # -- pass 3 (the parts): the shingle sets of the candidate books
    def _spill_candidate_shingles(self, part: int) -> list[tuple[str, int, int, int]]:
        """Write the part's candidate books' shingles end to end; (id, start, end, characters) each."""
        wanted = set(self._wanted)
        found, arrays, start = [], [], 0
        for doc in read_documents(self._inputs[part], columns=["id", "text"]):
            if doc.id in wanted:
                shingles = shingle_array(doc.text, self.config.shingle_words)
                found.append((doc.id, start, start + len(shingles), len(doc.text)))
                arrays.append(shingles)
                start += len(shingles)
        np.save(self._path("shingles", part), np.concatenate(arrays) if arrays else np.zeros(0, np.uint64))
        return found

    # -- pass 4 (groups of pairs): exact overlaps
    def _check_pairs(self, pairs: list[tuple[str, str, list[int], list[int]]]) -> list[tuple[str, str, float]]:
        def shingles(where: list[int]) -> np.ndarray:
            part, start, end = where
            return np.asarray(self.load(self._path("shingles", part), mmap=True)[start:end])

        above = []
        for a, b, where_a, where_b in pairs:
            overlap = content_overlap(shingles(where_a), shingles(where_b))
            if overlap > self.config.overlap_threshold:
                above.append((a, b, overlap))
        return above

    def sketch(self, inputs: list[Path]) -> Counter[int]:
        """Pass 1 over `inputs` (in the exchange): the histogram of the books' shingle counts."""
        self.open_exchange(inputs)
        seen: set[str] = set()
        size_counts: Counter[int] = Counter()
        for ids, counts in self.map_parts("_sketch_part", list(range(len(inputs)))):
            for book_id in ids:
                if book_id in seen:
                    raise StageError(f"books_dedup: book id {book_id!r} appears twice in the input")
                seen.add(book_id)
            size_counts.update({int(size): count for size, count in counts.items()})
        return size_counts

    def candidate_pairs(self, size_counts: Counter[int]) -> set[tuple[str, str]]:
        """Pass 2: the LSH Ensemble's candidate pairs (a < b), one job per size partition."""
        sizes = np.array(sorted(size_counts))
        bounds = [(int(lower), int(upper)) for lower, upper in
                  optimal_partitions(sizes, np.array([size_counts[s] for s in sizes]), self.config.lsh_partitions)]
        candidates: set[tuple[str, str]] = set()
        for found in self.map_parts("_query_size_range", bounds):
            candidates.update(tuple(pair) for pair in found)
        return candidates

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self.duplicate_of = {}
        size_counts = self.sketch(inputs)
        parts = list(range(len(inputs)))
        if sum(size_counts.values()) < 2:
            return {"books": sum(size_counts.values()), "candidate_pairs": 0, "duplicate_pairs": 0, "books_removed": 0, "clusters": []}
        candidates = self.candidate_pairs(size_counts)

        located: dict[str, tuple[list[int], int]] = {}  # candidate book -> ([part, start, end], characters)
        self._wanted = sorted({book_id for pair in candidates for book_id in pair})
        if self._wanted:
            for part, found in zip(parts, self.map_parts("_spill_candidate_shingles", parts)):
                for book_id, start, end, characters in found:
                    located[book_id] = ([part, start, end], characters)
        self._wanted = []
        pairs = [(a, b, located[a][0], located[b][0]) for a, b in sorted(candidates)]
        groups = max(1, min(self.partitions, len(pairs)))
        overlaps: list[tuple[str, str, float]] = []
        for found in self.map_parts("_check_pairs", [pairs[g::groups] for g in range(groups)] if pairs else []):
            overlaps += [tuple(row) for row in found]
        overlaps.sort()

        clusters = _UnionFind()
        for a, b, _ in overlaps:
            clusters.union(a, b)
        members: dict[str, list[str]] = {}
        for book_id in sorted({x for a, b, _ in overlaps for x in (a, b)}):
            members.setdefault(clusters.find(book_id), []).append(book_id)
        report = []
        for root, ids in sorted(members.items()):
            # The longest book carries the most text; ties go to the smallest id (deterministic).
            kept = min(ids, key=lambda i: (-located[i][1], i))
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
            "books": int(sum(size_counts.values())),
            "candidate_pairs": len(candidates),
            "candidate_pairs_rejected_on_exact_overlap": len(candidates) - len(overlaps),
            "duplicate_pairs": len(overlaps),
            "books_removed": len(self.duplicate_of),
            "overlap_definition": "|shingles(a) & shingles(b)| / min(|shingles(a)|, |shingles(b)|)",
            "clusters": report,
        }

    def worker_state(self) -> dict[str, Any]:
        return super().worker_state() | {"duplicate_of": self.duplicate_of, "wanted": self._wanted}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.duplicate_of, self._wanted = dict(state["duplicate_of"]), list(state["wanted"])

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        for doc in docs:
            kept = self.duplicate_of.get(doc.id)
            yield doc.reject(f"near_duplicate_book:{kept}") if kept else doc
