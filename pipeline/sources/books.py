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

import zstandard
from datasketch import MinHash, MinHashLSHEnsemble

from pipeline.documents import Document, StageError, read_documents
from pipeline.stage import Stage, StageConfig

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
# The official "*** END OF" line is unambiguous, so it ends the text even in a book shorter than
# c-w's 100-line guard (which exists for the looser markers such as "by Project Gutenberg").
OFFICIAL_FOOTER = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
HEADER_SEARCH_LINES = 600
FOOTER_GUARD_LINES = 100


def strip_gutenberg_boilerplate(text: str) -> str:
    """The book without the PG header, footer and license (c-w/gutenberg strip_headers rules)."""
    kept: list[str] = []
    kept_count = 0  # lines kept so far, including those a later header marker throws away
    for line in text.splitlines():
        if kept_count <= HEADER_SEARCH_LINES and line.startswith(GUTENBERG_HEADER_MARKERS):
            kept = []
            continue
        if OFFICIAL_FOOTER.match(line) or (
            kept_count >= FOOTER_GUARD_LINES and line.startswith(GUTENBERG_FOOTER_MARKERS)
        ):
            break
        kept.append(line.rstrip())
        kept_count += 1
    return "\n".join(kept).strip("\n")


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


def zstd_lines(fh, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a (multi-frame) zstd stream, as bytes, without their newline.

    Not zstandard's stream_reader: it ends silently at a truncated frame (0.25), so a cut-off shard
    would look complete. A decompressobj tells: its `eof` is False when the frame never ended.
    Lines are bytes so a bad byte costs one record, not the rest of the shard."""
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    frame_open = False  # input fed to the current frame, and its end not seen yet
    pending = b""
    while chunk := fh.read(chunk_size):
        while chunk:
            frame_open = True
            pending += frame.decompress(chunk)
            chunk = b""
            if frame.eof:  # a multi-frame file: the rest starts the next frame
                chunk, frame, frame_open = frame.unused_data, decompressor.decompressobj(), False
        *lines, pending = pending.split(b"\n")
        yield from lines
    if frame_open:
        raise TruncatedZstd(f"stream ends inside a zstd frame ({len(pending)} bytes of a partial line)")
    if pending:
        yield pending


class BooksIngestConfig(StageConfig):
    # Not from the paper. A PG "book" under ~one printed page is an index, a placeholder or an
    # audio-book stub, not book-length prose.
    min_chars: int = 1000


class BooksIngest(Stage):
    """Gutenberg .txt files and Books3 .jsonl.zst shards -> one Document per book."""

    name = "books_ingest"
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
            text=strip_gutenberg_boilerplate(raw),
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
                    if raw_line.strip():
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


def shingle_hashes(text: str, size: int) -> set[int]:
    """64-bit hashes of the word `size`-grams of a book (lower-cased words; punctuation ignored)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < size:
        words += [""] * (size - len(words))  # a tiny text is still one shingle, not zero
    return {
        int.from_bytes(hashlib.blake2b(" ".join(words[i : i + size]).encode(), digest_size=8).digest(), "little")
        for i in range(len(words) - size + 1)
    }


def content_overlap(a: set[int], b: set[int]) -> float:
    """|A ∩ B| / min(|A|, |B|): the share of the smaller book's shingles found in the other.
    A novel reprinted inside an anthology overlaps it 100%, though their Jaccard is low."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


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
    """Removes books that overlap another book by more than 90% (one kept per cluster)."""

    name = "books_dedup"
    source = SOURCE
    reads = "documents"
    Config = BooksDedupConfig
    description = "Book-level near-dedup: MinHash candidates, exact overlap > 0.9, one book per cluster."

    def __init__(self, config=None, refs=None):
        super().__init__(config, refs)
        self.duplicate_of: dict[str, str] = {}  # removed book id -> kept book id

    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        # Skeleton: every book's shingle set is held in memory (fine for thousands of books, not
        # for all of Books3: issue 4 makes this streaming / sharded).
        cfg = self.config
        shingles: dict[str, set[int]] = {}
        lengths: dict[str, int] = {}
        for path in inputs:
            for doc in read_documents(path, columns=["id", "text"]):
                shingles[doc.id] = shingle_hashes(doc.text, cfg.shingle_words)
                lengths[doc.id] = len(doc.text)
        if len(shingles) < 2:
            return {"books": len(shingles), "candidate_pairs": 0, "clusters": []}

        # LSH Ensemble indexes containment, not Jaccard: plain MinHashLSH would miss a short
        # book contained in a long one (overlap 1.0, Jaccard = |short|/|long|).
        sketches: dict[str, MinHash] = {}
        for book_id, hashes in shingles.items():
            sketch = MinHash(num_perm=cfg.num_perm, hashfunc=lambda h: h & 0xFFFFFFFF)
            sketch.update_batch(list(hashes))
            sketches[book_id] = sketch
        index = MinHashLSHEnsemble(threshold=cfg.candidate_threshold, num_perm=cfg.num_perm, num_part=8)
        index.index([(book_id, sketches[book_id], len(shingles[book_id])) for book_id in sorted(shingles)])

        candidates: set[tuple[str, str]] = set()
        for book_id in sorted(shingles):
            for other in index.query(sketches[book_id], len(shingles[book_id])):
                if other != book_id:
                    candidates.add((min(book_id, other), max(book_id, other)))

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
            "books": len(shingles),
            "candidate_pairs": len(candidates),
            "duplicate_pairs": len(overlaps),
            "books_removed": len(self.duplicate_of),
            "overlap_definition": "|shingles(a) & shingles(b)| / min(|shingles(a)|, |shingles(b)|)",
            "clusters": report,
        }

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        for doc in docs:
            kept = self.duplicate_of.get(doc.id)
            yield doc.reject(f"near_duplicate_book:{kept}") if kept else doc
