"""GitHub (LLaMA §2: "the public GitHub dataset available on Google BigQuery. We only kept projects
that are distributed under the Apache, BSD and MIT licenses. Additionally, we filtered low quality
files with heuristics based on the line length or proportion of alphanumeric characters, and removed
boilerplate, such as headers, with regular expressions. Finally, we deduplicate the resulting dataset
at the file level, with exact matches.")

The rules LLaMA does not spell out follow RedPajama v1 (togethercomputer/RedPajama-Data, branch
rp_v1, data_prep/github/github_clean_dedup_local.py and github_run_filter.py), the open replication.

Stages
  github_ingest  BigQuery export rows (JSON lines: repo_name, path, content, license, id, ...) -> Documents
  github_filter  license allow-list, extension whitelist, license-header removal, line/character heuristics
  github_dedup   exact file-level dedup (sha256 of the text), first occurrence kept
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from pipeline.documents import Document, PartWriter, RemoteFile, StageError, arrow_schema, as_input, read_documents, wrong_type
from pipeline.exact_dedup import FirstCopyDedup
from pipeline.exchange import ORDINAL_BITS, ExchangeStage, ordinal_range
from pipeline.sources.c4 import read_json_lines
from pipeline.stage import ReaderConfig, Stage, StageConfig, checked_record

SOURCE = "github"

# ---------------------------------------------------------------------------------------------
# github_ingest

REQUIRED_FIELDS = ("repo_name", "path", "content")
# Every field of the export this reader uses and the JSON types it may have when present (BigQuery
# writes INT64 as strings, BOOL as true/"true"); any other type is `wrong_type:<field>`.
FIELD_TYPES = {"repo_name": str, "path": str, "content": str, "license": str, "id": str, "ref": str,
               "language": list, "size": (int, str), "copies": (int, str), "binary": (bool, str)}


def _as_int(value: Any) -> int | None:
    """BigQuery's JSON export writes INT64 as strings; accept both."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _language_names(value: Any) -> list[str]:
    """`language` is the repo's REPEATED RECORD {name, bytes} from the `languages` table."""
    if not isinstance(value, list):
        return []
    names = [item.get("name") if isinstance(item, dict) else item for item in value]
    return [n for n in names if isinstance(n, str)]


class GithubIngest(ExchangeStage):
    """One Document per exported row. id "github/<repo_name>/<path>"; when the same repo/path comes
    again (several refs of one repo in the export), the later copies (row order over the parts) get
    "@<blob id>" appended, and a counter ("#2", "#3", ...) if even that repeats or there is no blob
    id, so ids stay unique per source. A row that cannot be read keeps "github/<file>@<line>".

    Rejections: unreadable_record:<why> (see c4.read_json_lines), missing_field:<field>,
    binary_file (BigQuery's `binary` flag: no text to train on).

    Unique ids without one process holding them all: pass 1 (per part) writes the part's documents
    with the id each wants to a scratch file in the artifacts folder, and (id key, ordinal, blob key)
    per row split by partition of the id key; pass 2 (per partition) ranks the rows of each wanted
    id in part and row order and writes each later copy's suffix; pass 3 (the parts) applies them.
    The ids are those a single pass in row order gives (unless an id the export spells literally
    equals another's suffixed one, which this does not check)."""

    name = "github_ingest"
    source = SOURCE
    reads = "raw"
    raw_patterns = ("*.jsonl.gz", "*.jsonl", "*.json.gz")
    description = "BigQuery github_repos export rows -> documents"

    class Config(ReaderConfig):
        pass

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ids: set[str] = set()  # read() without prepare() (tests): ids unique per reader

    def prepare(self, inputs: list[Path]) -> dict:
        self.open_exchange(inputs)
        rows = 0
        for part_rows, replaced in self.map_parts("_scratch_part", list(range(len(inputs)))):
            rows += part_rows
            if replaced:
                self.tally("invalid_text_replaced", replaced)
        renamed = sum(self.map_parts("_rank_partition", list(range(self.partitions))))
        return {"rows": int(rows), "ids_suffixed": int(renamed)}

    # -- pass 1: the part's documents with their wanted ids; (id key, ordinal, blob key) by partition
    def _scratch_part(self, part: int) -> int:
        writer = PartWriter(self._path("docs", part, suffix=".parquet"), arrow_schema({}, rejected=True), stage=self.name)
        records, replaced = [], 0
        with self.local_input(self._inputs[part]) as local:  # a remote file: copied here, removed after
            for row, doc in enumerate(self._documents(local, sequential_ids=False)):
                replaced += checked_record(self, doc)  # before the scratch file: a lone surrogate cannot be written
                writer.write(doc)
                # Only a readable file's copies take "@<blob id>" (a rejected row's id is file@line).
                blob = (doc.meta.get("blob_id") or "") if doc.reason is None else ""
                records.append((*_key_words(doc.id), (part << ORDINAL_BITS) | row, *_key_words(str(blob))))
        writer.close()
        records = np.array(records, dtype=np.uint64).reshape(-1, 5)
        partition = records[:, 0] % np.uint64(self.partitions)
        self.spill(part, partition, np.lexsort((records[:, 2], partition)), ids=records)
        return len(records), replaced

    # -- pass 2: each later copy's suffix: (ordinal, kind, n), kind 1 "@blob" (+ "#n" if n > 1), 2 "#n"
    def _rank_partition(self, partition: int) -> int:
        records = self.gather_partition(partition, "ids")
        records = records[np.lexsort((records[:, 2], records[:, 1], records[:, 0]))]  # by id key, then ordinal
        suffixes: list[tuple[int, int, int]] = []
        previous = None
        blob_seen: dict[tuple[int, int], int] = {}
        plain = 0
        empty_blob = _key_words("")
        for k0, k1, ordinal, b0, b1 in records.tolist():
            if (k0, k1) != previous:  # the first row that wants this id gets it
                previous, blob_seen, plain = (k0, k1), {}, 0
                continue
            if (b0, b1) != empty_blob:
                blob_seen[(b0, b1)] = blob_seen.get((b0, b1), 0) + 1
                suffixes.append((ordinal, 1, blob_seen[(b0, b1)]))
            else:
                plain += 1
                suffixes.append((ordinal, 2, plain + 1))
        found = np.array(sorted(suffixes), dtype=np.uint64).reshape(-1, 3)
        np.save(self._path("suffixes", partition), found)
        return len(found)

    # -- pass 3 (the parts): the scratch documents with their final ids
    def read_input(self, path: Path | RemoteFile) -> Iterator[Document]:
        if self._root is None:  # read directly (tests): the raw file, wherever it lies
            yield from super().read_input(path)
        else:  # prepared: pass 1's scratch copy, not the raw file again
            yield from self.read(path)

    def read(self, path: Path | RemoteFile) -> Iterator[Document]:
        path = as_input(path)
        if self._root is None:  # read directly (tests): ids unique within this reader
            yield from self._documents(path, sequential_ids=True)
            return
        part = self._inputs.index(path)
        low = ordinal_range(part)[0]
        suffix_of = {ordinal - low: (kind, n) for ordinal, kind, n in self.gather_part(part, "suffixes").tolist()}
        for row, doc in enumerate(read_documents(self._path("docs", part, suffix=".parquet"))):
            if row in suffix_of:
                kind, n = suffix_of[row]
                if kind == 1:
                    doc.id = f"{doc.id}@{doc.meta['blob_id']}" + (f"#{n}" if n > 1 else "")
                else:
                    doc.id = f"{doc.id}#{n}"
            yield doc

    def _documents(self, path: Path, sequential_ids: bool) -> Iterator[Document]:
        """The file's documents, with unique ids (`sequential_ids`: made unique here, in this
        reader's order) or with the id each wants (pass 1: made unique by passes 2 and 3)."""
        for item in read_json_lines(path, SOURCE):
            if isinstance(item, Document):
                yield item
                continue
            line_number, row = item
            yield self._document(row, path.name, line_number, sequential_ids)

    def _document(self, row: dict[str, Any], file_name: str, line_number: int, sequential_ids: bool) -> Document:
        unique = self._unique if sequential_ids else str
        fallback_id = f"{SOURCE}/{file_name}@{line_number}"
        if bad := wrong_type(row, FIELD_TYPES):
            return Document(id=unique(fallback_id), text="", source=SOURCE,
                            meta={"file": file_name, "line": line_number}).reject(f"wrong_type:{bad}")
        blob_id = row.get("id")
        meta = {
            "repo_name": row.get("repo_name"),
            "path": row.get("path"),
            "license": row.get("license"),
            "blob_id": blob_id,
            "languages": _language_names(row.get("language")),
            "size": _as_int(row.get("size")),
            "copies": _as_int(row.get("copies")),
            "ref": row.get("ref"),
            "file": file_name,
            "line": line_number,
        }
        if _as_bool(row.get("binary")):
            return Document(id=unique(fallback_id), text="", source=SOURCE, meta=meta, reason="binary_file")
        for field in REQUIRED_FIELDS:
            value = row.get(field)
            if not isinstance(value, str) or (field != "content" and not value):
                return Document(id=unique(fallback_id), text="", source=SOURCE, meta=meta).reject(
                    f"missing_field:{field}"
                )
        doc_id = f"{SOURCE}/{row['repo_name']}/{row['path']}"
        if sequential_ids and doc_id in self._ids and blob_id:
            doc_id = f"{doc_id}@{blob_id}"
        return Document(id=unique(doc_id), text=row["content"], source=SOURCE, meta=meta)

    def _unique(self, doc_id: str) -> str:
        candidate, n = doc_id, 1
        while candidate in self._ids:
            n += 1
            candidate = f"{doc_id}#{n}"
        self._ids.add(candidate)
        return candidate


def _key_words(text: str) -> tuple[int, int]:
    """A 128-bit key of an id (or blob id) as two words."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


# ---------------------------------------------------------------------------------------------
# github_filter

# RedPajama v1 extensions_whitelist (rp_v1 data_prep/github/github_run_filter.py), matched as that
# script does: `path.endswith(whitelist)`, case-sensitive (".C"/".H" are C++), and "Makefile" /
# "Dockerfile" are whole-name suffixes. RedPajama also skips path == "LICENSE" and *.crt, which
# this whitelist already excludes.
REDPAJAMA_EXTENSIONS = (
    ".asm", ".bat", ".cmd", ".c", ".h", ".cs", ".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".C", ".H",
    ".cmake", ".css", ".dockerfile", ".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for", ".fpp", ".go",
    ".hs", ".html", ".java", ".js", ".jl", ".lua", ".md", ".markdown", ".php", ".php3", ".php4", ".php5",
    ".phps", ".phpt", ".pl", ".pm", ".pod", ".perl", ".ps1", ".psd1", ".psm1", ".py", ".rb", ".rs", ".sql",
    ".scala", ".sh", ".bash", ".command", ".zsh", ".ts", ".tsx", ".tex", ".vb", "Dockerfile", "Makefile",
    ".xml", ".rst", ".m", ".smali",
)  # fmt: skip

# Header removal, the default rule ("redpajama"): RedPajama v1's clean_copyright_comments
# (rp_v1 data_prep/github/github_clean_dedup_local.py), applied to every file whatever its type:
#   - if the file holds a C-style /* ... */ comment anywhere, only the FIRST one is looked at: it is
#     cut out when it contains "copyright" (any case), and nothing else is removed;
#   - otherwise every leading line that starts with "//", "#" or "--", or is empty, is dropped,
#     whatever it says: shebangs, Python coding lines, doc comments, Makefile comments and
#     Markdown headings ("# Title") go too.
_C_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_COPYRIGHT = re.compile("copyright", re.IGNORECASE)
_RP_LEADING_COMMENT = ("//", "#", "--")


def strip_header_redpajama(text: str) -> tuple[str, int]:
    """RedPajama v1's header rule (see above). Returns (text, characters removed)."""
    block = _C_COMMENT.search(text)
    if block is not None:
        if _COPYRIGHT.search(block.group(0)):
            return text[: block.start()] + text[block.end() :], block.end() - block.start()
        return text, 0
    lines = text.split("\n")
    skip = 0
    while skip < len(lines) and (not lines[skip] or lines[skip].startswith(_RP_LEADING_COMMENT)):
        skip += 1
    if not skip:
        return text, 0
    stripped = "\n".join(lines[skip:])
    return stripped, len(text) - len(stripped)


# The other rule ("license_comment"), a deliberate deviation: RedPajama's greedy rule removes doc
# comments, shebangs and Markdown titles that are not license text (8 of the 53 whitelisted,
# permissively licensed files of the real sample differ), and a copyright block further down a
# file. This one removes less and says exactly what: the first comment block at the top of the
# file (after an optional shebang and Python coding line), in the comment syntax of the file's
# language, only when it mentions copyright, a license or an SPDX identifier; blank lines after it
# go too. Files of other types are left as they are.
_HEADER_WORDS = re.compile(r"copyright|licen[cs]e|spdx-license-identifier|\(c\)\s*\d{4}|©", re.IGNORECASE)
_PRESERVED_PREFIX = re.compile(r"\A(?:#![^\n]*\n)?(?:[ \t]*#[^\n]*coding[:=][^\n]*\n)?")
_BLOCK_COMMENTS = {
    "c": re.compile(r"\s*/\*.*?\*/[ \t]*(?:\n|\Z)", re.DOTALL),
    "html": re.compile(r"\s*<!--.*?-->[ \t]*(?:\n|\Z)", re.DOTALL),
}


def _line_comment_run(marker: str) -> re.Pattern[str]:
    """Consecutive comment lines, allowing blank lines between paragraphs of the same block."""
    return re.compile(rf"(?:(?:[ \t]*\n)*[ \t]*{marker}[^\n]*(?:\n|\Z))+")


_LINE_COMMENTS = {
    "slash": _line_comment_run(r"//"),
    "hash": _line_comment_run(r"#(?!!)"),
    "dashdash": _line_comment_run(r"--"),
    "percent": _line_comment_run(r"%"),
    "semicolon": _line_comment_run(r";"),
}
_C_LIKE = ("c", "slash")
_COMMENT_STYLES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (".c", ".h", ".cs", ".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".C", ".H", ".go", ".java", ".js",
         ".rs", ".scala", ".ts", ".tsx", ".php", ".swift", ".kt"),
        _C_LIKE,
    ),
    ".css": ("c",),
    ".m": ("c", "slash", "percent"),  # Objective-C or MATLAB
    **dict.fromkeys(
        (".py", ".pyx", ".pxd", ".sh", ".bash", ".zsh", ".command", ".rb", ".pl", ".pm", ".perl", ".ps1",
         ".psd1", ".psm1", ".cmake", ".jl", ".r", ".R", ".yml", ".yaml", ".toml", ".dockerfile", ".smali",
         "Makefile", "Dockerfile"),
        ("hash",),
    ),
    **dict.fromkeys((".sql", ".lua", ".hs"), ("dashdash",)),
    ".tex": ("percent",),
    ".asm": ("semicolon",),
    **dict.fromkeys((".html", ".xml", ".md", ".markdown"), ("html",)),
}  # fmt: skip


def comment_styles(path: str) -> tuple[str, ...]:
    for suffix, styles in _COMMENT_STYLES.items():
        if path.endswith(suffix):
            return styles
    return ()


def strip_license_header(text: str, path: str) -> tuple[str, int]:
    """Remove a leading license/copyright comment block. Returns (text, characters removed)."""
    styles = comment_styles(path)
    if not styles:
        return text, 0
    prefix = _PRESERVED_PREFIX.match(text).group(0)
    start = len(prefix)
    for style in styles:
        pattern = _BLOCK_COMMENTS.get(style) or _LINE_COMMENTS[style]
        match = pattern.match(text, start)
        if match and _HEADER_WORDS.search(match.group(0)):
            rest = text[match.end() :].lstrip("\n")
            stripped = prefix + rest
            return stripped, len(text) - len(stripped)
    return text, 0


# Tokens for the alphabetic-characters-per-token rule. RedPajama counts tokens with the
# Pythia/GPT-NeoX BPE tokenizer. With `tokenizer_model` set (a SentencePiece model: our corpus
# tokenizer from a previous build, or LLaMA's tokenizer.model) the rule counts that tokenizer's
# pieces. The corpus tokenizer of the same build cannot be used: it is trained after this stage,
# on its output. Without a model we count word runs and punctuation runs ("==", "):", "#=====" are
# one token each, as BPE merges such runs); BPE also emits whitespace/indentation tokens, which
# this count ignores, so it is somewhat more lenient than RedPajama on deeply indented code.
_TOKEN = re.compile(r"\w+|[^\w\s]+")


def count_tokens_regex(text: str) -> int:
    return len(_TOKEN.findall(text))


def file_stats(text: str, count_tokens=count_tokens_regex) -> dict[str, float]:
    """RedPajama's get_filecontent_stats: lengths over str.splitlines(), the mean as
    len(text) / line count, the alphanumeric share over the whole text."""
    line_lengths = [len(line) for line in text.splitlines()]
    tokens = count_tokens(text)
    alpha = sum(ch.isalpha() for ch in text)
    return {
        "max_line_length": max(line_lengths, default=0),
        "mean_line_length": len(text) / len(line_lengths) if line_lengths else 0.0,
        "alnum_fraction": sum(ch.isalnum() for ch in text) / len(text) if text else 0.0,
        "alpha_per_token": alpha / tokens if tokens else 0.0,
    }


class GithubFilter(Stage):
    """License allow-list, RedPajama extension whitelist, header removal (RedPajama's rule by
    default, see `header_rule`), then RedPajama's per-file heuristics on the stripped text. Rejections, in the order checked:
      license:<lic>     license not in `licenses` (LLaMA §2: Apache, BSD, MIT); missing -> license:none
      extension         path not in the RedPajama whitelist
      empty             nothing left after header removal (RedPajama drops empty records)
      max_line_length, mean_line_length, alnum_fraction, alpha_per_token  (RedPajama thresholds)
    Kept documents carry the stripped text and meta["header_chars_removed"]."""

    name = "github_filter"
    parallel_parts = True  # each file judged on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "documents"
    description = "license, extension and line/character filters; license headers removed"

    class Config(StageConfig):
        # LLaMA §2: "projects that are distributed under the Apache, BSD and MIT licenses"; the
        # names are BigQuery github_repos.licenses values.
        licenses: list[str] = ["mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause"]
        # RedPajama v1 github_run_filter.py extensions_whitelist.
        extensions: list[str] = list(REDPAJAMA_EXTENSIONS)
        # RedPajama v1 github_run_filter.py: max line length > 1000 -> drop.
        max_line_length: int = 1000
        # RedPajama v1: average line length > 100 -> drop.
        max_mean_line_length: float = 100.0
        # RedPajama v1: proportion of alphanumeric characters < 0.25 -> drop.
        min_alnum_fraction: float = 0.25
        # RedPajama v1: alphabetic characters per token < 1.5 -> drop.
        min_alpha_per_token: float = 1.5
        # LLaMA §2: "removed boilerplate, such as headers, with regular expressions".
        strip_license_headers: bool = True
        # "redpajama" (default): RedPajama v1's clean_copyright_comments (strip_header_redpajama).
        # "license_comment": only a leading comment block that is license text, in the file's own
        # comment syntax (strip_license_header); keeps shebangs, doc comments, Markdown titles.
        header_rule: Literal["redpajama", "license_comment"] = "redpajama"
        # SentencePiece model whose pieces count as tokens for min_alpha_per_token (RedPajama uses
        # its own BPE tokenizer); None: the regex approximation (see count_tokens_regex).
        tokenizer_model: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._count_tokens = count_tokens_regex
        if self.config.tokenizer_model is not None:
            model = Path(self.config.tokenizer_model)
            if not model.is_file():
                raise StageError(f"github_filter: tokenizer_model {model} not found")
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=str(model))
            self._count_tokens = lambda text: len(processor.encode(text))

    def extra_inputs(self) -> list[Path]:
        # the tokenizer model's bytes decide verdicts: they count in the stage's identity
        return [Path(self.config.tokenizer_model)] if self.config.tokenizer_model else []

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        c = self.config
        licenses = {lic.lower() for lic in c.licenses}
        extensions = tuple(c.extensions)
        for doc in docs:
            license_name = doc.meta.get("license")
            if not license_name or license_name.lower() not in licenses:
                yield doc.reject(f"license:{license_name or 'none'}")
                continue
            path = doc.meta.get("path") or ""
            if not path.endswith(extensions):
                yield doc.reject("extension")
                continue
            if not c.strip_license_headers:
                text, removed = doc.text, 0
            elif c.header_rule == "redpajama":
                text, removed = strip_header_redpajama(doc.text)
            else:
                text, removed = strip_license_header(doc.text, path)
            if not text.strip():
                yield doc.reject("empty")
                continue
            stats = file_stats(text, self._count_tokens)
            if stats["max_line_length"] > c.max_line_length:
                yield doc.reject("max_line_length")
            elif stats["mean_line_length"] > c.max_mean_line_length:
                yield doc.reject("mean_line_length")
            elif stats["alnum_fraction"] < c.min_alnum_fraction:
                yield doc.reject("alnum_fraction")
            elif stats["alpha_per_token"] < c.min_alpha_per_token:
                yield doc.reject("alpha_per_token")
            else:
                doc.text = text
                doc.meta["header_chars_removed"] = removed
                yield doc


# ---------------------------------------------------------------------------------------------
# github_dedup


def content_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class GithubDedup(FirstCopyDedup):
    """Exact file-level dedup (LLaMA §2 "deduplicate ... at the file level, with exact matches"):
    the full sha256 of the document text. The first occurrence across all input parts (part order,
    then row order) is kept; the others are rejected "duplicate_file" with meta["duplicate_of"]
    naming the kept id. No process holds every digest: the partitioned passes of
    pipeline/exact_dedup.py. Without prepare() (a direct call) the first document seen is kept."""

    name = "github_dedup"
    source = SOURCE
    reads = "documents"
    description = "exact file-level dedup by sha256 of content"
    DIGEST_WORDS = 4  # all 256 bits: exact, as the paper says
    duplicate_reason = "duplicate_file"

    class Config(StageConfig):
        pass

    def digests(self, texts: Iterator[str]) -> np.ndarray:
        joined = b"".join(content_digest(text) for text in texts)
        return np.frombuffer(joined, dtype="<u8").reshape(-1, self.DIGEST_WORDS).copy()

    def dedup_stats(self, texts: int, duplicates: int) -> dict[str, Any]:
        return {"files": texts, "distinct_contents": texts - duplicates, "duplicates": duplicates}
