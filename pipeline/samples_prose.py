"""Real human writing found offline on any machine that has the project's venv.

The sample inputs (pipeline/samples.py) must read like the wild: the language-ID, perplexity, dedup
and quality stages are meaningless against random words. Everything here was written by people and
ships with Python or with packages requirements.lock pins:

- English, coherent: Python's bundled documentation, `pydoc_data.topics` (the language reference,
  ~460 KB of prose).
- English, varied: docstrings of the standard library and of pinned packages, read with `ast` (never
  imported: no side effects, and fast).
- Other languages: gettext catalogs (Debian's /usr/share/locale when present; the `humanize`
  package's own catalogs always, since prefect depends on it) and CPython's
  test/cjkencodings/*-utf8.txt (Chinese, Japanese, Korean prose) when present.
- Code: source files of installed packages, with their real licences (see samples.py, github).

All reads are sorted and every choice goes through a seeded `random.Random`, so one seed gives the
same text on one machine. Pools are filled lazily: a tiny sample parses only a few hundred files.
"""

from __future__ import annotations

import ast
import gettext
import importlib.util
import os
import random
import re
import sysconfig
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# Standard-library folders whose source is not library prose (tests, GUI demos, vendored grammars).
STDLIB_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
               "__pycache__", "config-3.11-x86_64-linux-gnu", "venv", "pydoc_data"}
STDLIB_SKIP_FILES = {"this.py", "antigravity.py", "turtle.py", "__hello__.py"}

# Pinned packages with long, well-written docstrings, in the order the pool grows into them.
DOCSTRING_PACKAGES = ("networkx", "numpy", "sqlalchemy", "scipy", "pip", "setuptools", "redis", "prefect",
                      "sympy", "pydantic", "mpmath", "_pytest", "click", "jinja2", "rich", "alembic", "torch")

# Docstring sections that list parameters rather than explain (numpydoc and Google style).
NON_PROSE_SECTIONS = {"parameters", "returns", "return", "yields", "raises", "attributes", "methods",
                      "see also", "other parameters", "warns", "receives", "examples", "example", "args",
                      "arguments", "keyword args", "keyword arguments", "kwargs", "type", "rtype", "usage"}

ROLE = re.compile(r":[a-zA-Z:_-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
DOUBLE_BACKTICK = re.compile(r"``([^`]+)``")
SINGLE_BACKTICK = re.compile(r"`([^`]+)`_{0,2}")
STRONG = re.compile(r"\*\*([^*]+)\*\*")
EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])")
UNDERLINE = re.compile(r"^\s*([=\-~^*+#\"'`:.])\1{2,}\s*$")
FIELD_LIST = re.compile(r":(param|parameter|arg|type|return|returns|rtype|raises|raise|context|ivar|var)\b")
CODE_LINE = re.compile(r"^\s*(def |class |import |from \S+ import|return\b|print\(|\w+ = |@\w+|#)", re.M)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def strip_rest(text: str) -> str:
    """Turn reST inline markup into the plain words a reader sees (``x`` -> x, :func:`f` -> f)."""
    text = ROLE.sub(r"\1", text)
    text = DOUBLE_BACKTICK.sub(r"\1", text)
    text = SINGLE_BACKTICK.sub(r"\1", text)
    text = STRONG.sub(r"\1", text)
    text = EMPHASIS.sub(r"\1", text)
    text = text.replace("::", ":").replace("\\ ", "")
    return " ".join(text.split())


def looks_like_prose(paragraph: str, min_chars: int = 80) -> bool:
    """A paragraph a person wrote as sentences: long enough, mostly letters, ends like a sentence."""
    if len(paragraph) < min_chars or len(paragraph.split()) < 10 or paragraph[-1] not in ".!?:)\"'":
        return False
    if paragraph[0] in "|+=-.>([{:" or ">>>" in paragraph or "::=" in paragraph or FIELD_LIST.search(paragraph):
        return False
    letters = sum(c.isalpha() or c == " " for c in paragraph)
    return letters / len(paragraph) >= 0.85


def split_sentences(paragraph: str) -> list[str]:
    return [s for s in SENTENCE_END.split(paragraph) if s]


@dataclass
class ProseText:
    """One coherent piece of writing: a reference topic, or the docstrings of one module."""

    title: str
    origin: str
    paragraphs: list[str]
    headings: dict[int, str] = field(default_factory=dict)  # paragraph index -> heading starting there
    code: list[str] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.paragraphs)


# ---------------------------------------------------------------------------------------------
# Parsers


def parse_pydoc_topic(name: str, body: str) -> ProseText:
    """pydoc_data renders the reference as plain text: headings underlined with * = -, code and
    grammar indented by three spaces, bullets as '* '."""
    lines = body.splitlines()
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    title = name
    paragraphs: list[str] = []
    headings: dict[int, str] = {}
    code: list[str] = []
    for block in blocks:
        if block[0].startswith("-[ "):  # footnotes
            break
        if len(block) == 2 and UNDERLINE.match(block[1]):
            if not paragraphs and title == name:
                title = block[0].strip()
            else:
                headings[len(paragraphs)] = block[0].strip()
            continue
        joined = "\n".join(block)
        if "::=" in joined or ">>>" in joined or CODE_LINE.search(joined):
            code.append(textwrap.dedent(joined))
            continue
        first_indent = len(block[0]) - len(block[0].lstrip())
        if len(block) > 1 and len(block[1]) - len(block[1].lstrip()) > first_indent \
                and len(block[0].strip()) < 60 and block[0].rstrip()[-1] not in ".,;:":
            # a definition list: the term becomes a heading, its indented body a paragraph
            headings[len(paragraphs)] = block[0].strip()
            block = block[1:]
        text = strip_rest(" ".join(line.strip().removeprefix("* ") for line in block))
        if looks_like_prose(text, min_chars=60):
            paragraphs.append(text)
    return ProseText(title=title, origin=f"pydoc_data.topics:{name}", paragraphs=paragraphs, headings=headings,
                     code=code)


def docstring_blocks(doc: str) -> Iterator[tuple[str, str]]:
    """(kind, text) for each blank-line separated block of a cleaned docstring."""
    skipping = False
    for block in re.split(r"\n\s*\n", doc):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        first = lines[0].strip().rstrip(":").lower()
        if len(lines) >= 2 and UNDERLINE.match(lines[1]):  # numpydoc section heading
            skipping = first in NON_PROSE_SECTIONS
            lines = lines[2:]
            if not lines:
                continue
        elif first in NON_PROSE_SECTIONS:  # Google style "Args:" block
            skipping = True
            continue
        if any(line.lstrip().startswith(">>>") for line in lines):
            yield "code", "\n".join(lines)
            continue
        if skipping or lines[0].lstrip().startswith(".."):
            continue
        if all(line.startswith((" ", "\t")) for line in lines):
            continue  # indented literal block or definition body
        yield "para", strip_rest(" ".join(line.strip() for line in lines))


def parse_module_docstrings(path: Path, module: str) -> ProseText | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return None
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                         ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    text = ProseText(title=module, origin=f"docstrings:{module}", paragraphs=[])
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        heading_pending = None if isinstance(node, ast.Module) else node.name
        for kind, block in docstring_blocks(doc):
            if kind == "code":
                text.code.append(block)
            elif looks_like_prose(block):
                if heading_pending:
                    text.headings[len(text.paragraphs)] = heading_pending
                    heading_pending = None
                text.paragraphs.append(block)
    return text if text.paragraphs else None


def _walk_python_files(root: Path, skip_dirs: set[str]) -> list[Path]:
    """Sorted .py files under root, pruning skipped folders before descending (the stdlib folder
    also holds site-packages and the test suite: walking them would cost seconds)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("test"))
        found.extend(Path(folder) / f for f in files if f.endswith(".py"))
    return sorted(found)


def stdlib_modules() -> list[tuple[Path, str]]:
    found = []
    for path in _walk_python_files(STDLIB, STDLIB_SKIP):
        rel = path.relative_to(STDLIB)
        if rel.name in STDLIB_SKIP_FILES or rel.name.startswith("test"):
            continue
        found.append((path, ".".join(rel.with_suffix("").parts).removesuffix(".__init__")))
    return found


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None


def package_modules(name: str) -> list[tuple[Path, str]]:
    root = package_dir(name)
    if root is None or not root.is_dir():
        return []
    found = []
    for path in _walk_python_files(root, {"tests", "testing", "_vendor", "vendor", "__pycache__"}):
        rel = path.relative_to(root.parent)
        found.append((path, ".".join(rel.with_suffix("").parts).removesuffix(".__init__")))
    return found


# ---------------------------------------------------------------------------------------------
# English


class EnglishProse:
    """Hands out real English text, each paragraph at most once (until every source is spent).

    Reference topics (coherent, long) are kept apart from the docstring stream: samples.py uses them
    for the pages Wikipedia cites, the rest of the web gets the mixed docstring stream."""

    MIN_TEXT_CHARS = 300

    def __init__(self, seed: int):
        self.seed = seed
        self.reused = False  # set when every source was spent and paragraphs repeat
        self._seen: set[str] = set()
        self._topics: list[ProseText] | None = None
        self._texts = self._docstring_texts()
        self._loose: list[str] = []
        self._code: list[str] = []

    # -- reference topics ------------------------------------------------------------------------
    def _load_topics(self) -> list[ProseText]:
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip pydoc_data; the docstring stream remains
            return []
        rng = random.Random(f"topics:{self.seed}")
        chunks: list[ProseText] = []
        for name in sorted(topics):
            topic = parse_pydoc_topic(name, topics[name])
            paragraphs = [p for p in topic.paragraphs if self._fresh(p)]
            # cut long topics into page-sized chunks at paragraph boundaries
            part: list[str] = []
            for paragraph in paragraphs:
                part.append(paragraph)
                if sum(map(len, part)) >= 5000:
                    chunks.append(ProseText(topic.title, topic.origin, part, code=topic.code))
                    part = []
            if part:
                chunks.append(ProseText(topic.title, topic.origin, part, code=topic.code))
        rng.shuffle(chunks)
        return chunks

    def topic(self, min_chars: int = 1500) -> ProseText:
        """A coherent chunk of the language reference; falls back to a module's docstrings."""
        if self._topics is None:
            self._topics = self._load_topics()
        while self._topics:
            chunk = self._topics.pop()
            if chunk.chars >= min_chars:
                return chunk
            self._loose.extend(chunk.paragraphs)
        return self.text(min_chars)

    # -- docstring stream ------------------------------------------------------------------------
    def _fresh(self, paragraph: str) -> bool:
        if paragraph in self._seen:
            return False
        self._seen.add(paragraph)
        return True

    def _docstring_texts(self) -> Iterator[ProseText]:
        rounds = 0
        while True:
            produced = 0
            for family in ("stdlib",) + DOCSTRING_PACKAGES:
                modules = stdlib_modules() if family == "stdlib" else package_modules(family)
                rng = random.Random(f"docstrings:{self.seed}:{family}:{rounds}")
                rng.shuffle(modules)
                for path, module in modules:
                    text = parse_module_docstrings(path, module)
                    if text is None:
                        continue
                    text.paragraphs = [p for p in text.paragraphs if self._fresh(p)]
                    if text.chars >= self.MIN_TEXT_CHARS:
                        produced += 1
                        yield text
            if not produced:
                raise RuntimeError("no English prose found: neither the stdlib sources nor any pinned package")
            rounds += 1
            self.reused = True
            self._seen.clear()

    def text(self, min_chars: int = 0) -> ProseText:
        """The docstrings of the next module with at least min_chars of prose; shorter ones go to
        the loose-paragraph pool rather than being wasted."""
        for text in self._texts:
            self._code.extend(text.code)
            if text.chars >= min_chars:
                return text
            self._loose.extend(text.paragraphs)
        raise AssertionError("unreachable: the docstring stream is endless")

    def paragraphs(self, count: int, max_chars: int = 100_000) -> list[str]:
        """count loose paragraphs, each at most max_chars long."""
        out: list[str] = []
        while len(out) < count:
            if not self._loose:
                self._loose.extend(reversed(self.text().paragraphs))
            paragraph = self._loose.pop()
            if len(paragraph) <= max_chars:
                out.append(paragraph)
        return out

    def text_of_length(self, min_chars: int) -> list[ProseText]:
        """Consecutive module texts adding up to min_chars (for books)."""
        texts, total = [], 0
        while total < min_chars:
            text = self.text()
            texts.append(text)
            total += text.chars
        return texts

    def code_block(self) -> str | None:
        """A real code example from a docstring (doctest blocks)."""
        while not self._code:
            text = self.text()
            self._loose.extend(text.paragraphs)
            if self.reused and not self._code:
                return None
        return self._code.pop()


# ---------------------------------------------------------------------------------------------
# Other languages

# fastText label -> Debian locale folders, humanize catalog folders, CPython cjkencodings files.
LANGUAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "zh": (("zh_CN",), ("zh_CN",), ("gb2312", "big5")),
    "ja": (("ja",), ("ja_JP",), ("shift_jis",)),
    "ko": (("ko",), ("ko_KR",), ("euc_kr",)),
    "fr": (("fr",), ("fr_FR",), ()),
    "de": (("de",), ("de_DE",), ()),
    "ru": (("ru",), ("ru_RU",), ()),
    "es": (("es",), ("es_ES",), ()),
    "it": (("it",), ("it_IT",), ()),
    "pl": (("pl",), ("pl_PL",), ()),
    "nl": (("nl",), ("nl_NL",), ()),
}
# ISO 639-3 names CommonCrawl puts in WARC-Identified-Content-Language.
ISO639_3 = {"en": "eng", "zh": "zho", "ja": "jpn", "ko": "kor", "fr": "fra", "de": "deu", "ru": "rus",
            "es": "spa", "it": "ita", "pl": "pol", "nl": "nld"}
CJK = {"zh", "ja", "ko"}
# Debian catalogs whose messages are full sentences (not lists of country or currency names).
CATALOGS = ("coreutils", "apt", "dpkg", "bash", "tar", "grep", "findutils", "sed", "wget", "diffutils",
            "gettext-tools", "gettext-runtime", "glib20", "gtk20", "systemd", "git", "make", "libc",
            "shadow", "man-db", "gnupg2", "adduser", "psql-15", "postgres-15", "xz", "procps-ng")
LOCALE_ROOT = Path("/usr/share/locale")
PLACEHOLDER = re.compile(r"%[-+ #0-9.*]*[a-zA-Z]|%\([a-z_]+\)[a-z]")


def catalog_strings(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a damaged or foreign-format catalog is simply skipped
        return []
    out = []
    for key, value in catalog.items():
        if key and isinstance(value, str):
            out.append(value)
    return out


def clean_catalog_line(line: str, language: str, allow_placeholders: bool, rng: random.Random) -> str | None:
    line = line.strip()
    if not line or line[0] in "-[(<*#" or any(c in line for c in "\\{}<>|`$_\t=/"):
        return None
    if PLACEHOLDER.search(line):
        if not allow_placeholders:
            return None
        line = PLACEHOLDER.sub(lambda m: str(rng.randint(2, 59)), line)
    if "%" in line:
        return None
    letters = sum(c.isalpha() or c.isspace() for c in line)
    if letters / len(line) < 0.75:
        return None
    if language in CJK:
        return line if len(line) >= (2 if allow_placeholders else 8) else None
    return line if len(line.split()) >= (1 if allow_placeholders else 4) else None


class ForeignProse:
    """Sentences in other languages, drawn without repetition per language while they last."""

    def __init__(self, seed: int):
        self.seed = seed
        self._pools: dict[str, list[str]] = {}
        self._all: dict[str, tuple[str, ...]] = {}
        self.origins: dict[str, list[str]] = {}

    def languages(self) -> list[str]:
        """Languages with real text on this machine (humanize's catalogs make this never empty)."""
        return [lang for lang in LANGUAGES if self._pool(lang)]

    def _pool(self, language: str) -> list[str]:
        if language in self._pools:
            return self._pools[language]
        rng = random.Random(f"foreign:{self.seed}:{language}")
        debian_dirs, humanize_dirs, cjk_files = LANGUAGES[language]
        lines: list[str] = []
        origins: list[str] = []
        cjk_dir = STDLIB / "test" / "cjkencodings"
        for name in cjk_files:
            path = cjk_dir / f"{name}-utf8.txt"
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                # the files wrap sentences at fixed width: re-join, then split at sentence ends
                joined = "".join(line.strip() for line in text.splitlines() if line.strip())
                pieces = [s for s in re.split(r"(?<=[。！？.!?])", joined) if len(s.strip()) >= 8]
                lines.extend(s.strip() for s in pieces)
                origins.append(f"cpython:test/cjkencodings/{path.name}")
        for folder in debian_dirs:
            for catalog in CATALOGS:
                path = LOCALE_ROOT / folder / "LC_MESSAGES" / f"{catalog}.mo"
                if not path.is_file():
                    continue
                before = len(lines)
                for value in catalog_strings(path):
                    # wrapped help text: re-join lines unless they are option tables
                    lines_of = value.split("\n")
                    if not any(line.startswith((" ", "-", "\t")) for line in lines_of):
                        lines_of = [" ".join(lines_of)]
                    for line in lines_of:
                        cleaned = clean_catalog_line(line, language, False, rng)
                        if cleaned:
                            lines.append(cleaned)
                if len(lines) > before:
                    origins.append(f"gettext:{path}")
                if len(lines) > 2500:  # plenty for any scale; reading more costs time
                    break
        if len(lines) < 50:  # no Debian catalogs: humanize's short phrases, placeholders filled in
            humanize_root = package_dir("humanize")
            for folder in humanize_dirs:
                path = (humanize_root / "locale" / folder / "LC_MESSAGES" / "humanize.mo") if humanize_root else None
                if path and path.is_file():
                    for value in catalog_strings(path):
                        cleaned = clean_catalog_line(value, language, True, rng)
                        if cleaned:
                            lines.append(cleaned)
                    origins.append(f"gettext:humanize/locale/{folder}")
        unique = sorted(set(lines))
        rng.shuffle(unique)
        self._pools[language] = unique
        self._all[language] = tuple(unique)
        self.origins[language] = origins
        return unique

    def sentences(self, language: str, count: int) -> list[str]:
        pool = self._pool(language)
        if not pool:
            return []
        out = []
        for _ in range(count):
            if not pool:  # spent: start again (happens only with the tiny humanize fallback)
                pool.extend(self._all[language])
            out.append(pool.pop())
        return out
