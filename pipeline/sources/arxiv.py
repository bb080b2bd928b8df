"""arXiv: LaTeX source archives -> one flattened .tex per paper -> cleaned LaTeX.

LLaMA-1 (Touvron et al. 2023, sec. 2): "ArXiv [2.5%]. We process arXiv Latex files to add
scientific data to our dataset. Following Lewkowycz et al. (2022), we removed everything before the
first section, as well as the bibliography. We also removed the comments from the .tex files, and
inline-expanded definitions and macros written by users to increase consistency across papers."

Two stages:
  arxiv_ingest  reads bulk source tars (members `{id}.gz`, each a gzip'd tar or a gzip'd .tex), a
                single paper's .tar.gz / .gz, all in memory with path/link/size checks; finds the
                main file and resolves \\input / \\include recursively.
  arxiv_clean   comments, user macros, preamble, bibliography: the paper's rules above; as RedPajama
                v1 does it, everything from the bibliography (or \\appendix) on is cut.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from pipeline.documents import Document, StageError
from pipeline.stage import ReaderConfig, Stage, StageConfig

SOURCE = "arxiv"


class UnsafeArchive(Exception):
    """A paper whose archive is unsafe or too large: reason code in args[0]."""


def paper_id_from_name(name: str) -> str:
    """Member/file name -> arXiv id: "1901.00001.gz" -> "1901.00001", old-style
    "astro-ph0001001.gz" (bulk tars drop the slash) -> "astro-ph/0001001"."""
    base = posixpath.basename(name)
    for suffix in (".tar.gz", ".tgz", ".tex.gz", ".gz", ".tar", ".pdf"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    old_style = re.fullmatch(r"([a-z\-]+(?:\.[A-Z]{2})?)(\d{7}(?:v\d+)?)", base)
    return f"{old_style.group(1)}/{old_style.group(2)}" if old_style else base


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Gunzip with a cap on the output: a 1 MB gzip bomb must not become 10 GB in memory."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UnsafeArchive(f"corrupt_gzip:{exc}") from exc
    if len(out) > limit:
        raise UnsafeArchive("too_large")
    return out


def decode_tex(data: bytes) -> tuple[str, bool]:
    """(text, fell back to latin-1): arXiv sources predate UTF-8 by a decade."""
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "absolute_path"
    if ".." in re.split(r"[\\/]", name):
        return "parent_path"
    if member.issym() or member.islnk():
        return "link"
    if not (member.isfile() or member.isdir()):
        return "special_file"
    return None


def read_paper_tar(data: bytes, max_member_bytes: int, max_paper_bytes: int) -> dict[str, bytes]:
    """The regular files of one paper's tar, checked member by member, never written to disk."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                why = unsafe_member_reason(member)
                if why:
                    raise UnsafeArchive(f"unsafe_archive:{why}:{member.name[:100]}")
                if member.isdir():
                    continue
                total += member.size
                if member.size > max_member_bytes or total > max_paper_bytes:
                    raise UnsafeArchive("too_large")
                handle = archive.extractfile(member)
                files[posixpath.normpath(member.name)] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UnsafeArchive(f"corrupt_tar:{type(exc).__name__}") from exc
    # A paper packed as one top folder ("paper/main.tex", "paper/sec.tex"): \input paths are
    # relative to the main file, so the folder is dropped.
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files):
        files = {name.split("/", 1)[1]: content for name, content in files.items()}
    return files


def paper_files(data: bytes, compressed: bool, max_member_bytes: int, max_paper_bytes: int) -> dict[str, bytes]:
    """One paper's files from its `{id}.gz` (a gzip'd tar, or a gzip'd lone .tex) or plain tar."""
    raw = gunzip_limited(data, max_paper_bytes) if compressed else data
    if _looks_like_tar(raw):
        return read_paper_tar(raw, max_member_bytes, max_paper_bytes)
    if len(raw) > max_member_bytes:
        raise UnsafeArchive("too_large")
    return {"main.tex": raw}


def _looks_like_tar(raw: bytes) -> bool:
    if len(raw) < 512:
        return False
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            return archive.next() is not None
    except tarfile.TarError:
        return False


# ---------------------------------------------------------------------------------------------
# Main file and \input / \include

DOCUMENT_CLASS = re.compile(r"^[ \t]*\\document(?:class|style)\b", re.MULTILINE)  # \documentstyle: LaTeX 2.09
INPUT_COMMAND = re.compile(r"\\(input|include)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")
PREFERRED_MAIN_NAMES = ("main.tex", "ms.tex")
MAX_INPUT_DEPTH = 20
# Not from arXiv: more file expansions than any real paper has (a few dozen \input at most).
MAX_INPUT_EXPANSIONS = 10_000


def find_main_file(texts: dict[str, str]) -> str | None:
    """The .tex with \\documentclass; several: main.tex, then ms.tex, then the largest (then the
    first name), since arXiv's own AutoTeX guesses the same way when a tarball holds variants."""
    candidates = [name for name, text in texts.items() if DOCUMENT_CLASS.search(strip_comments(text))]
    if not candidates:
        return None
    for preferred in PREFERRED_MAIN_NAMES:
        for name in candidates:
            if posixpath.basename(name) == preferred:
                return name
    return min(candidates, key=lambda name: (-len(texts[name]), name))


def _in_comment(text: str, position: int) -> bool:
    line_start = text.rfind("\n", 0, position) + 1
    return COMMENT.search(text[line_start:position]) is not None


def flatten_inputs(main: str, texts: dict[str, str], max_chars: int | None = None) -> tuple[str, list[str]]:
    """The main file with each \\input/\\include replaced by the file's text, recursively.
    Missing and cyclic inputs leave a marker comment; returns (text, missing input names).
    Raises UnsafeArchive("too_large") past `max_chars`: ten files that each \\input the next
    ten times are 10^20 copies of the last one without ever being cyclic."""
    missing: list[str] = []
    produced = expansions = 0

    def resolve(name: str) -> str | None:
        name = posixpath.normpath(name.strip().strip('"'))
        for candidate in (name, name + ".tex"):
            if candidate in texts:
                return candidate
        return None

    def expand(file_name: str, stack: tuple[str, ...]) -> str:
        nonlocal produced, expansions
        text = texts[file_name]
        out: list[str] = []
        last = 0
        for match in INPUT_COMMAND.finditer(text):
            if _in_comment(text, match.start()):
                continue  # "% \input{old-draft}" must not pull live text into a comment line
            target = (match.group(2) if match.group(2) is not None else match.group(3)).strip()
            out.append(text[last : match.start()])
            last = match.end()
            resolved = resolve(target)
            if resolved is None:
                missing.append(target)
                out.append(f"% [llama-recipe: missing \\{match.group(1)}{{{target}}}]\n")
            elif resolved in stack or len(stack) >= MAX_INPUT_DEPTH:
                out.append(f"% [llama-recipe: cyclic \\{match.group(1)}{{{target}}} skipped]\n")
            else:
                out.append(expand(resolved, stack + (resolved,)))
        out.append(text[last:])
        produced += len(text)  # an upper bound on what this file adds; checked as we go
        expansions += 1
        if expansions > MAX_INPUT_EXPANSIONS or (max_chars is not None and produced > max_chars):
            raise UnsafeArchive("too_large")
        return "".join(out)

    return expand(main, (main,)), missing


class ArxivIngestConfig(ReaderConfig):
    # Per-file and per-paper caps on uncompressed bytes. arXiv itself caps submissions at 50 MB;
    # text sources are far smaller, so these stop bombs without rejecting real papers.
    max_member_bytes: int = 20_000_000
    max_paper_bytes: int = 100_000_000


TEX_EXTENSIONS = (".tex", ".ltx", ".latex", ".bbl")


class ArxivIngest(Stage):
    """arXiv source archives -> one Document per paper: the flattened LaTeX of its main file."""

    name = "arxiv_ingest"
    parallel_parts = True  # one archive (or folder) per part, read on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "raw"
    raw_patterns = ("*.tar", "*.tar.gz", "*.tgz", "*.gz")
    Config = ArxivIngestConfig
    description = "arXiv sources: safe in-memory extraction, main file found, \\input resolved."

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{path}: arXiv archive not found")
        if path.stat().st_size == 0:
            yield Document(id=f"{SOURCE}/{path.name}@0", text="", source=SOURCE).reject("empty_file")
            return
        if path.name.endswith(".tar") and self._is_bulk_tar(path):
            yield from self._bulk(path)
        else:
            compressed = path.name.endswith((".gz", ".tgz"))
            yield self._paper(paper_id_from_name(path.name), path.read_bytes(), compressed)

    @staticmethod
    def _is_bulk_tar(path: Path) -> bool:
        """arXiv's bulk tars hold one `{id}.gz` (or `{id}.pdf`) per paper; a plain tar of .tex
        files is one paper."""
        try:
            with tarfile.open(path, mode="r:") as archive:
                names = [m.name for m in archive.getmembers() if m.isfile()]
        except tarfile.TarError:
            return False
        return any(name.endswith((".gz", ".pdf")) for name in names)

    def _bulk(self, path: Path) -> Iterator[Document]:
        cfg = self.config
        try:
            with tarfile.open(path, mode="r:") as archive:
                for index, member in enumerate(archive):
                    if member.isdir():
                        continue
                    paper_id = paper_id_from_name(member.name)
                    why = unsafe_member_reason(member)
                    if why:
                        yield self._row(f"{path.name}@{index}", f"unsafe_archive:{why}:{member.name[:100]}")
                    elif member.name.endswith(".pdf"):
                        yield self._row(paper_id, "no_source:pdf_only")  # arXiv has no source for it
                    elif member.size > cfg.max_paper_bytes:
                        yield self._row(paper_id, "too_large")
                    else:
                        handle = archive.extractfile(member)
                        data = handle.read() if handle else b""
                        yield self._paper(paper_id, data, member.name.endswith(".gz"))
        except (tarfile.TarError, EOFError, OSError) as exc:
            # Papers before the damage are already out; this row accounts for the rest.
            yield self._row(f"{path.name}@end", f"unreadable_file:{type(exc).__name__}")

    def _row(self, paper_id: str, reason: str) -> Document:
        return Document(id=f"{SOURCE}/{paper_id}", text="", source=SOURCE, meta={"paper_id": paper_id}).reject(reason)

    def _paper(self, paper_id: str, data: bytes, compressed: bool) -> Document:
        cfg = self.config
        try:
            files = paper_files(data, compressed, cfg.max_member_bytes, cfg.max_paper_bytes)
        except UnsafeArchive as exc:
            return self._row(paper_id, str(exc))
        texts: dict[str, str] = {}
        latin1: list[str] = []
        for name, content in files.items():
            if name.lower().endswith(TEX_EXTENSIONS) or "." not in posixpath.basename(name):
                texts[name], fell_back = decode_tex(content)
                if fell_back:
                    latin1.append(name)
        main = find_main_file({n: t for n, t in texts.items() if n.lower().endswith(".tex")})
        meta: dict[str, Any] = {"paper_id": paper_id, "files": sorted(files)}
        if main is None:
            return Document(id=f"{SOURCE}/{paper_id}", text="", source=SOURCE, meta=meta).reject("no_main_tex")
        try:
            text, missing = flatten_inputs(main, texts, cfg.max_paper_bytes)
        except UnsafeArchive as exc:
            return Document(id=f"{SOURCE}/{paper_id}", text="", source=SOURCE, meta=meta).reject(f"{exc}:inputs")
        meta |= {"main_file": main, "missing_inputs": missing}
        if latin1:
            meta["decoded_latin1"] = sorted(latin1)
        return Document(id=f"{SOURCE}/{paper_id}", text=text, source=SOURCE, meta=meta)


# ---------------------------------------------------------------------------------------------
# Cleaning: comments, user macros, preamble, bibliography

# A % starts a comment unless escaped; "\\%" is a line break followed by a comment, so the
# backslashes before it must be even in number.
COMMENT = re.compile(r"(?<!\\)(?:\\\\)*%")
COMMENT_ONLY_LINE = re.compile(r"^[ \t]*%.*(?:\n|$)", re.MULTILINE)


def strip_comments(text: str) -> str:
    text = COMMENT_ONLY_LINE.sub("", text)
    lines = []
    for line in text.split("\n"):
        match = COMMENT.search(line)
        if match:
            line = line[: match.end() - 1]  # keep the even run of backslashes, drop % onward
        lines.append(line)
    return "\n".join(lines)


def read_group(text: str, pos: int, open_char: str = "{", close_char: str = "}") -> tuple[str, int] | None:
    """A balanced {...} (or [...]) starting at `pos` (after spaces): (inside, end position)."""
    while pos < len(text) and text[pos] in " \t\n":
        pos += 1
    if pos >= len(text) or text[pos] != open_char:
        return None
    depth, i = 0, pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == open_char:
            depth += 1
        elif ch == close_char:
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i], i + 1
        i += 1
    return None


def read_argument(text: str, pos: int) -> tuple[str, int] | None:
    """One undelimited TeX argument: a brace group, a control sequence, or one character."""
    group = read_group(text, pos)
    if group is not None:
        return group
    while pos < len(text) and text[pos] in " \t\n":
        pos += 1
    if pos >= len(text) or text[pos] == "}":
        return None
    if text[pos] == "\\":
        match = CONTROL_SEQUENCE.match(text, pos)
        return match.group(1), match.end()
    return text[pos], pos + 1


class Macro:
    def __init__(self, name: str, nargs: int, default: str | None, body: str):
        self.name, self.nargs, self.default, self.body = name, nargs, default, body


NEWCOMMAND = re.compile(r"\\(newcommand|renewcommand|providecommand|DeclareRobustCommand)\*?")
DEF = re.compile(r"\\[gx]?def(?![A-Za-z@])|\\edef(?![A-Za-z@])")
CONTROL_SEQUENCE = re.compile(r"\s*(\\(?:[A-Za-z@]+|.))")


def _parse_newcommand(text: str, match: re.Match) -> tuple[Macro, int] | None:
    pos = match.end()
    name_group = read_group(text, pos)
    if name_group is not None:
        name, pos = name_group[0].strip(), name_group[1]
    else:
        cs = CONTROL_SEQUENCE.match(text, pos)
        if not cs:
            return None
        name, pos = cs.group(1), cs.end()
    if not re.fullmatch(r"\\[A-Za-z@]+", name):
        return None
    nargs, default = 0, None
    count = read_group(text, pos, "[", "]")
    if count is not None:
        if not count[0].strip().isdigit():
            return None
        nargs, pos = int(count[0].strip()), count[1]
        optional = read_group(text, pos, "[", "]")
        if optional is not None:
            default, pos = optional
    body = read_group(text, pos)
    if body is None:
        return None
    return Macro(name[1:], nargs, default, body[0]), body[1]


def _parse_def(text: str, match: re.Match) -> tuple[Macro, int] | None:
    cs = CONTROL_SEQUENCE.match(text, match.end())
    if not cs or not re.fullmatch(r"\\[A-Za-z@]+", cs.group(1)):
        return None
    params = re.compile(r"(?:#[1-9])*").match(text, cs.end())
    pos = params.end()
    if pos < len(text) and text[pos] != "{":
        return None  # delimited parameters (\def\x#1.{...}): not expanded, left as written
    body = read_group(text, pos)
    if body is None:
        return None
    return Macro(cs.group(1)[1:], len(params.group(0)) // 2, None, body[0]), body[1]


def extract_macros(text: str) -> tuple[str, dict[str, Macro]]:
    """User macro definitions (removed from the text) by name. \\newcommand and \\def define,
    \\renewcommand redefines, \\providecommand defines only if new: LaTeX's own rules, applied as
    if every definition were in the preamble (position-dependent redefinitions are rare)."""
    macros: dict[str, Macro] = {}
    out: list[str] = []
    pos = 0
    pattern = re.compile(f"{NEWCOMMAND.pattern}|{DEF.pattern}")
    while (match := pattern.search(text, pos)) is not None:
        if match.group(1):
            parsed = _parse_newcommand(text, match)
            kind = match.group(1)
        else:
            parsed = _parse_def(text, match)
            kind = "def"
        if parsed is None:
            out.append(text[pos : match.end()])
            pos = match.end()
            continue
        macro, end = parsed
        if "@" in macro.name or re.search(r"\\" + re.escape(macro.name) + r"(?![A-Za-z@])", macro.body):
            # Package-internal (\makeatletter) and self-recursive macros are TeX programming, not
            # the "definitions and macros written by users" the paper expands: left as written.
            out.append(text[pos:end])
            pos = end
            continue
        if kind == "providecommand" and macro.name in macros:
            pass
        elif kind == "newcommand" and macro.name in macros:
            pass  # LaTeX errors on a second \newcommand; the first one stands
        else:
            macros[macro.name] = macro
        out.append(text[pos : match.start()])
        pos = end
    out.append(text[pos:])
    return "".join(out), macros


def _substitute(body: str, args: list[str]) -> str:
    def repl(match: re.Match) -> str:
        if match.group(0) == "##":
            return "#"
        index = int(match.group(0)[1]) - 1
        return args[index] if index < len(args) else match.group(0)

    return re.sub(r"##|#[1-9]", repl, body)


def expand_macros_once(text: str, macros: dict[str, Macro], max_chars: float | None = None) -> tuple[str, int]:
    """One left-to-right pass: each use of a macro replaced by its body with arguments filled in.
    Stops once the output passes `max_chars` (one pass can multiply the text by a body's length)."""
    if not macros:
        return text, 0
    names = sorted(macros, key=len, reverse=True)
    pattern = re.compile(r"\\(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z@])")
    out: list[str] = []
    pos = count = produced = 0
    while (match := pattern.search(text, pos)) is not None:
        if max_chars is not None and produced > max_chars:
            break
        macro = macros[match.group(1)]
        end = match.end()
        args: list[str] = []
        ok = True
        mandatory = macro.nargs
        if macro.default is not None:  # \newcommand{\x}[2][default]: #1 is optional
            optional = read_group(text, end, "[", "]")
            if optional is not None:
                args.append(optional[0])
                end = optional[1]
            else:
                args.append(macro.default)
            mandatory -= 1
        for _ in range(mandatory):
            arg = read_argument(text, end)
            if arg is None:
                ok = False
                break
            args.append(arg[0])
            end = arg[1]
        out.append(text[pos : match.start()])
        produced += match.start() - pos
        if ok:
            out.append(_substitute(macro.body, args))
            produced += len(out[-1])
            count += 1
            pos = end
        else:
            out.append(match.group(0))
            pos = match.end()
    out.append(text[pos:])
    return "".join(out), count


def expand_macros(text: str, macros: dict[str, Macro], max_passes: int, max_growth: float) -> tuple[str, int, bool]:
    """Expand until nothing changes (macros using macros), within a pass cap and a size cap that
    stop self-referencing definitions (\\def\\a{\\a\\a}). Returns (text, expansions, capped)."""
    limit = max(len(text) * max_growth, 10_000)
    total = 0
    for _ in range(max_passes):
        expanded, count = expand_macros_once(text, macros, limit)
        if count == 0:
            return text, total, False
        if len(expanded) > limit:
            return text, total, True
        text, total = expanded, total + count
    return text, total, True


# The first section-like header (LLaMA §2: "we removed everything before the first section"). rp_v1's
# _clean_tex_file lists \chapter, \part, \section, \subsection, \subsubsection and \paragraph
# (+ \subparagraph, which a missing "|" fuses with \paragraph so neither can match); its greedy
# "^(.*)" keeps from the LAST such header, a known bug: here, from the first one, as its docstring says.
FIRST_SECTION = re.compile(r"\\(?:part|chapter|section|subsection|subsubsection)\s*\*?\s*[\[{]")  # not \titleformat{\chapter}
BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
END_DOCUMENT = re.compile(r"\\end\s*\{document\}")
BIBLIOGRAPHY = [
    re.compile(r"\\begin\s*\{thebibliography\}.*?(?:\\end\s*\{thebibliography\}|$)", re.DOTALL),
    re.compile(r"\\bibliography(?:style)?\s*\{[^{}]*\}"),
    re.compile(r"\\(?:printbibliography|addbibresource)(?:\[[^\]]*\])?(?:\{[^{}]*\})?"),
]
# RedPajama v1 (rp_v1 data_prep/arxiv/arxiv_cleaner.py, _clean_tex_file) removes everything from the
# first \appendix, \begin{references}, \begin{REFERENCES}, \begin{thebibliography} or
# \bibliography{...} to the end: the bibliography and all back matter after it (acknowledgements,
# author contributions, consortium lists, appendices). Two small differences, both on purpose: the
# commands must end at a token boundary (rp_v1 would also cut at a \appendixname in the text), and
# biblatex's \printbibliography counts as the bibliography too (rp_v1's list predates it, so a
# biblatex paper would keep its back matter there). rp_v1 cuts each .tex file on its own; here
# the paper is one flattened text, so an appendix \input after the cut goes too.
BACK_MATTER = re.compile(
    r"\\appendix(?![A-Za-z@])|\\begin\s*\{(?:references|REFERENCES|thebibliography)\}"
    r"|\\bibliography\s*\{|\\printbibliography(?![A-Za-z@])"
)


class ArxivCleanConfig(StageConfig):
    # Not from the paper: a body under ~500 characters after cleaning is a withdrawal notice or a
    # stub, not a paper.
    min_chars: int = 500
    # Macro expansion stops after this many passes (nesting depth of user macros) or when the text
    # grows by this factor (a recursive \def); the paper gives no numbers.
    max_expansion_passes: int = 10
    max_expansion_growth: float = 4.0
    # True (RedPajama v1): cut at the bibliography or \appendix, whichever comes first, dropping
    # everything after it. False: the LLaMA paper's sentence read literally ("removed ... the
    # bibliography"): only the bibliography commands and environment go; acknowledgements,
    # appendices and author lists after it stay (13% of the SciPy 1.0 paper's output).
    cut_back_matter: bool = True


class ArxivClean(Stage):
    """Flattened LaTeX -> paper body: comments, user macros, preamble and bibliography removed."""

    name = "arxiv_clean"
    parallel_parts = True  # each paper cleaned on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "documents"
    Config = ArxivCleanConfig
    description = "LLaMA-1 arXiv rules: comments, macro expansion, preamble and bibliography removed."

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        for doc in docs:
            yield self.clean(doc)

    def clean(self, doc: Document) -> Document:
        cfg = self.config
        text = strip_comments(doc.text)
        end = END_DOCUMENT.search(text)
        if end:
            text = text[: end.start()]  # TeX never reads past \end{document}
        text, macros = extract_macros(text)
        text, expansions, capped = expand_macros(text, macros, cfg.max_expansion_passes, cfg.max_expansion_growth)
        doc.meta |= {"macros_defined": len(macros), "macro_expansions": expansions}
        if capped:
            doc.meta["macro_expansion_capped"] = True
        begin = BEGIN_DOCUMENT.search(text)
        section = FIRST_SECTION.search(text, begin.end() if begin else 0)
        if section is None:
            doc.text = text
            return doc.reject("no_section")
        text = text[section.start() :]
        if cfg.cut_back_matter:
            back = BACK_MATTER.search(text)
            if back is not None:
                doc.meta["back_matter_chars_removed"] = len(text) - back.start()
                text = text[: back.start()]
        for pattern in BIBLIOGRAPHY:
            text = pattern.sub("", text)
        doc.text = re.sub(r"\n[ \t]*(?:\n[ \t]*){2,}", "\n\n", text).strip()
        if len(doc.text) < cfg.min_chars:
            doc.reject("empty_after_clean")
        return doc
