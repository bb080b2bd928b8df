"""Wikipedia: MediaWiki XML dumps -> raw wikitext documents -> plain text.

LLaMA-1 (Touvron et al. 2023, sec. 2): "We add Wikipedia dumps from the June-August 2022 period,
covering 20 languages, which use either the Latin or Cyrillic scripts [...]. We process the data to
remove hyperlinks, comments and other formatting boilerplate."

Two stages:
  wikipedia_ingest  streams a pages-articles dump (bz2 or plain XML) page by page and keeps the
                    raw wikitext of main-namespace, non-redirect pages of the 20 paper languages.
  wikipedia_clean   turns wikitext into plain text with mwparserfromhell, after saving the URLs
                    cited inside <ref> tags in meta["ref_urls"] (the CommonCrawl Wikipedia-reference
                    classifier is trained on the pages Wikipedia cites).
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Any, Iterator

import mwparserfromhell
import pyarrow as pa
from lxml import etree
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.parser import ParserError
from mwparserfromhell.wikicode import Wikicode

from pipeline.documents import Document, StageError
from pipeline.stage import ReaderConfig, Stage, StageConfig

SOURCE = "wikipedia"

# The paper's 20 languages (LLaMA-1 sec. 2, "Wikipedia [4.5%]").
LLAMA_WIKIPEDIA_LANGUAGES = (
    "bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
    "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk",
)  # fmt: skip

# MediaWiki's #REDIRECT magic word and the localized spellings of the paper languages whose dumps
# are most likely to carry text-only redirects (old exports without the <redirect/> element).
REDIRECT_PREFIXES = (
    "#redirect", "#weiterleitung", "#redirection", "#redirección", "#rinvia", "#doorverwijzing",
    "#przekieruj", "#patrz", "#redirecionamento", "#перенаправление", "#перенаправлення",
    "#omdirigering", "#přesměruj", "#átirányítás", "#preusmeri", "#преусмери", "#пренасочване",
)  # fmt: skip


def local_name(tag: Any) -> str:
    """Tag name without its namespace: dumps of export-0.3 ... 0.11 differ only in the namespace."""
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def language_from_dbname(dbname: str) -> str | None:
    """"enwiki" -> "en", "zh_yuewiki" -> "zh-yue"; None for other projects (enwiktionary...)."""
    match = re.fullmatch(r"([a-z][a-z_]*?)wiki", dbname.strip().lower())
    return match.group(1).replace("_", "-") if match else None


def language_from_file_name(path: Path) -> str | None:
    match = re.match(r"([a-z][a-z_]*?)wiki-", path.name.lower())
    return match.group(1).replace("_", "-") if match else None


def is_redirect_text(text: str) -> bool:
    head = text.lstrip()[:40].lower()
    return head.startswith(REDIRECT_PREFIXES)


class WikipediaIngestConfig(ReaderConfig):
    # LLaMA-1 sec. 2: bg, ca, cs, da, de, en, es, fr, hr, hu, it, nl, pl, pt, ro, ru, sl, sr, sv, uk.
    languages: tuple[str, ...] = LLAMA_WIKIPEDIA_LANGUAGES


class WikipediaIngest(Stage):
    """MediaWiki XML dump -> one Document per page, raw wikitext (cleaning is wikipedia_clean)."""

    name = "wikipedia_ingest"
    parallel_parts = True  # one dump file per part, read on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "raw"
    raw_patterns = ("*.xml.bz2", "*.xml")
    columns = {"language": pa.string()}
    Config = WikipediaIngestConfig
    description = "Pages of a MediaWiki dump: main namespace, no redirects, the paper's 20 languages."

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{path}: Wikipedia dump not found")
        if path.stat().st_size == 0:
            yield self._file_row(path, 0, "empty_file")
            return
        opener = bz2.open if path.name.endswith(".bz2") else open
        with opener(path, "rb") as stream:
            yield from self._pages(path, stream)

    def _file_row(self, path: Path, where: int, reason: str) -> Document:
        return Document(id=f"{SOURCE}/{path.name}@{where}", text="", source=SOURCE).reject(reason)

    def _pages(self, path: Path, stream) -> Iterator[Document]:
        # Entities are never resolved and nothing is fetched: a dump is untrusted input. No
        # huge_tree: libxml2 then stops at a text node over 10 MB (MediaWiki caps a page at 2 MB,
        # $wgMaxArticleSize) instead of holding up to 1 GB of a bz2 bomb's one page.
        events = etree.iterparse(
            stream, events=("start", "end"), resolve_entities=False, no_network=True, huge_tree=False
        )
        language = language_from_file_name(path)
        namespaces: dict[str, int] = {}
        pages = 0
        try:
            for event, elem in events:
                name = local_name(elem.tag)
                if event == "start":
                    if name == "mediawiki" and language is None:
                        # The root's xml:lang is the wiki's content language.
                        language = elem.get("{http://www.w3.org/XML/1998/namespace}lang") or None
                    continue
                if name == "dbname":
                    language = language_from_dbname(elem.text or "") or language
                elif name == "namespace" and elem.text:
                    namespaces[elem.text.strip().lower()] = int(elem.get("key", "0"))
                elif name == "siteinfo":
                    elem.clear()
                elif name == "page":
                    pages += 1
                    yield self._page(elem, language or "unknown", namespaces, f"{path.name}@page{pages}")
                    # Keep memory bounded by one page: drop it and the finished siblings before it.
                    elem.clear()
                    parent = elem.getparent()
                    if parent is not None:
                        while elem.getprevious() is not None:
                            del parent[0]
        except etree.XMLSyntaxError as exc:
            line = exc.lineno or (exc.position[0] if exc.position else 0)
            reason = "empty_file" if pages == 0 and "empty" in str(exc).lower() else f"malformed_xml:{line}"
            yield self._file_row(path, line, reason)
        except (EOFError, OSError) as exc:  # a truncated or corrupt bz2 stream
            yield self._file_row(path, pages, f"unreadable_file:{type(exc).__name__}")

    def _page(self, page: etree._Element, language: str, namespaces: dict[str, int], where: str = "") -> Document:
        """One <page>; a page without id and title, or without a revision text, is an
        "unreadable_record" (id "wikipedia/<file>@page<n>" when it has neither id nor title)."""
        fields: dict[str, Any] = {"redirect": False, "ns": None}
        revision: etree._Element | None = None
        for child in page:
            name = local_name(child.tag)
            if name in ("title", "id", "ns"):
                fields[name] = (child.text or "").strip()
            elif name == "redirect":
                fields["redirect"] = True
            elif name == "revision":
                revision = child  # full-history dumps: the last revision is the current text
        text, revision_id, timestamp = "", None, None
        has_text = False
        if revision is not None:
            for child in revision:
                name = local_name(child.tag)
                if name == "text":
                    text, has_text = child.text or "", True
                elif name == "id":
                    revision_id = (child.text or "").strip()
                elif name == "timestamp":
                    timestamp = (child.text or "").strip()
        title = fields.get("title", "")
        page_id = fields.get("id", "")
        if fields["ns"] not in (None, ""):
            namespace = int(fields["ns"])
        else:  # export-0.3/0.4 have no <ns>: the title prefix names the namespace
            prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
            namespace = namespaces.get(prefix, 0)
        doc = Document(
            id=f"{SOURCE}/{language}/{page_id or title}" if page_id or title else f"{SOURCE}/{where}",
            text=text,
            source=SOURCE,
            meta={
                "title": title,
                "page_id": int(page_id) if page_id.isdigit() else page_id,
                "revision_id": int(revision_id) if revision_id and revision_id.isdigit() else revision_id,
                "timestamp": timestamp,
                "lang": language,
            },
            columns={"language": language},
        )
        if not (page_id or title):
            return doc.reject("unreadable_record:missing id and title")
        if not has_text:
            return doc.reject("unreadable_record:missing revision text")
        if language not in self.config.languages:
            return doc.reject(f"language:{language}")
        if namespace != 0:
            return doc.reject(f"namespace:{namespace}")
        if fields["redirect"] or is_redirect_text(text):
            return doc.reject("redirect")
        return doc


# ---------------------------------------------------------------------------------------------
# wikitext -> plain text

# Namespaces whose links are not prose: files, images and categories (English and the localized
# names of the paper languages), and Media: links.
NON_PROSE_LINK_NAMESPACES = frozenset(
    """file image media category
    datei bild kategorie fichier catégorie archivo imagen categoría categoria immagine ficheiro
    imagem bestand afbeelding categorie plik grafika kategoria fișier imagine categorie soubor
    obrázek kategorie fil billede kategori bild kategori fájl kép kategória slika datoteka
    kategorija датотека слика категорија файл изображение категория файл зображення категорія
    файл картинка категория fitxer imatge categoria""".split()
)
# [[de:Artikel]] with no leading colon is an interlanguage link: invisible in the rendered page.
INTERLANGUAGE_LINK = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]+)*:")
# Tags whose content is not article prose (tables are Tag "table" with wiki markup "{|").
DROPPED_TAGS = frozenset(
    "ref references table gallery imagemap timeline graph score templatedata noinclude "
    "syntaxhighlight source math chem hiero inputbox categorytree mapframe".split()
)
# Parameters of citation templates that hold the cited page (archive-url is a copy of `url`).
CITED_URL_PARAMS = frozenset(
    "url chapter-url chapterurl contribution-url section-url conference-url transcript-url "
    "lay-url map-url mapurl".split()
)
URL = re.compile(r"^(?:https?:)?//[^\s<>\[\]{}|]+", re.IGNORECASE)
MAGIC_WORD = re.compile(r"__[A-Z]+__")


# <ref> tags are cut with a regex BEFORE parsing: mwparserfromhell gives up on a ref whose content
# has unbalanced '' or [[ and leaves it as literal text ("<ref>..." in the output); refs never nest.
HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
REF_ELEMENT = re.compile(r"<ref(?:\s[^<>]*)?>(.*?)</ref\s*>", re.DOTALL | re.IGNORECASE)
REF_SELF_CLOSING = re.compile(r"<ref(?:\s[^<>]*)?/\s*>", re.IGNORECASE)  # cut first: <ref name=x/> opens nothing


def urls_cited_in(ref_content: str) -> list[str]:
    """The cited URLs of one <ref>: url-like citation-template params and external links."""
    found: list[str] = []

    def add(value: str) -> None:
        match = URL.match(value.strip())
        if match:
            url = match.group(0)
            found.append("https:" + url if url.startswith("//") else url)

    def walk(code: Wikicode) -> None:
        for node in code.nodes:
            if isinstance(node, Template):
                for param in node.params:
                    if str(param.name).strip().lower() in CITED_URL_PARAMS:
                        add(str(param.value))
            elif isinstance(node, ExternalLink):
                add(str(node.url))
            elif isinstance(node, Tag) and node.contents is not None:
                walk(node.contents)
            elif isinstance(node, Wikilink) and node.text is not None:
                walk(node.text)

    walk(mwparserfromhell.parse(ref_content))
    return found


def extract_ref_urls(wikitext: str) -> list[str]:
    """URLs cited inside <ref>...</ref>, in order of appearance, each once."""
    urls: dict[str, None] = {}
    for match in REF_ELEMENT.finditer(wikitext):
        for url in urls_cited_in(match.group(1)):
            urls.setdefault(url, None)
    return list(urls)


def _link_namespace(title: str) -> str:
    return title.split(":", 1)[0].strip().lower() if ":" in title else ""


def render_plain(code: Wikicode) -> str:
    """Wikicode -> text, node by node: the rules of wikipedia_clean in one place."""
    out: list[str] = []
    for node in code.nodes:
        if isinstance(node, Text):
            out.append(str(node.value))
        elif isinstance(node, (Template, Comment, Argument)):
            continue  # infoboxes, navboxes, citations, parser functions; <!-- comments -->
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, Heading):
            out.append("\n" + render_plain(node.title).strip() + "\n")
        elif isinstance(node, Wikilink):
            title = str(node.title).strip()
            if not title.startswith(":"):
                if _link_namespace(title) in NON_PROSE_LINK_NAMESPACES or INTERLANGUAGE_LINK.match(title):
                    continue
            out.append(render_plain(node.text) if node.text is not None else title.lstrip(":"))
        elif isinstance(node, ExternalLink):
            if node.title is not None:
                out.append(render_plain(node.title))
            elif not node.brackets:
                out.append(str(node.url))  # a bare URL is part of the sentence
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROPPED_TAGS:
                continue
            if tag == "br":
                out.append("\n")
            elif node.contents is not None and not node.self_closing:
                out.append(render_plain(node.contents))  # '''bold''', ''italic'', <span>, <sup>...
        else:
            out.append(str(node))
    return "".join(out)


# What mwparserfromhell leaves as literal text when it cannot parse a construct (a table inside a
# template, a multi-line image caption, unbalanced quotes): removed innermost first.
RESIDUAL_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
RESIDUAL_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
RESIDUAL_TABLE = re.compile(r"^\s*\{\|.*?^\s*\|\}", re.DOTALL | re.MULTILINE)
RESIDUAL_QUOTES = re.compile(r"'{2,}")
RESIDUAL_HTML = re.compile(
    r"</?(?:blockquote|div|span|small|big|center|sup|sub|font|poem|u|s|del|ins|abbr|cite|code|"
    r"tt|var|p|br|hr|ul|ol|li|dl|dt|dd|onlyinclude|includeonly|nowiki)(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)


def _residual_link(match: re.Match) -> str:
    title, label = match.group(1).strip(), match.group(2)
    if not title.startswith(":") and (
        _link_namespace(title) in NON_PROSE_LINK_NAMESPACES or INTERLANGUAGE_LINK.match(title)
    ):
        return ""
    return label if label is not None else title.lstrip(":")


def remove_residual_markup(text: str) -> str:
    for pattern, repl in ((RESIDUAL_TEMPLATE, ""), (RESIDUAL_LINK, _residual_link), (RESIDUAL_TABLE, "")):
        for _ in range(20):  # nesting depth; each round removes the innermost level
            text, count = pattern.subn(repl, text)
            if not count:
                break
    return RESIDUAL_HTML.sub("", RESIDUAL_QUOTES.sub("", text))


def normalize_whitespace(text: str) -> str:
    text = MAGIC_WORD.sub("", text).replace("\u00a0", " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wikitext_to_plain(wikitext: str) -> tuple[str, list[str]]:
    """(plain text, URLs cited in <ref> tags)."""
    wikitext = HTML_COMMENT.sub("", wikitext)  # a commented-out <ref> cites nothing
    wikitext = REF_SELF_CLOSING.sub("", wikitext)
    ref_urls = extract_ref_urls(wikitext)
    wikitext = REF_ELEMENT.sub("", wikitext)
    text = render_plain(mwparserfromhell.parse(wikitext))
    return normalize_whitespace(remove_residual_markup(text)), ref_urls


class WikipediaCleanConfig(StageConfig):
    # Not from the paper (it gives no length rule). A page whose text falls under ~one sentence
    # after cleaning was a stub, list or template shell; 100 characters drops those and keeps every
    # real article (the shortest enwiki stubs are a few sentences).
    min_chars: int = 100


class WikipediaClean(Stage):
    """Raw wikitext -> plain text; cited URLs saved in meta["ref_urls"]."""

    name = "wikipedia_clean"
    parallel_parts = True  # each page cleaned on its own
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "documents"
    columns = {"language": pa.string()}
    Config = WikipediaCleanConfig
    description = "Wikitext to plain text (links to their text; templates, tables, refs, files removed)."

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        for doc in docs:
            try:
                text, ref_urls = wikitext_to_plain(doc.text)
            except (ParserError, RecursionError) as exc:  # pathological nesting: reject, not crash
                yield doc.reject(f"unparseable_wikitext:{type(exc).__name__}")
                continue
            doc.text = text
            doc.meta["ref_urls"] = ref_urls
            if len(text) < self.config.min_chars:
                doc.reject("empty_after_clean")
            yield doc
