"""C4 (Raffel et al. 2020, "T5"): the allenai/c4 JSON-lines release and the T5 cleaning rules.

LLaMA §2 uses C4 as 15% of its mixture and says its preprocessing "also contains deduplication and
language identification steps: the main difference with CCNet is the quality filtering, which mostly
relies on heuristics such as presence of punctuation marks or the number of words and sentences in a
webpage". Those heuristics are the T5 paper's §2.2 rules, implemented by tensorflow/datasets
`c4_utils.clean_page`; `c4_quality` applies them line by line in the same order as that function,
then c4_utils' cross-page line deduplication (remove_duplicate_text).

Stages
  c4_ingest   raw *.json(.gz) / *.jsonl(.gz) lines {"text", "url", "timestamp"} -> Documents
  c4_quality  clean_page line/page rules + bad words + cross-page line dedup (smallest md5(url) keeps a line)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.documents import Document, write_documents, wrong_type
from pipeline.sources.ldnoobw import LDNOOBW_EN
from pipeline.exchange import ORDINAL_BITS, ExchangeStage, ordinal_range
from pipeline.stage import Judgement, ReaderConfig, Stage, StageConfig

SOURCE = "c4"

# ---------------------------------------------------------------------------------------------
# c4_ingest


def file_stem(path: Path) -> str:
    """'c4-train.00000-of-01024.json.gz' -> 'c4-train.00000-of-01024' (ids must not depend on compression)."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _excerpt(raw: bytes) -> str:
    return raw[:200].decode("utf-8", "replace")


# Not from C4 or RedPajama: a cap on one JSON line, so that a hostile or broken file (a gzip bomb
# of one endless line, a file with no newline) costs at most this much memory. C4 pages are a few
# KB and BigQuery's GitHub contents at most 1 MiB, so no real record comes near it.
MAX_LINE_BYTES = 64 << 20


def _skip_rest_of_line(fh, chunk: int = 1 << 20) -> int:
    """Read past the rest of an over-long line, a chunk at a time; the bytes skipped."""
    skipped = 0
    while piece := fh.readline(chunk):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


def read_json_lines(
    path: Path, source: str, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]] | Document]:
    """Stream a JSON-lines file (plain or gzip): (1-based line number, object) for each readable
    line, or a rejected Document for what cannot be read, so a reader never drops anything silently:
      unreadable_record:<why>  a line that is not UTF-8 / not JSON / not an object, or longer than
                               `max_line_bytes` ("line_too_long", read past in chunks, never held)
      truncated_file           a gzip cut short: lines before the damage are yielded, the rest is one row
      unreadable_file          a corrupt gzip stream
      empty_file               zero bytes, or only blank lines (blank lines carry no record)
    Shared by the C4 and GitHub readers (both are JSON lines)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    line_number = 0
    emitted = False

    def rejected(reason: str, line: int, excerpt: str = "") -> Document:
        return Document(
            id=f"{source}/{path.name}@{line}",
            text=excerpt,
            source=source,
            meta={"file": path.name, "line": line},
            reason=reason,
        )

    with opener(path, "rb") as fh:  # a missing file raises here: run_stage reports it
        try:
            while raw := fh.readline(max_line_bytes + 1):
                line_number += 1
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    emitted = True
                    size = len(raw) + _skip_rest_of_line(fh)
                    yield rejected(f"unreadable_record:line_too_long ({size} bytes)", line_number, _excerpt(raw))
                    continue
                if not raw.strip():
                    continue
                emitted = True
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield rejected("unreadable_record:invalid utf-8", line_number, _excerpt(raw))
                    continue
                except json.JSONDecodeError as exc:
                    yield rejected(f"unreadable_record:invalid json ({exc.msg})", line_number, _excerpt(raw))
                    continue
                if not isinstance(record, dict):
                    yield rejected("unreadable_record:not a json object", line_number, _excerpt(raw))
                    continue
                yield line_number, record
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            why = "truncated_file" if isinstance(exc, EOFError) else "unreadable_file"
            yield rejected(f"{why}:{type(exc).__name__}: {exc}", line_number + 1)
            return
    if not emitted:
        yield rejected("empty_file", 0)


# The release's fields this reader uses and the JSON type each must have when present.
C4_FIELD_TYPES = {"text": str, "url": str, "timestamp": str, "date": str}


class C4Ingest(Stage):
    """One Document per JSON line of the allenai/c4 release.

    id "c4/<file stem>/<line number>" (1-based line within the file: the release has no native id,
    and file + line is stable across rebuilds; two input files with the same stem in different
    folders would collide, which the release's naming avoids). The release calls the crawl time
    `timestamp`; some copies (e.g. OLMo's test fixture) call it `date`: both are accepted.
    Unreadable lines/files become rejected rows (see read_json_lines); a record without a string
    `text` is "unreadable_record:missing text".
    """

    name = "c4_ingest"
    parallel_parts = True  # one JSON-lines file per part, read on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "raw"
    raw_patterns = ("*.json.gz", "*.json", "*.jsonl.gz", "*.jsonl")
    description = "allenai/c4 JSON lines -> documents"

    class Config(ReaderConfig):
        pass

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        stem = file_stem(path)
        for item in read_json_lines(path, SOURCE):
            if isinstance(item, Document):
                yield item
                continue
            line_number, record = item
            text = record.get("text")
            if not isinstance(text, str):
                why = "missing text" if text is None else "text is not a string"
                yield Document(
                    id=f"{SOURCE}/{path.name}@{line_number}",
                    text=json.dumps(record, ensure_ascii=False)[:200],
                    source=SOURCE,
                    meta={"file": path.name, "line": line_number},
                    reason=f"unreadable_record:{why}",
                )
                continue
            if bad := wrong_type(record, C4_FIELD_TYPES):
                yield Document(id=f"{SOURCE}/{path.name}@{line_number}", text="", source=SOURCE,
                               meta={"file": path.name, "line": line_number}, reason=f"wrong_type:{bad}")
                continue
            yield Document(
                id=f"{SOURCE}/{stem}/{line_number}",
                text=text,
                source=SOURCE,
                meta={
                    "url": record.get("url"),
                    "timestamp": record.get("timestamp", record.get("date")),
                    "file": path.name,
                },
            )


# ---------------------------------------------------------------------------------------------
# c4_quality: T5 §2.2 as implemented by tensorflow_datasets/text/c4_utils.py (clean_page)

# c4_utils _END_MARKS: "lines that ended in a terminal punctuation mark (i.e. a period, exclamation
# mark, question mark, or end quotation mark)" (T5 §2.2). c4_utils also drops lines ending in "...".
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
# c4_utils _POLICY_SUBSTRINGS: cookie/privacy boilerplate lines (T5 §2.2 lists the same six).
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# c4_utils get_clean_page_fn: Wikipedia-style citation markers are cut from lines before the checks.
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")

# Sentence boundaries: terminal punctuation (optionally followed by closing quotes/brackets) then
# white space. c4_utils counts sentences with NLTK's punkt tokenizer (not a dependency here, and
# ~100x slower than this rule); this rule over-splits abbreviations ("Mr. Smith"), i.e. it is
# slightly more lenient on min_num_sentences than punkt.
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(\s+)")


def split_sentences(line: str) -> list[str]:
    sentences = []
    start = 0
    for match in _SENTENCE_BREAK.finditer(line):
        sentence = line[start : match.start(1)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end(1)
    tail = line[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def count_sentences(line: str) -> int:
    """len(split_sentences(line)) for a line kept by clean_page (stripped, ending in an end mark):
    every piece before a break holds its punctuation and the tail is non-empty, so the count is
    the number of breaks + 1, without building the pieces."""
    return len(_SENTENCE_BREAK.findall(line)) + 1


_WORD_RUN = re.compile(r"\w+")


# Word runs of a text at C speed: ASCII non-word bytes become spaces, then bytes.split (see BadWords).
_ASCII_NON_WORD_TO_SPACE = bytes(b if b >= 128 or chr(b).isalnum() or b == 0x5F else 0x20 for b in range(256))


class BadWords:
    r"""T5 §2.2: "removed any page that contained any word on the List of Dirty, Naughty, Obscene or
    Otherwise Bad Words". c4_utils' en rule is the regex r"(?:\W|^)(w1|w2|...)(?:\W|$)" on the lower
    case page: a listed entry flanked by non-word characters or the text's ends. For an entry made
    of word characters only ("anal") that is exactly "the entry is one of the page's maximal \w
    runs", a set lookup; an entry with spaces or symbols ("2 girls 1 cup", "s&m") is searched
    literally, with the same flanking test, only on pages that hold all of its word runs. Same
    verdicts as c4_utils, without a 400-way alternation tried at every character (~15 MB/s)."""

    def __init__(self, words: list[str] | tuple[str, ...]):
        words_lower = {w.lower() for w in words if w}
        singles = {w for w in words_lower if _WORD_RUN.fullmatch(w)}
        self.single = frozenset(w.encode() for w in singles)
        # phrases by their first word run: a page is searched only for phrases whose first run it has
        self.phrases: dict[bytes, list[tuple[frozenset[bytes], str]]] = {}
        self.runless: list[str] = []  # entries without any word character ("🖕")
        for phrase in sorted(words_lower - singles):
            runs = [run.encode() for run in _WORD_RUN.findall(phrase)]
            if runs:
                self.phrases.setdefault(runs[0], []).append((frozenset(runs), phrase))
            else:
                self.runless.append(phrase)

    def __bool__(self) -> bool:
        return bool(self.single or self.phrases or self.runless)

    def found_in(self, lower_text: str) -> bool:
        # Every \w run of the text is a token here; tokens holding non-ASCII bytes may also hold
        # non-word characters ("“word”"), so those are split again with re's \w. Extra tokens that
        # are not \w runs cannot equal a single-word entry, and phrases are checked exactly below.
        tokens = set(lower_text.encode("utf-8", "surrogatepass").translate(_ASCII_NON_WORD_TO_SPACE).split())
        if not lower_text.isascii():
            for token in [t for t in tokens if not t.isascii()]:
                tokens.update(run.encode() for run in _WORD_RUN.findall(token.decode("utf-8", "surrogatepass")))
        if not self.single.isdisjoint(tokens):
            return True
        for first in tokens.intersection(self.phrases):
            if any(parts <= tokens and _flanked_occurrence(lower_text, phrase) for parts, phrase in self.phrases[first]):
                return True
        return any(_flanked_occurrence(lower_text, phrase) for phrase in self.runless)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"  # re's \w


def _flanked_occurrence(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` with a non-word character or the text's end on each side: the
    c4_utils regex for one entry, by str.find (a leading look-behind keeps re from scanning fast)."""
    start = text.find(phrase)
    while start >= 0:
        end = start + len(phrase)
        if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
            return True
        start = text.find(phrase, start + 1)
    return False


def clean_page(
    text: str,
    *,
    min_words_per_line: int,
    min_num_sentences: int,
    max_word_length: int,
    bad_words: BadWords | None,
) -> tuple[list[str], str | None]:
    """c4_utils.clean_page, then its bad-words filter on the cleaned page: (kept lines, None) or
    ([], reject reason). The line checks run in the reference's order, so "{" or "lorem ipsum" only
    reject a page when they sit on an otherwise valid line."""
    page = _clean_page(text, min_words_per_line, min_num_sentences, max_word_length, bad_words)
    return page.lines, page.reason


class _CleanPage(NamedTuple):
    lines: list[str]
    reason: str | None


def _clean_page(
    text: str, min_words_per_line: int, min_num_sentences: int, max_word_length: int, bad_words: BadWords | None
) -> _CleanPage:
    valid_lines: list[str] = []
    lower_lines: list[str] = []
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        # c4_utils "lines-with-too-long-word" (line dropped, page kept); only a line longer than the
        # limit can hold such a word.
        if len(line) > max_word_length and any(len(word) > max_word_length for word in line.split()):
            continue
        if "[" in line:
            line = CITATION.sub("", line)
        if not line.endswith(END_MARKS) or line.endswith(ELLIPSIS):
            continue
        if len(line.split(None, min_words_per_line - 1)) < min_words_per_line:
            continue
        lower = line.lower()
        # Every substring the rules below look for contains one of these (the six policy strings
        # contain "cookie", "terms of use" or "privacy policy"): the rare lines that hold one go
        # through the rules one by one, in c4_utils' order.
        if (
            "{" in line
            or "lorem ipsum" in lower
            or "javascript" in lower
            or "cookie" in lower
            or "terms of use" in lower
            or "privacy policy" in lower
        ):
            if "lorem ipsum" in lower:
                return _CleanPage([], "lorem_ipsum")  # placeholder text (T5 §2.2)
            if "javascript" in lower:
                continue  # "Javascript must be enabled" notices (T5 §2.2)
            if "{" in line:
                return _CleanPage([], "curly_bracket")  # "removed any pages that contained a curly bracket"
            if any(p in lower for p in POLICY_SUBSTRINGS):
                continue
        sentences += count_sentences(line)
        valid_lines.append(line)
        lower_lines.append(lower)
    if sentences < min_num_sentences:
        return _CleanPage([], "too_few_sentences")
    # c4_utils applies its bad-words filter to the cleaned page, after clean_page.
    if bad_words and bad_words.found_in("\n".join(lower_lines)):
        return _CleanPage([], "bad_words")
    return _CleanPage(valid_lines, None)


def _line_key(line: str) -> bytes:
    """c4_utils _hash_text(line.strip().lower()): the MD5 of a cleaned line, case folded."""
    return hashlib.md5(line.strip().lower().encode("utf-8", "surrogatepass")).digest()


def _url_key(url: str) -> tuple[int, int]:
    """md5(url) as two big-endian words: ordering them is ordering c4_utils' hex digests."""
    digest = hashlib.md5(url.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def _line_words(key: bytes) -> tuple[int, int]:
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


_RECORD_WORDS = 5  # line key (2 words), url key (2 words), ordinal


class C4Quality(ExchangeStage):
    """C4's cleaning as its released code does it (tensorflow_datasets c4_utils, the code C4 en was
    built with): clean_page's line and page rules, the bad-words filter, then remove_duplicate_text.

    Rejection reasons: too_few_sentences, lorem_ipsum, curly_bracket, bad_words (clean_page), and
    duplicate_lines (a page left empty or with fewer than min_num_sentences sentences by the line
    dedup: c4_utils re-counts sentences after it, on the joined text; a page that loses no line but
    counts too few there is too_few_sentences). Kept pages carry the cleaned text; rejected pages
    keep their input text for inspection.

    Line dedup (c4_utils remove_duplicate_text): every line of every cleaned page is keyed by the MD5
    of its lower-cased text; of all the pages that hold a line, the one with the smallest MD5 of its
    URL keeps it and the others lose it; a line repeated inside a page keeps its first copy. (T5 §2.2
    words it as "discarded all but one of any three-sentence span"; the released code and data dedup
    whole lines, which is what this does.) Every cleaned page claims its lines, including one the
    dedup then leaves with too few sentences, as in c4_utils. The owner of a line depends only on the
    pages that hold it, so the stage runs in partitioned passes exchanging files in its artifacts
    folder (pipeline/exchange.py), each a job on a cluster or a forked process here:
      1. per part: clean every page (the cleaned texts go to a scratch Parquet file for pass 3) and
         write (line key, URL key, ordinal) of each distinct line of each cleaned page, sorted by
         partition (line key % partitions);
      2. per partition: the smallest URL key (then ordinal) of each line key owns it; the other
         (ordinal, line key) pairs are the lines to remove, sorted by ordinal;
      3. per part (the filter): its pages' cleaned texts minus their lines owned elsewhere.
    A pass holds one part's pages or 1/partitions of the line records (40 bytes each); the output is
    the same bytes whatever the partition count, worker count or executor.
    """

    name = "c4_quality"
    source = SOURCE
    reads = "documents"
    description = "C4's released cleaning: clean_page line/page rules + bad words + cross-page line dedup"

    class Config(StageConfig):
        # T5 §2.2: "only retained lines that contained at least 3 words". (c4_utils' code default
        # _MIN_WORDS_PER_LINE is 5: the paper and the released code disagree; we follow the paper.)
        min_words_per_line: int = 3
        # T5 §2.2: "discarded any page with fewer than 5 sentences". (c4_utils _MIN_NUM_SENTENCES = 3.)
        min_num_sentences: int = 5
        # c4_utils _MAX_WORD_LENGTH: lines holding a "word" longer than this are dropped.
        max_word_length: int = 1000
        # T5 §2.2: the full LDNOOBW English list (pipeline/sources/ldnoobw.py, 403 entries).
        bad_words: list[str] = list(LDNOOBW_EN)
        # c4_utils remove_duplicate_text: whole lines deduplicated across pages (the page with the
        # smallest md5(url) keeps a line). "none": no cross-page dedup (pages cleaned one by one).
        dedup: Literal["lines", "none"] = "lines"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bad_words = BadWords(self.config.bad_words)
        self._part: tuple[int, list[str | None], list[str | None], dict[int, set[tuple[int, int]]]] | None = None

    # -- pass 1: clean every page; the distinct lines of each cleaned page, split by partition
    def prepare(self, inputs: list[Path]) -> dict[str, Any]:
        self.open_exchange(inputs)
        lines = sum(self.map_parts("_clean_part", list(range(len(inputs)))))
        removed = sum(self.map_parts("_reduce_partition", list(range(self.partitions)))) if self.config.dedup == "lines" else 0
        return {"distinct_lines_of_cleaned_pages": int(lines), "lines_owned_by_another_page": int(removed),
                "line_key": "md5(line.strip().lower()); owner: smallest md5(url), then part and row order"}

    def _clean_part(self, part: int) -> int:
        c = self.config
        table = pq.read_table(self._inputs[part], columns=["text", "meta"])
        reasons: list[str | None] = []
        cleaned: list[str | None] = []
        records: list[tuple[int, int, int, int, int]] = []
        base = part << ORDINAL_BITS
        for row, (text, meta) in enumerate(zip(table["text"].to_pylist(), table["meta"].to_pylist())):
            page = _clean_page(text, c.min_words_per_line, c.min_num_sentences, c.max_word_length, self._bad_words)
            reasons.append(page.reason)
            cleaned.append(None if page.reason else "\n".join(page.lines))
            if page.reason is None and c.dedup == "lines":
                url = (json.loads(meta).get("url") if meta else None) or ""
                u0, u1 = _url_key(str(url))
                for key in {_line_key(line) for line in page.lines}:
                    records.append((*_line_words(key), u0, u1, base | row))
        pq.write_table(pa.table({"reason": pa.array(reasons, pa.string()), "text": pa.array(cleaned, pa.string())}),
                       self._path("cleaned", part, suffix=".parquet"))
        if c.dedup == "lines":
            array = np.array(records, dtype=np.uint64).reshape(-1, _RECORD_WORDS)
            partition = array[:, 0] % np.uint64(self.partitions)
            self.spill(part, partition, np.lexsort((*array.T[::-1], partition)), lines=array)
        return len(records)

    # -- pass 2: the owner of each line key; the lines every other page loses
    def _reduce_partition(self, partition: int) -> int:
        records = self.gather_partition(partition, "lines")
        records = records[np.lexsort(records.T[::-1])]  # by line key, then url key, then ordinal
        owner = np.ones(len(records), dtype=bool)
        owner[1:] = (records[1:, :2] != records[:-1, :2]).any(axis=1)
        losers = records[~owner][:, [4, 0, 1]]  # (ordinal, line key)
        np.save(self._path("removed", partition), losers[np.lexsort(losers.T[::-1])])
        return int(len(losers))

    # -- pass 3 (the parts)
    def _part_state(self, part: int) -> tuple[list[str | None], list[str | None], dict[int, set[tuple[int, int]]]]:
        """The part's clean_page verdicts and cleaned texts, and per row the line keys it loses."""
        if self._part is None or self._part[0] != part:
            table = pq.read_table(self._path("cleaned", part, suffix=".parquet"))
            removed: dict[int, set[tuple[int, int]]] = {}
            if self.config.dedup == "lines":
                low = ordinal_range(part)[0]
                for ordinal, k0, k1 in self.gather_part(part, "removed").tolist():
                    removed.setdefault(ordinal - low, set()).add((k0, k1))
            self._part = (part, table["reason"].to_pylist(), table["text"].to_pylist(), removed)
        return self._part[1:]

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        part_reasons, part_cleaned, removed = self._part_state(part)
        reasons: list[str | None] = []
        out: list[str] = []
        for i, text in enumerate(texts):
            row = first_row + i
            reason, cleaned = part_reasons[row], part_cleaned[row]
            if reason is None and self.config.dedup == "lines":
                # c4_utils counts the sentences of every deduplicated page again, on the joined text
                # (which can merge two lines into one sentence): too few after a line was removed is
                # duplicate_lines, too few with every line still there is too_few_sentences.
                cleaned, removed_lines = self._dedup_lines(cleaned, removed.get(row, set()))
                if not cleaned or len(split_sentences(cleaned)) < self.config.min_num_sentences:
                    reason = "duplicate_lines" if removed_lines else "too_few_sentences"
            reasons.append(reason)
            out.append(text if reason else cleaned)
        return Judgement(reasons, texts=out)

    def _dedup_lines(self, cleaned: str, lost: set[tuple[int, int]]) -> tuple[str, int]:
        """c4_utils _remove_lines_from_text: drop the lines another page owns and the later copies
        of a line inside the page."""
        kept, seen = [], set()
        lines = cleaned.split("\n")
        for line in lines:
            words = _line_words(_line_key(line))
            if words in lost:
                self.tally("lines_removed_owned_elsewhere")
            elif words in seen:
                self.tally("lines_removed_repeated_in_page")
            else:
                kept.append(line)
                seen.add(words)
        if len(kept) != len(lines):
            self.tally("pages_touched_by_line_dedup")
        return "\n".join(kept), len(lines) - len(kept)

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        if self._root is not None:
            yield from super().process(docs, part)
            return
        # Called directly (tests): these documents are the whole input, run through the same passes.
        docs = list(docs)
        scratch = Path(tempfile.mkdtemp(prefix="c4_quality-"))
        try:
            write_documents(scratch / "input.parquet", docs)
            self.artifacts = scratch
            self.prepare([scratch / "input.parquet"])
            yield from super().process(iter(docs), 0)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.artifacts = self._root = self._part = None

    def final_stats(self) -> dict:
        return super().final_stats() | {key: self.counters.get(key, 0) for key in
                ("pages_touched_by_line_dedup", "lines_removed_owned_elsewhere", "lines_removed_repeated_in_page")}
