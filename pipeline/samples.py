"""Sample raw inputs for all seven sources, laid out as they come in the wild, with planted cases.

`write_samples(out, seed, scale)` writes what the corpus build reads at its very start:

    cc/CC-MAIN-sample-00000.warc.wet.gz ...     CommonCrawl WET (one gzip member per WARC record)
    c4/c4-train.00000-of-00002.json.gz ...      allenai/c4 'en' JSON lines {text, timestamp, url}
    github/github-00000.jsonl.gz ...            BigQuery github_repos export rows (RedPajama's query)
    wikipedia/enwiki-sample-pages-articles.xml.bz2   MediaWiki export-0.10 dump
    books/gutenberg/pg<N>.txt                   Project Gutenberg plain text (CRLF, header + licence)
    books/books3/books3-00000.jsonl.zst         The Pile's Books3 {text, meta}
    arxiv/arXiv_src_sample_000.tar              arXiv bulk-source tar of <yymm>/<id>.gz members
    stackexchange/<site>/Posts.xml              Stack Exchange data dump posts
    SAMPLES.json                                the manifest returned by write_samples

The prose is real human writing found offline (pipeline/samples_prose.py): Python's reference
documentation, docstrings, gettext catalogs, CJK texts, and real source files for GitHub. Only the
cases that are noise by nature (gibberish, keyword spam, boilerplate lines, placeholder text) are
made up. Each planted case (duplicates, non-English pages, GPL repos, cited URLs...) is listed in the
manifest under `sources.<name>.planted`, so the tests of each stage and the demo can check that the
rule meant for it catches it.

Same seed and scale on one machine give byte-identical files: every choice goes through a seeded
random.Random, timestamps derive from the seed, gzip members carry mtime 0, tar members fixed
metadata. scale 1.0 is the demo (~10 MB of raw text); scale 0.05 is a tiny but complete sample for
tests (every planted category at least once).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import html
import io
import json
import random
import re
import tarfile
import textwrap
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import zstandard

from pipeline.documents import code_version_of
from pipeline.samples_prose import (
    ISO639_3,
    EnglishProse,
    ForeignProse,
    ProseText,
    package_dir,
    split_sentences,
)

SAMPLES_MANIFEST = "SAMPLES.json"
FORMAT_VERSION = 1


def generator_version() -> str:
    """Digest of the generator's code: samples written by another version are written again."""
    from pipeline import samples_prose

    return code_version_of(__file__) + "/" + code_version_of(samples_prose.__file__).split("+")[1]


def write_samples(out: Path, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write raw samples of every source under `out`; return (and write to out/SAMPLES.json) the
    manifest: per source the files written, document counts and the planted cases."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = SampleContext(out=out, seed=seed, scale=scale, english=EnglishProse(seed), foreign=ForeignProse(seed))
    sources: dict[str, Any] = {}
    sources["cc"] = write_cc(ctx)
    sources["wikipedia"] = write_wikipedia(ctx, cited_urls=sources["cc"]["planted"]["cited_urls"])
    sources["c4"] = write_c4(ctx)
    sources["github"] = write_github(ctx)
    sources["books"] = write_books(ctx)
    sources["arxiv"] = write_arxiv(ctx)
    sources["stackexchange"] = write_stackexchange(ctx)
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": generator_version(),
        "seed": seed,
        "scale": scale,
        "prose": {
            "english": sorted({origin.split(".")[0] for origin in ctx.english_origins}),
            "foreign": {lang: ctx.foreign.origins.get(lang, []) for lang in ctx.foreign.languages()},
            "reused_paragraphs": ctx.english.reused,
        },
        "total_bytes": sum((out / f).stat().st_size for s in sources.values() for f in s["files"]),
        "sources": sources,
    }
    (out / SAMPLES_MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------
# Shared pieces


@dataclass
class SampleContext:
    out: Path
    seed: int
    scale: float
    english: EnglishProse
    foreign: ForeignProse
    english_origins: set[str] = field(default_factory=set)
    _vocabulary: list[str] | None = None
    _used_urls: set[str] = field(default_factory=set)

    def rng(self, source: str) -> random.Random:
        return random.Random(f"samples:{self.seed}:{source}")

    def count(self, at_scale_one: int, minimum: int) -> int:
        return max(minimum, round(at_scale_one * self.scale))

    def epoch(self) -> datetime:
        """A fixed crawl date per seed."""
        return datetime(2023, 1, 2, tzinfo=timezone.utc) + timedelta(days=(self.seed * 7) % 300)

    def text(self, min_chars: int = 0) -> ProseText:
        text = self.english.text(min_chars)
        self.english_origins.add(text.origin)
        return text

    def topic(self, min_chars: int) -> ProseText:
        text = self.english.topic(min_chars)
        self.english_origins.add(text.origin)
        return text

    def vocabulary(self) -> list[str]:
        """Plain lowercase English words taken from real prose (for domains, tags, spam)."""
        if self._vocabulary is None:
            words: set[str] = set()
            for paragraph in self.english.paragraphs(40):
                words.update(w for w in re.findall(r"[a-z]{4,10}", paragraph.lower()) if w.isascii())
            self._vocabulary = sorted(words)
        return self._vocabulary

    def unique_url(self, url: str) -> str:
        candidate, n = url, 1
        while candidate in self._used_urls:
            n += 1
            candidate = re.sub(r"(/?)$", f"-{n}\\1", url, count=1)
        self._used_urls.add(candidate)
        return candidate

    def write(self, relative: str, data: bytes) -> str:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return relative


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def slugify(text: str, words: int = 6) -> str:
    tokens = re.findall(r"[a-z0-9]+", text.lower())[:words]
    return "-".join(tokens) or "page"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def split_evenly(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i * size:(i + 1) * size] for i in range(parts)]


# ---------------------------------------------------------------------------------------------
# 1. CommonCrawl WET

NAV_ITEMS = ("Home", "About", "Blog", "News", "Contact", "Shop", "Services", "Resources", "Archive", "Login",
             "Search", "Events", "Support", "FAQ", "Careers", "Press")
# Lines that appear on many pages of many sites: what cc_net's line dedup exists to remove.
SHARED_BOILERPLATE = (
    "This website uses cookies to ensure you get the best experience on our website. Learn more",
    "Skip to main content",
    "Subscribe to our newsletter to get the latest updates delivered to your inbox.",
    "Share this: Facebook Twitter LinkedIn Email",
    "Leave a Reply Cancel reply",
)
SPAM_TEMPLATES = ("best {a} {b}", "cheap {a} {b} online", "buy {a} {b} now", "{a} {b} deals", "top {a} {b} 2023",
                  "{a} {b} free shipping", "{a} {b} discount code", "official {a} {b} store")
FRAGMENTS = ("Tags:", "Posted by admin", "Read more »", "Categories", "Uncategorized", "Related Posts", "Next »",
             "« Previous", "Click here", "Log in", "Sign up", "Menu", "Close", "View all")
GIBBERISH_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
CC_TLD = {"zh": "cn", "ja": "jp", "ko": "kr", "fr": "fr", "de": "de", "ru": "ru", "es": "es", "it": "it",
          "pl": "pl", "nl": "nl"}


@dataclass
class Page:
    url: str
    lines: list[str]
    kind: str
    language: str | None = "en"  # None: CommonCrawl's detector gave no answer (header omitted)

    @property
    def payload(self) -> bytes:
        return "\n".join(self.lines).encode("utf-8")


@dataclass
class Site:
    name: str
    domain: str
    nav: str
    footer: str


def _make_site(ctx: SampleContext, rng: random.Random, year: int) -> Site:
    vocab = ctx.vocabulary()
    a, b = rng.sample(vocab, 2)
    name = f"{a.capitalize()} {b.capitalize()}"
    domain = f"www.{a}{b}.{rng.choice(['com', 'net', 'org', 'info', 'co.uk'])}"
    nav = " | ".join(rng.sample(NAV_ITEMS, rng.randint(4, 7)))
    footer = f"© {year} {name}. All rights reserved."
    return Site(name, domain, nav, footer)


def write_cc(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("cc")
    epoch = ctx.epoch()
    year = epoch.year
    languages = ctx.foreign.languages()
    n_cited = ctx.count(90, 10)
    n_english = ctx.count(1500, 32)
    n_foreign = ctx.count(700, min(len(languages), 10))
    n_exact, n_near = ctx.count(60, 2), ctx.count(60, 2)
    n_short, n_gibberish, n_low = ctx.count(60, 2), ctx.count(60, 2), ctx.count(60, 2)

    sites = [_make_site(ctx, rng, year) for _ in range(max(5, n_english // 6))]
    pages: list[Page] = []

    # Reference-quality pages: long coherent documentation, each cited by a Wikipedia <ref>.
    doc_sites = []
    for _ in range(max(3, n_cited // 4)):
        word = rng.choice(ctx.vocabulary())
        doc_sites.append((f"{word.capitalize()} Project", rng.choice([f"docs.{word}.org", f"{word}.readthedocs.io",
                                                                       f"www.{word}-foundation.org"])))
    cited: list[Page] = []
    for _ in range(n_cited):
        topic = ctx.topic(min_chars=1500)
        site_name, domain = rng.choice(doc_sites)
        url = ctx.unique_url(f"https://{domain}/reference/{slugify(topic.title)}.html")
        lines = [f"{topic.title} — {site_name} documentation", *topic.paragraphs,
                 f"© Copyright {year - rng.randint(0, 6)}, the {site_name} contributors."]
        cited.append(Page(url, lines, "cited"))
    pages += cited

    # Ordinary English pages: a mix of everything, wrapped in their site's navigation and footer.
    english: list[Page] = []
    for i in range(n_english):
        site = sites[i % len(sites)]
        paragraphs = ctx.english.paragraphs(rng.randint(4, 10), max_chars=1500)
        title = " ".join(paragraphs[0].split()[:rng.randint(4, 8)]).rstrip(".,:;")
        lines = [f"{title} | {site.name}", site.nav]
        lines += [b for b in SHARED_BOILERPLATE[:2] if rng.random() < 0.4]
        lines += paragraphs
        lines += [b for b in SHARED_BOILERPLATE[2:] if rng.random() < 0.4]
        lines.append(site.footer)
        month = rng.randint(1, 12)
        url = ctx.unique_url(f"https://{site.domain}/{year - rng.randint(0, 5)}/{month:02d}/{slugify(title)}/")
        english.append(Page(url, lines, "english", language="en" if rng.random() > 0.05 else None))
    pages += english

    # Exact duplicates (a mirror serving the same text) and near duplicates (one sentence dropped,
    # an update line added): what the MinHash document dedup must find.
    long_pages = [p for p in english if len(p.lines) >= 9] or english
    exact_pairs, near_pairs = [], []
    for original in rng.sample(long_pages, min(n_exact, len(long_pages))):
        mirror = rng.choice(ctx.vocabulary())
        url = ctx.unique_url(f"https://{mirror}-mirror.net/{slugify(original.lines[0])}.html")
        pages.append(Page(url, list(original.lines), "exact_duplicate", original.language))
        exact_pairs.append([original.url, url])
    for original in rng.sample(long_pages, min(n_near, len(long_pages))):
        lines = list(original.lines)
        prose_rows = [i for i, line in enumerate(lines) if len(split_sentences(line)) >= 2]
        if prose_rows:
            row = rng.choice(prose_rows)
            lines[row] = " ".join(split_sentences(lines[row])[:-1])
        lines.insert(len(lines) - 1, f"Updated on {rng.randint(1, 28)} March {year}.")
        url = ctx.unique_url(f"https://{rng.choice(ctx.vocabulary())}news.com/{slugify(original.lines[0])}")
        pages.append(Page(url, lines, "near_duplicate", original.language))
        near_pairs.append([original.url, url])

    # Non-English pages: real sentences from catalogs and CPython's CJK texts.
    foreign_langs: dict[str, str] = {}
    order = list(languages)
    rng.shuffle(order)
    for i in range(n_foreign):
        lang = order[i % len(order)]
        joiner = "" if lang in ("zh", "ja") else " "
        sentences = ctx.foreign.sentences(lang, rng.randint(12, 30))
        if not sentences:
            continue
        lines = [sentences[0]]
        rest = sentences[1:]
        while rest:
            take = rng.randint(2, 4)
            lines.append(joiner.join(rest[:take]))
            rest = rest[take:]
        url = ctx.unique_url(f"https://www.{rng.choice(ctx.vocabulary())}.{CC_TLD[lang]}/{i}/index.html")
        pages.append(Page(url, lines, "non_english", lang))
        foreign_langs[url] = lang

    # Short pages (< 300 characters): below the minimum length rules.
    short_urls = []
    for _ in range(n_short):
        sentence = split_sentences(ctx.english.paragraphs(1, max_chars=600)[0])[0][:200]
        site = rng.choice(sites)
        page = Page(ctx.unique_url(f"https://{site.domain}/notes/{slugify(sentence, 3)}"), [site.name, sentence],
                    "short")
        pages.append(page)
        short_urls.append(page.url)

    # Gibberish (random characters) and low-quality pages (keyword spam, fragment lists): what the
    # Wikipedia-trained perplexity filter puts in the tail bucket.
    gibberish_urls = []
    for _ in range(n_gibberish):
        lines = [" ".join("".join(rng.choice(GIBBERISH_ALPHABET) for _ in range(rng.randint(2, 12)))
                          for _ in range(rng.randint(6, 16))) for _ in range(rng.randint(8, 20))]
        page = Page(ctx.unique_url(f"http://{''.join(rng.choices(GIBBERISH_ALPHABET, k=10))}.biz/?p={rng.randint(1, 9999)}"),
                    lines, "gibberish", None)
        pages.append(page)
        gibberish_urls.append(page.url)
    low_quality_urls = []
    vocab = ctx.vocabulary()
    for i in range(n_low):
        a, b = rng.sample(vocab, 2)
        if i % 2 == 0:
            lines = [" ".join(rng.choice(SPAM_TEMPLATES).format(a=a, b=b) for _ in range(rng.randint(4, 9)))
                     for _ in range(rng.randint(10, 20))]
        else:
            lines = [rng.choice(FRAGMENTS) if rng.random() < 0.4 else " ".join(rng.sample(vocab, rng.randint(1, 3)))
                     for _ in range(rng.randint(30, 60))]
        page = Page(ctx.unique_url(f"https://www.{a}-{b}-online.com/{b}"), lines, "low_quality")
        pages.append(page)
        low_quality_urls.append(page.url)

    rng.shuffle(pages)
    # Boilerplate actually repeated across pages (the line-dedup stage's positives).
    line_pages: dict[str, int] = {}
    for page in pages:
        for line in set(page.lines):
            line_pages[line] = line_pages.get(line, 0) + 1
    planted_lines = set(SHARED_BOILERPLATE) | {s.nav for s in sites} | {s.footer for s in sites}
    boilerplate = {line: n for line, n in sorted(line_pages.items()) if line in planted_lines and n >= 2}

    n_files = 2 if ctx.scale < 0.5 else 4
    files, record_ids = [], {}
    crawl = f"CC-MAIN-{year}-{epoch.isocalendar()[1]:02d}"
    for index, chunk in enumerate(split_evenly(pages, n_files)):
        name = f"CC-MAIN-sample-{index:05d}.warc.wet.gz"
        members = [gzip_bytes(_warcinfo(rng, name, crawl, epoch))]
        for page in chunk:
            record_id = f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"
            refers_to = f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"
            date = epoch + timedelta(seconds=rng.randint(0, 14 * 86400))
            members.append(gzip_bytes(_wet_record(page, record_id, refers_to, date)))
            record_ids[page.url] = record_id
        files.append(ctx.write(f"cc/{name}", b"".join(members)))

    english_urls = sorted(p.url for p in pages if p.kind in ("cited", "english", "exact_duplicate", "near_duplicate"))
    return {
        "files": files,
        "documents": len(pages),
        "record_ids": record_ids,
        "planted": {
            "cited_urls": [p.url for p in cited],
            "english_prose_urls": english_urls,
            "exact_duplicate_urls": exact_pairs,
            "near_duplicate_urls": near_pairs,
            "non_english_urls": foreign_langs,
            "short_urls": short_urls,
            "gibberish_urls": gibberish_urls,
            "low_quality_urls": low_quality_urls,
            "boilerplate_lines": boilerplate,
        },
    }


def warc_block_digest(payload: bytes) -> str:
    """CommonCrawl's digest form: base32 of the SHA-1."""
    return "sha1:" + base64.b32encode(hashlib.sha1(payload).digest()).decode("ascii")


def _warc(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("utf-8") + payload + b"\r\n\r\n"


def _warcinfo(rng: random.Random, filename: str, crawl: str, epoch: datetime) -> bytes:
    payload = (
        "Software-Info: llama-recipe pipeline.samples\r\n"
        f"Extracted-Date: {epoch.strftime('%a, %d %b %Y %H:%M:%S GMT')}\r\n"
        f"isPartOf: {crawl}\r\n"
        "operator: llama-recipe sample generator (not a real crawl)\r\n"
        "description: Sample in the layout of a CommonCrawl WET file: real prose, planted test cases\r\n"
        "publisher: llama-recipe\r\n"
    ).encode("utf-8")
    return _warc([
        ("WARC-Type", "warcinfo"),
        ("WARC-Date", iso(epoch)),
        ("WARC-Filename", filename),
        ("WARC-Record-ID", f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"),
        ("Content-Type", "application/warc-fields"),
        ("Content-Length", str(len(payload))),
        ("WARC-Block-Digest", warc_block_digest(payload)),
    ], payload)


def _wet_record(page: Page, record_id: str, refers_to: str, date: datetime) -> bytes:
    payload = page.payload
    digest = warc_block_digest(payload)
    headers = [
        ("WARC-Type", "conversion"),
        ("WARC-Target-URI", page.url),
        ("WARC-Date", iso(date)),
        ("WARC-Record-ID", record_id),
        ("WARC-Refers-To", refers_to),
        ("WARC-Block-Digest", digest),
    ]
    if page.language:
        headers.append(("WARC-Identified-Content-Language", ISO639_3[page.language]))
    headers += [("Content-Type", "text/plain"), ("Content-Length", str(len(payload))),
                ("WARC-Payload-Digest", digest)]
    return _warc(headers, payload)


# ---------------------------------------------------------------------------------------------
# 2. C4

JAVASCRIPT_LINES = (
    "Please enable JavaScript to view the comments powered by Disqus.",
    "You must have JavaScript enabled in your browser to utilize the functionality of this website.",
)
POLICY_LINES = (
    "This site uses cookies to deliver our services and to show you relevant content.",
    "By using our website you agree to our privacy policy and terms of use.",
)
SHORT_LINES = ("Thanks for reading!", "Enjoy!", "Good luck!", "Read more.", "Questions?")
LOREM_IPSUM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
               "et dolore magna aliqua.")
# One token from the LDNOOBW English list, the list the T5 paper's bad-words rule uses.
BAD_WORD = "bullshit"
BAD_WORD_LINE = f"Honestly, most of the advice you will find about this is complete {BAD_WORD}."


def write_c4(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("c4")
    epoch = datetime(2019, 4, 18, tzinfo=timezone.utc) + timedelta(days=ctx.seed % 20)  # C4's crawl: April 2019
    n_docs = ctx.count(600, 30)
    n_each = ctx.count(15, 1)
    vocab = ctx.vocabulary()
    docs: list[dict[str, Any]] = []

    def new_doc(kind: str, lines: list[str]) -> dict[str, Any]:
        a, b = rng.sample(vocab, 2)
        url = ctx.unique_url(f"https://www.{a}{b}.com/{slugify(lines[0] if lines else a, 5)}")
        doc = {"kind": kind, "lines": lines, "url": url,
               "timestamp": iso(epoch + timedelta(seconds=rng.randint(0, 12 * 86400)))}
        docs.append(doc)
        return doc

    def body(min_paragraphs: int = 4) -> list[str]:
        return ctx.english.paragraphs(rng.randint(min_paragraphs, 10), max_chars=900)

    planted: dict[str, Any] = {k: [] for k in ("no_terminal_punctuation_lines", "short_lines", "javascript_lines",
                                                "policy_lines", "few_sentences_urls", "lorem_ipsum_urls",
                                                "curly_bracket_urls", "bad_word_urls")}
    for _ in range(n_each):
        lines = body()
        heading = " ".join(lines[0].split()[:5]).rstrip(".,:;!?")
        doc = new_doc("no_terminal_punctuation", [heading] + lines)
        planted["no_terminal_punctuation_lines"].append({"url": doc["url"], "line": heading})
        for key, choices in (("short_lines", SHORT_LINES), ("javascript_lines", JAVASCRIPT_LINES),
                             ("policy_lines", POLICY_LINES)):
            lines = body()
            line = rng.choice(choices)
            lines.insert(rng.randint(1, len(lines)), line)
            doc = new_doc(key, lines)
            planted[key].append({"url": doc["url"], "line": line})
        single = []
        while len(single) < 2:
            paragraph = ctx.english.paragraphs(1, max_chars=400)[0]
            if len(split_sentences(paragraph)) == 1:
                single.append(paragraph)
        planted["few_sentences_urls"].append(new_doc("few_sentences", single)["url"])
        lines = body()
        lines.insert(rng.randint(0, len(lines)), LOREM_IPSUM)
        planted["lorem_ipsum_urls"].append(new_doc("lorem_ipsum", lines)["url"])
        lines = body()
        lines.insert(rng.randint(1, len(lines)), _code_line_with_brace(ctx))
        planted["curly_bracket_urls"].append(new_doc("curly_bracket", lines)["url"])
        lines = body()
        lines.insert(rng.randint(1, len(lines)), BAD_WORD_LINE)
        planted["bad_word_urls"].append(new_doc("bad_word", lines)["url"])

    # A three-sentence span repeated on several pages (C4 keeps one of each repeated span).
    span_source = next(p for p in iter(lambda: ctx.english.paragraphs(1, max_chars=1500)[0], None)
                       if len(split_sentences(p)) >= 3 and all(s[-1] in ".!?" for s in split_sentences(p)[:3]))
    span = " ".join(split_sentences(span_source)[:3])
    span_urls = []
    for _ in range(max(3, n_each)):
        lines = body()
        lines.insert(rng.randint(1, len(lines)), span)
        span_urls.append(new_doc("repeated_span", lines)["url"])
    planted["repeated_spans"] = [{"span": span, "urls": span_urls}]
    planted["bad_word"] = BAD_WORD

    while len(docs) < n_docs:
        new_doc("clean", body(5))
    rng.shuffle(docs)
    n_files = 2 if ctx.scale < 0.5 else 3
    files = []
    for index, chunk in enumerate(split_evenly(docs, n_files)):
        lines = [json.dumps({"text": "\n".join(d["lines"]), "timestamp": d["timestamp"], "url": d["url"]},
                            ensure_ascii=False, separators=(",", ":")) for d in chunk]
        files.append(ctx.write(f"c4/c4-train.{index:05d}-of-{n_files:05d}.json.gz",
                               gzip_bytes(("\n".join(lines) + "\n").encode("utf-8"))))
    return {"files": files, "documents": len(docs), "planted": planted}


def _code_line_with_brace(ctx: SampleContext) -> str:
    """A real line of code with a curly bracket (docstring examples), as pages with code carry."""
    for _ in range(200):
        block = ctx.english.code_block()
        if block is None:
            break
        for line in block.splitlines():
            if "{" in line and len(line) < 200:
                return line.lstrip("> ").strip()
    return 'config = {"name": "example", "enabled": True}'


# ---------------------------------------------------------------------------------------------
# 3. GitHub (BigQuery github_repos export rows)

PERMISSIVE_PACKAGES = ("requests", "click", "jinja2", "idna", "urllib3", "six", "attrs", "h11", "humanize",
                       "toml", "typer", "markupsafe", "charset_normalizer", "pygments", "networkx", "httpx",
                       "websockets", "rich", "pluggy", "iniconfig", "shellingham", "cachetools", "tzlocal",
                       "cloudpickle", "jsonpatch", "jsonpointer", "mdurl", "markdown_it_py", "python_dateutil",
                       "pytz", "pyyaml", "python_slugify", "readchar", "anyio", "sniffio")
# Real packages whose licence RedPajama's MIT/BSD/Apache filter must drop.
NON_PERMISSIVE_PACKAGES = ("autocommand", "text_unidecode", "certifi", "kenlm_ex")
SOURCE_EXTENSIONS = {".py": "Python", ".c": "C", ".h": "C", ".js": "JavaScript", ".md": "Markdown",
                     ".rst": "reStructuredText", ".pyx": "Cython", ".pxd": "Cython", ".json": "JSON",
                     ".toml": "TOML", ".cfg": "INI", ".txt": "Text", ".pyi": "Python", ".pem": "Text",
                     ".html": "HTML", ".css": "CSS", ".sh": "Shell"}
# RedPajama's GitHub extension whitelist, restricted to what this sample can contain.
WHITELISTED_EXTENSIONS = {".py", ".c", ".h", ".js", ".md", ".rst", ".html", ".css", ".sh"}
APACHE_HEADER = """# Copyright {year} The {project} Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
MIT_HEADER = """# SPDX-License-Identifier: MIT
# Copyright (c) {year} The {project} developers
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
# associated documentation files, to deal in the Software without restriction, subject to the
# conditions of the MIT License (see the LICENSE file at the root of this repository).

"""


@dataclass
class Distribution:
    name: str
    root: Path  # folder RECORD paths are relative to
    files: list[str]
    license: str | None
    license_file: str | None


def _find_distributions() -> dict[str, Distribution]:
    """Installed distributions (site-packages and setuptools' vendored ones), keyed by normalized name."""
    roots = []
    pip_dir = package_dir("pip")  # any pinned package: its parent is site-packages
    if pip_dir is not None:
        roots.append(pip_dir.parent)
    vendored = package_dir("setuptools")
    if vendored is not None:
        roots.append(vendored / "_vendor")
    found: dict[str, Distribution] = {}
    for root in roots:
        for info in sorted(root.glob("*.dist-info")):
            name = re.sub(r"[-.]+", "_", info.name.removesuffix(".dist-info").rsplit("-", 1)[0]).lower()
            record = info / "RECORD"
            meta = info / "METADATA"
            if not record.is_file() or not meta.is_file() or name in found:
                continue
            files = sorted(line.split(",")[0] for line in record.read_text(encoding="utf-8").splitlines() if line)
            license_file = next((f for f in files if ".dist-info/" in f and re.search(r"/(licenses/)?(LICEN[SC]E|COPYING)[^/]*$", f)), None)
            found[name] = Distribution(name, root, files, license_key(meta.read_text(encoding="utf-8", errors="replace")),
                                       license_file)
    return found


def license_key(metadata: str) -> str | None:
    """BigQuery's licence key from a METADATA file (License-Expression, License, then classifiers)."""
    headers = {}
    for line in metadata.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key in ("License-Expression", "License") and key not in headers:
            headers[key] = value.strip()
    classifiers = " ".join(line for line in metadata.splitlines() if line.startswith("Classifier: License"))
    rules = (("lgpl-2.1", r"LGPL-2\.1|LGPLv2"), ("lgpl-3.0", r"LGPL-3|LGPLv3|Lesser General Public License v3"),
             ("gpl-3.0", r"\bGPL-3|GPLv3\b"), ("gpl-2.0", r"\bGPL-2|GPLv2|General Public License \(GPL\)"),
             ("mpl-2.0", r"MPL|Mozilla"), ("apache-2.0", r"Apache"), ("bsd-2-clause", r"BSD-2"),
             ("bsd-3-clause", r"BSD"), ("mit", r"\bMIT\b"), ("isc", r"\bISC\b"))
    for text in (headers.get("License-Expression", ""), headers.get("License", "")[:80], classifiers):
        for key, pattern in rules:
            if text and re.search(pattern, text):
                return key
    return None


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _repo_files(rng: random.Random, dist: Distribution, limit: int, max_bytes: int = 40_000) -> list[tuple[str, str]]:
    candidates = []
    for rel in dist.files:
        if ".dist-info/" in rel or "__pycache__" in rel or rel.startswith(".."):
            continue
        path = dist.root / rel
        suffix = path.suffix
        if suffix not in SOURCE_EXTENSIONS or not path.is_file() or not 200 <= path.stat().st_size <= max_bytes:
            continue
        candidates.append(rel)
    chosen = rng.sample(candidates, min(limit, len(candidates)))
    out = []
    for rel in sorted(chosen):
        try:
            out.append((rel, (dist.root / rel).read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def write_github(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("github")
    year = ctx.epoch().year
    dists = _find_distributions()
    n_repos = ctx.count(14, 5)
    per_repo = ctx.count(25, 3)
    rows: list[dict[str, Any]] = []
    repo_license: dict[str, str] = {}
    planted: dict[str, Any] = {k: [] for k in ("non_permissive_repos", "long_line_files", "long_mean_line_files",
                                                "low_alphanumeric_files", "duplicate_files",
                                                "non_whitelisted_extension_files", "license_header_files")}

    def add(repo: str, path: str, content: str) -> dict[str, Any]:
        row = {"repo_name": repo, "path": path, "content": content}
        rows.append(row)
        return row

    def add_license_file(repo: str, dist: Distribution) -> None:
        if dist.license_file:
            text = (dist.root / dist.license_file).read_text(encoding="utf-8", errors="replace")
            add(repo, "LICENSE", text)

    permissive = [d for name in PERMISSIVE_PACKAGES if (d := dists.get(name)) and d.license in
                  ("mit", "apache-2.0", "bsd-3-clause", "bsd-2-clause", "isc")]
    if len(permissive) < 2:
        raise RuntimeError("github sample: fewer than two permissively licensed packages installed")
    rng.shuffle(permissive)
    permissive = permissive[:n_repos]
    repos = []
    for dist in permissive:
        repo = f"{dist.name.replace('_', '-')}/{dist.name.replace('_', '-')}"
        repo_license[repo] = dist.license  # type: ignore[assignment]
        repos.append(repo)
        add_license_file(repo, dist)
        for rel, content in _repo_files(rng, dist, per_repo):
            add(repo, rel, content)
    for name in NON_PERMISSIVE_PACKAGES:
        dist = dists.get(name)
        if dist is None or dist.license is None:
            continue
        repo = f"{name.replace('_', '-')}/{name.replace('_', '-')}"
        repo_license[repo] = dist.license
        add_license_file(repo, dist)
        for rel, content in _repo_files(rng, dist, max(2, per_repo // 3)):
            add(repo, rel, content)
        planted["non_permissive_repos"].append({"repo_name": repo, "license": dist.license})

    # Files the RedPajama quality rules drop, in permissive repos so only that rule can catch them.
    host = repos[0]
    minified, bundle_dist = _minified_asset(ctx, dists)
    if bundle_dist is not None and bundle_dist.license:
        host = "prefecthq/prefect-ui"
        repo_license[host] = bundle_dist.license
        repos.append(host)
    row = add(host, f"ui/dist/assets/{minified[0]}", minified[1])
    planted["long_line_files"].append(row)
    paragraphs = [p for p in ctx.english.paragraphs(60, max_chars=950) if len(p) >= 300][:6]
    readme_repo = repos[1 % len(repos)]
    readme = f"# {readme_repo.split('/')[1]}\n\n" + "\n\n".join(paragraphs) + "\n"  # unwrapped paragraphs
    row = add(readme_repo, "docs/overview.md", readme)
    planted["long_mean_line_files"].append(row)
    row = add(repos[2 % len(repos)], "docs/architecture.md", _ascii_diagram(rng))
    planted["low_alphanumeric_files"].append(row)

    # An exact duplicate: a file vendored verbatim into another repository.
    source_rows = [r for r in rows if r["path"].endswith(".py") and r["repo_name"] in repos]
    original = rng.choice(source_rows)
    other = next(r for r in repos if r != original["repo_name"])
    dup = add(other, f"third_party/{Path(original['path']).name}", original["content"])

    # Non-whitelisted extensions: real data files of the chosen packages, else their top_level.txt.
    extra = []
    for dist in permissive:
        for rel in dist.files:
            suffix = Path(rel).suffix
            if suffix in SOURCE_EXTENSIONS and suffix not in WHITELISTED_EXTENSIONS and ".dist-info/" not in rel \
                    and (dist.root / rel).is_file() and 50 <= (dist.root / rel).stat().st_size <= 40_000:
                extra.append((dist, rel))
    rng.shuffle(extra)
    have = {(r["repo_name"], r["path"]) for r in rows}
    for dist, rel in extra[:ctx.count(6, 1)]:
        repo = f"{dist.name.replace('_', '-')}/{dist.name.replace('_', '-')}"
        if (repo, rel) not in have:
            add(repo, rel, (dist.root / rel).read_text(encoding="utf-8", errors="replace"))

    # Licence headers prepended to some source files (boilerplate at the top of code).
    python_rows = [r for r in rows if r["path"].endswith(".py") and r["repo_name"] in repos and r is not dup
                   and r is not original]
    for row in rng.sample(python_rows, min(ctx.count(12, 1), len(python_rows))):
        project = row["repo_name"].split("/")[1]
        template = APACHE_HEADER if repo_license[row["repo_name"]] == "apache-2.0" else MIT_HEADER
        row["content"] = template.format(year=year - rng.randint(0, 8), project=project) + row["content"]
        planted["license_header_files"].append(row)

    # Fill in the export columns now that contents are final.
    ids_count: dict[str, int] = {}
    for row in rows:
        data = row["content"].encode("utf-8")
        row["id"] = git_blob_id(data)
        row["size"] = str(len(data))
        ids_count[row["id"]] = ids_count.get(row["id"], 0) + 1
    languages: dict[str, dict[str, int]] = {}
    for row in rows:
        name = SOURCE_EXTENSIONS.get(Path(row["path"]).suffix, "Text")
        per_repo_lang = languages.setdefault(row["repo_name"], {})
        per_repo_lang[name] = per_repo_lang.get(name, 0) + int(row["size"])
    refs = {repo: rng.choice(["refs/heads/main", "refs/heads/master"]) for repo in repo_license}
    records = []
    for row in rows:
        repo = row["repo_name"]
        records.append({
            "repo_name": repo, "id": row["id"], "size": row["size"], "content": row["content"], "binary": False,
            "copies": str(ids_count[row["id"]]), "ref": refs[repo], "path": row["path"], "mode": "33188",
            "symlink_target": None, "license": repo_license[repo],
            "language": [{"name": n, "bytes": str(b)} for n, b in sorted(languages[repo].items(), key=lambda x: -x[1])],
        })
    for record in records:
        if Path(record["path"]).suffix not in WHITELISTED_EXTENSIONS and record["path"] != "LICENSE":
            planted["non_whitelisted_extension_files"].append(record)
    groups: dict[str, list[str]] = {}
    for record in records:
        if ids_count[record["id"]] > 1:
            groups.setdefault(record["id"], []).append(f"{record['repo_name']}/{record['path']}")
    planted["duplicate_files"] = [{"id": blob, "files": sorted(files)} for blob, files in sorted(groups.items())]

    def describe(row: dict[str, Any]) -> dict[str, str]:
        return {"repo_name": row["repo_name"], "path": row["path"], "id": row["id"]}

    for key in ("long_line_files", "long_mean_line_files", "low_alphanumeric_files", "license_header_files",
                "non_whitelisted_extension_files"):
        planted[key] = [describe(r) for r in planted[key]]
    rng.shuffle(records)
    n_files = 2 if ctx.scale < 0.5 else 3
    files = []
    for index, chunk in enumerate(split_evenly(records, n_files)):
        text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in chunk)
        files.append(ctx.write(f"github/github-{index:05d}.jsonl.gz", gzip_bytes(text.encode("utf-8"))))
    return {"files": files, "documents": len(records), "repos": dict(sorted(repo_license.items())), "planted": planted}


def _minified_asset(ctx: SampleContext, dists: dict[str, Distribution]) -> tuple[tuple[str, str], Distribution | None]:
    """A real minified JavaScript bundle (prefect ships its UI built), else a one-line data file."""
    prefect = package_dir("prefect")
    if prefect is not None:
        for folder in ("server/ui_v2_build/assets", "server/ui/assets"):
            for path in sorted((prefect / folder).glob("*.js")) if (prefect / folder).is_dir() else []:
                if 1500 <= path.stat().st_size <= 30_000:
                    text = path.read_text(encoding="utf-8", errors="replace")
                    if max(map(len, text.splitlines()), default=0) > 1000:
                        return (path.name, text), dists.get("prefect")
    words = ctx.vocabulary()[:400]
    return ("data.min.js", "var WORDS=[" + ",".join(json.dumps(w) for w in words) + "];\n"), None


def _ascii_diagram(rng: random.Random) -> str:
    """A box diagram: mostly punctuation and spaces (RedPajama drops alphanumeric fraction < 0.25)."""
    width = rng.randint(5, 8)
    lines = []
    for _ in range(rng.randint(6, 10)):
        lines.append("+" + "+".join("-" * 10 for _ in range(width)) + "+")
        lines.append("|" + "|".join(" " * 10 for _ in range(width)) + "|")
        lines.append("|" + "|".join(f" {rng.choice(['in', 'out', 'io', 'db']):<9}" for _ in range(width)) + "|")
        lines.append("|" + "|".join(" " * 10 for _ in range(width)) + "|")
    lines.append("+" + "+".join("-" * 10 for _ in range(width)) + "+")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# 4. Wikipedia (MediaWiki export-0.10)

WIKI_NAMESPACES = ((-2, "Media"), (-1, "Special"), (0, ""), (1, "Talk"), (2, "User"), (3, "User talk"),
                   (4, "Wikipedia"), (5, "Wikipedia talk"), (6, "File"), (7, "File talk"), (8, "MediaWiki"),
                   (9, "MediaWiki talk"), (10, "Template"), (11, "Template talk"), (12, "Help"), (13, "Help talk"),
                   (14, "Category"), (15, "Category talk"), (100, "Portal"), (101, "Portal talk"), (118, "Draft"),
                   (119, "Draft talk"), (828, "Module"), (829, "Module talk"))
GENERIC_SECTIONS = ("Overview", "Description", "Behaviour", "Details", "Design", "Usage", "Semantics")
USERNAMES = ("Graham87", "Rich Farmbrough", "BD2412", "Materialscientist", "Ohconfucius", "Bender235",
             "Kku", "SmackBot", "Cydebot", "Magioladitis")


def base36_sha1(text: str) -> str:
    """MediaWiki's <sha1>: the SHA-1 of the wikitext in base 36, 31 digits."""
    value = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
    return out.rjust(31, "0")


def _wiki_title(module: str) -> str:
    return module[:1].upper() + module[1:] + " (Python module)"


def _decorate(paragraph: str, rng: random.Random, titles: list[str]) -> str:
    """Dress a prose paragraph in wikitext inline markup: internal links, piped links, italics."""
    words = paragraph.split(" ")
    candidates = [i for i, w in enumerate(words[1:], 1) if w.isalpha() and w.islower() and len(w) >= 6]
    rng.shuffle(candidates)
    for n, i in enumerate(candidates[:3]):
        word = words[i]
        if n == 0:
            words[i] = f"[[{word}]]"
        elif n == 1 and titles:
            words[i] = f"[[{rng.choice(titles)}|{word}]]"
        else:
            words[i] = f"''{word}''"
    return " ".join(words)


def _cite(url: str, rng: random.Random, access: datetime, title: str) -> str:
    if rng.random() < 0.25:
        return f"[{url} {title}]"
    site = re.sub(r"^https?://(www\.)?", "", url).split("/")[0]
    return f"{{{{cite web |url={url} |title={title} |website={site} |access-date={access:%Y-%m-%d}}}}}"


def write_wikipedia(ctx: SampleContext, cited_urls: list[str]) -> dict[str, Any]:
    rng = ctx.rng("wikipedia")
    epoch = ctx.epoch()
    n_articles = ctx.count(200, 20)
    texts = [ctx.text(min_chars=1800) for _ in range(n_articles)]
    titles = [_wiki_title(t.title) for t in texts]
    vocab = ctx.vocabulary()
    uncrawled = []
    for i in range(ctx.count(90, 10)):
        a, b = rng.sample(vocab, 2)
        uncrawled.append(f"https://www.{a}{b}.org/articles/{slugify(b + ' ' + a)}-{i}")
    ref_urls = list(cited_urls) + uncrawled
    rng.shuffle(ref_urls)
    refs_for: list[list[str]] = [[] for _ in texts]
    for i, url in enumerate(ref_urls):
        refs_for[i % len(texts)].append(url)

    pages: list[dict[str, Any]] = []
    features: set[str] = set()
    for index, (text, title) in enumerate(zip(texts, titles)):
        paragraphs = []
        total = 0
        for paragraph in text.paragraphs:  # keep articles article-sized
            paragraphs.append(paragraph)
            total += len(paragraph)
            if total > 7000:
                break
        others = [t for t in titles if t != title]
        urls = list(refs_for[index])
        parts = ["{{Short description|Python programming interface}}",
                 "{{Infobox software\n| name = " + text.title + "\n| developer = "
                 + ("[[Python Software Foundation]]" if text.origin.count(".") == 0 or "stdlib" in text.origin
                    else text.title.split(".")[0])
                 + "\n| programming language = [[Python (programming language)|Python]]\n| genre = [[Library (computing)|Software library]]\n}}"]
        features.update({"template", "infobox"})
        lead = _decorate(paragraphs[0], rng, others)
        lead = f"'''{text.title}''' is a Python module. " + lead
        ref_name = f"r{index}"
        if urls:
            url = urls.pop()
            lead += f"<ref name=\"{ref_name}\">{_cite(url, rng, epoch, text.title)}</ref>"
            features.add("named_ref")
        parts.append(lead)
        section_starts = sorted(set(list(text.headings)[:4]) | {1})
        for n, paragraph in enumerate(paragraphs[1:], 1):
            if n in section_starts:
                heading = text.headings.get(n) or rng.choice(GENERIC_SECTIONS)
                parts.append(f"== {heading} ==" if n == 1 or rng.random() < 0.6 else f"=== {heading} ===")
                if rng.random() < 0.3:
                    parts.append(f"[[File:{text.title.replace('.', ' ')} diagram.svg|thumb|right|Structure of {text.title}]]")
                    features.add("file")
            body = _decorate(paragraph, rng, others)
            if urls and rng.random() < 0.6:
                body += f"<ref>{_cite(urls.pop(), rng, epoch, text.title)}</ref>"
                features.add("ref")
            elif rng.random() < 0.2:
                body += f"<ref name=\"{ref_name}\" />"
            parts.append(body)
            if rng.random() < 0.1:
                parts.append("<!-- Please cite a reliable source before expanding this section. -->")
                features.add("comment")
        while urls:  # every assigned reference appears in the article
            parts.append(f"It is discussed further elsewhere.<ref>{_cite(urls.pop(), rng, epoch, text.title)}</ref>")
            features.add("ref")
        if text.code and rng.random() < 0.4:
            parts.append(f"<syntaxhighlight lang=\"python\">\n{text.code[0]}\n</syntaxhighlight>")
            features.add("syntaxhighlight")
        if len(paragraphs) >= 3 and rng.random() < 0.5:
            rows = "\n".join(f"|-\n| {rng.choice(others)} || {split_sentences(p)[0][:120]}" for p in paragraphs[:3])
            parts.append("{| class=\"wikitable\"\n|+ Related modules\n! Module !! Summary\n" + rows + "\n|}")
            features.add("table")
        parts.append("== See also ==\n" + "\n".join(f"* [[{t}]]" for t in rng.sample(others, min(3, len(others)))))
        parts.append("== References ==\n{{Reflist}}")
        parts.append(f"== External links ==\n* [https://docs.python.org/3/library/{text.title.split('.')[0]}.html Official documentation]")
        features.add("external_link")
        parts.append("[[Category:Python (programming language) modules]]\n[[Category:Software libraries]]")
        features.add("category")
        pages.append({"title": title, "ns": 0, "text": "\n\n".join(parts)})

    redirects = []
    for title, text in rng.sample(list(zip(titles, texts)), min(ctx.count(20, 3), len(titles))):
        source_title = text.title[:1].upper() + text.title[1:]
        pages.append({"title": source_title, "ns": 0, "redirect": title,
                      "text": f"#REDIRECT [[{title}]]\n\n{{{{R from short name}}}}"})
        redirects.append(source_title)
    others_pages = []
    for i in range(ctx.count(10, 1)):
        subject = rng.choice(titles)
        talk = "\n\n".join(f"{p} [[User:{u}|{u}]] ([[User talk:{u}|talk]]) 12:{i % 60:02d}, {d} May {epoch.year - 1} (UTC)"
                           for p, u, d in zip(ctx.english.paragraphs(2), rng.sample(USERNAMES, 2), (3, 4)))
        user = rng.choice(USERNAMES)
        others_pages += [
            {"title": f"Talk:{subject}", "ns": 1, "text": f"{{{{WikiProject Computing|class=C}}}}\n\n== Sources ==\n{talk}"},
            {"title": f"User:{user}" + ("" if i == 0 else f"/Sandbox {i}"), "ns": 2,
             "text": "\n\n".join(ctx.english.paragraphs(2))},
            {"title": f"Wikipedia:Style notes {i + 1}", "ns": 4, "text": "\n\n".join(ctx.english.paragraphs(3))},
            {"title": "Template:Infobox software" + ("" if i == 0 else f"/doc{i}"), "ns": 10,
             "text": "{{Infobox\n| title = {{{name|}}}\n| label1 = Developer(s)\n| data1 = {{{developer|}}}\n}}<noinclude>{{Documentation}}</noinclude>"},
            {"title": f"Category:Software libraries" + ("" if i == 0 else f" {i}"), "ns": 14,
             "text": "Libraries of reusable software.\n\n[[Category:Software]]"},
        ]
    pages += others_pages
    rng.shuffle(pages)

    namespaces = "\n".join(f'      <namespace key="{k}" case="first-letter" />' if not name else
                           f'      <namespace key="{k}" case="first-letter">{name}</namespace>'
                           for k, name in WIKI_NAMESPACES)
    chunks = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.10/ http://www.mediawiki.org/xml/export-0.10.xsd" '
        'version="0.10" xml:lang="en">\n'
        "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
        "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n    <generator>MediaWiki 1.39.0-wmf.23</generator>\n"
        f"    <case>first-letter</case>\n    <namespaces>\n{namespaces}\n    </namespaces>\n  </siteinfo>\n"
    ]
    page_ids = {}
    next_id = 10 + (ctx.seed % 1000) * 1000
    for page in pages:
        next_id += rng.randint(1, 40)
        page_ids[page["title"]] = next_id
        revision = 1_000_000_000 + rng.randint(0, 200_000_000)
        stamp = epoch - timedelta(seconds=rng.randint(0, 3 * 365 * 86400))
        redirect = f'    <redirect title="{html.escape(page["redirect"], quote=True)}" />\n' if "redirect" in page else ""
        user = rng.choice(USERNAMES)
        body = page["text"]
        chunks.append(
            "  <page>\n"
            f"    <title>{html.escape(page['title'], quote=False)}</title>\n    <ns>{page['ns']}</ns>\n    <id>{next_id}</id>\n"
            f"{redirect}"
            f"    <revision>\n      <id>{revision}</id>\n      <parentid>{revision - rng.randint(1, 10 ** 6)}</parentid>\n"
            f"      <timestamp>{iso(stamp)}</timestamp>\n"
            f"      <contributor>\n        <username>{user}</username>\n        <id>{rng.randint(1000, 40_000_000)}</id>\n      </contributor>\n"
            "      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(body.encode("utf-8"))}" xml:space="preserve">{html.escape(body, quote=False)}</text>\n'
            f"      <sha1>{base36_sha1(body)}</sha1>\n    </revision>\n  </page>\n"
        )
    chunks.append("</mediawiki>\n")
    name = "wikipedia/enwiki-sample-pages-articles.xml.bz2"
    files = [ctx.write(name, bz2.compress("".join(chunks).encode("utf-8"), 9))]
    return {
        "files": files,
        "documents": len(pages),
        "articles": {t: page_ids[t] for t in titles},
        "planted": {
            "cc_cited_urls": list(cited_urls),
            "uncrawled_ref_urls": uncrawled,
            "redirect_titles": sorted(redirects),
            "non_article_titles": {p["title"]: p["ns"] for p in sorted(others_pages, key=lambda p: p["title"])},
            "markup_features": sorted(features),
        },
    }


# ---------------------------------------------------------------------------------------------
# 5. Books: Project Gutenberg and Books3

PG_LICENSE = """*** START: FULL LICENSE ***

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK

To protect the Project Gutenberg-tm mission of promoting the free
distribution of electronic works, by using or distributing this work
(or any other work associated in any way with the phrase "Project
Gutenberg"), you agree to comply with all the terms of the Full Project
Gutenberg-tm License (available with this file or online at
http://gutenberg.org/license).

Section 1.  General Terms of Use and Redistributing Project Gutenberg-tm
electronic works

1.A.  By reading or using any part of this Project Gutenberg-tm
electronic work, you indicate that you have read, understand, agree to
and accept all the terms of this license and intellectual property
(trademark/copyright) agreement.

[This sample abbreviates the licence; real files carry it in full.]

Section 5.  General Information About Project Gutenberg-tm electronic
works.

Most people start at our Web site which has the main PG search facility:

     http://www.gutenberg.org

This Web site includes information about Project Gutenberg-tm,
including how to make donations to the Project Gutenberg Literary
Archive Foundation, how to help produce our new eBooks, and how to
subscribe to our email newsletter to hear about new eBooks.
"""


def roman(number: int) -> str:
    out = ""
    for value, letters in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                           (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while number >= value:
            out += letters
            number -= value
    return out


BOOK_TITLES = ("Notes on {m}", "A Guide to {m}", "The {m} Handbook", "Essays on {m}", "Lectures on {m}",
               "An Introduction to {m}")
AUTHORS = ("Various", "Anonymous", "A Member of the Society", "Various Contributors")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


@dataclass
class Book:
    title: str
    author: str
    chapters: list[tuple[str, list[str]]]  # (chapter title, paragraphs)

    def paragraphs(self) -> list[str]:
        return [p for _, ps in self.chapters for p in ps]


def _new_book(ctx: SampleContext, rng: random.Random, length: int) -> Book:
    texts = ctx.english.text_of_length(length)
    for text in texts:
        ctx.english_origins.add(text.origin)
    title = rng.choice(BOOK_TITLES).format(m=texts[0].title.split(".")[0].capitalize())
    return Book(title, rng.choice(AUTHORS), [(t.title.upper(), list(t.paragraphs)) for t in texts])


def _gutenberg_text(book: Book, number: int, rng: random.Random, release: datetime) -> bytes:
    upper = book.title.upper()
    variant = rng.randint(0, 2)
    if variant == 0:
        header = (f"The Project Gutenberg EBook of {book.title}, by {book.author}\n\n"
                  "This eBook is for the use of anyone anywhere at no cost and with\n"
                  "almost no restrictions whatsoever.  You may copy it, give it away or\n"
                  "re-use it under the terms of the Project Gutenberg License included\n"
                  "with this eBook or online at www.gutenberg.org\n\n\n")
        start, end = f"*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***", \
            f"*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***"
    elif variant == 1:
        header = (f"Project Gutenberg's {book.title}, by {book.author}\n\n"
                  "This eBook is for the use of anyone anywhere at no cost and with\n"
                  "almost no restrictions whatsoever.  You may copy it, give it away or\n"
                  "re-use it under the terms of the Project Gutenberg License included\n"
                  "with this eBook or online at www.gutenberg.net\n\n\n")
        start, end = f"*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***", \
            f"*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***"
    else:
        header = (f"The Project Gutenberg eBook of {book.title}, by {book.author}\n\n"
                  "This eBook is for the use of anyone anywhere in the United States and\n"
                  "most other parts of the world at no cost and with almost no restrictions\n"
                  "whatsoever. You may copy it, give it away or re-use it under the terms\n"
                  "of the Project Gutenberg License included with this eBook or online at\n"
                  "www.gutenberg.org.\n\n")
        start, end = f"*** START OF THE PROJECT GUTENBERG EBOOK {upper} ***", \
            f"*** END OF THE PROJECT GUTENBERG EBOOK {upper} ***"
    body = "".join(book.paragraphs())
    header += (f"Title: {book.title}\n\nAuthor: {book.author}\n\n"
               f"Release Date: {MONTHS[release.month - 1]} {release.day}, {release.year} [EBook #{number}]\n\n"
               "Language: English\n\n"
               f"Character set encoding: {'ASCII' if all(c.isascii() for c in body) else 'UTF-8'}\n\n")
    lines = [header + start, "\n\n\n", "Produced by the Online Distributed Proofreading Team.\n\n\n\n",
             f"{upper}\n\nby {book.author}\n\n\n"]
    for number_, (chapter, paragraphs) in enumerate(book.chapters):
        lines.append(f"\n\nCHAPTER {roman(number_ + 1)}.\n\n{chapter}\n\n")
        lines.append("\n\n".join(textwrap.fill(p, 70) for p in paragraphs) + "\n")
    lines.append(f"\n\n\n\nEnd of Project Gutenberg's {book.title}, by {book.author}\n\n{end}\n\n"
                 f"***** This file should be named {number}.txt or {number}.zip *****\n"
                 "This and all associated files of various formats will be found in:\n"
                 f"        http://www.gutenberg.org/{'/'.join(str(number)[:-1])}/{number}/\n\n"
                 "Updated editions will replace the previous one--the old editions\nwill be renamed.\n\n\n\n"
                 + PG_LICENSE)
    return "".join(lines).replace("\n", "\r\n").encode("utf-8")


def _books3_text(book: Book) -> str:
    parts = [book.title, ""]
    for chapter, paragraphs in book.chapters:
        parts += [chapter.title(), "", "\n\n".join(paragraphs), ""]
    return "\n".join(parts)


def _shared_fraction(a: Book, b: Book) -> float:
    pa, pb = set(a.paragraphs()), set(b.paragraphs())
    return round(len(pa & pb) / max(1, len(pa), len(pb)), 3)


def write_books(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("books")
    length = ctx.count(55_000, 8_000)
    gutenberg: list[Book] = [_new_book(ctx, rng, length) for _ in range(ctx.count(6, 1))]
    books3: list[Book] = [_new_book(ctx, rng, length) for _ in range(ctx.count(4, 1))]

    def revised(book: Book, title: str, fraction: float) -> Book:
        """Another edition: about `fraction` of the paragraphs replaced by fresh ones, a new preface."""
        chapters = []
        for chapter, paragraphs in book.chapters:
            paragraphs = list(paragraphs)
            for i in range(len(paragraphs)):
                if rng.random() < fraction:
                    paragraphs[i] = ctx.english.paragraphs(1)[0]
            chapters.append((chapter, paragraphs))
        chapters.insert(0, ("PREFACE TO THE SECOND EDITION", ctx.english.paragraphs(1)))
        return Book(title, book.author, chapters)

    # Near duplicates sharing > 90%: one across the two collections, one inside Gutenberg.
    first = _new_book(ctx, rng, length)
    first_second = revised(first, f"{first.title} (Second Edition)", 0.03)
    second = _new_book(ctx, rng, length)
    second_again = revised(second, second.title, 0.03)
    # A pair sharing only about half its text (the first half): must not be merged.
    half = _new_book(ctx, rng, length)
    kept, total = [], len(half.paragraphs())
    for chapter, paragraphs in half.chapters:  # the first half of the paragraphs, then new text
        room = total // 2 - sum(len(ps) for _, ps in kept)
        if room > 0:
            kept.append((chapter, paragraphs[:room]))
    fresh = ctx.english.paragraphs(total - total // 2)
    half_other = Book(f"{half.title}, Volume Two", half.author, kept + [("NEW MATERIAL", fresh)])

    gutenberg_all = gutenberg + [first, second, second_again]
    books3_all = books3 + [first_second, half, half_other]
    numbers = rng.sample(range(10_000, 70_000), len(gutenberg_all))
    files, ids = [], {}
    release = ctx.epoch() - timedelta(days=4000)
    for book, number in zip(gutenberg_all, numbers):
        stamp = release + timedelta(days=rng.randint(0, 3000))
        files.append(ctx.write(f"books/gutenberg/pg{number}.txt", _gutenberg_text(book, number, rng, stamp)))
        ids[id(book)] = {"id": f"pg{number}", "file": files[-1], "title": book.title}
    order = list(books3_all)
    rng.shuffle(order)
    lines = []
    name = "books/books3/books3-00000.jsonl.zst"
    for line_number, book in enumerate(order):
        lines.append(json.dumps({"text": _books3_text(book), "meta": {"title": book.title, "author": book.author,
                                                                        "pile_set_name": "Books3"}},
                                ensure_ascii=False))
        ids[id(book)] = {"id": f"books3-00000:{line_number}", "file": name, "line": line_number, "title": book.title}
    data = ("\n".join(lines) + "\n").encode("utf-8")
    files.append(ctx.write(name, zstandard.ZstdCompressor(level=10, write_content_size=True).compress(data)))

    def pair(a: Book, b: Book) -> dict[str, Any]:
        """shared_fraction: paragraphs in common over the paragraphs of the longer book."""
        return {"a": ids[id(a)], "b": ids[id(b)], "shared_fraction": _shared_fraction(a, b)}

    return {
        "files": files,
        "documents": len(gutenberg_all) + len(books3_all),
        "books": [ids[id(b)] for b in gutenberg_all + order],
        "planted": {
            "near_duplicate_pairs": [pair(first, first_second), pair(second, second_again)],
            "partial_overlap_pairs": [pair(half, half_other)],
            "gutenberg_header_variants": ["START OF THIS PROJECT GUTENBERG EBOOK", "START OF THE PROJECT GUTENBERG EBOOK"],
        },
    }


# ---------------------------------------------------------------------------------------------
# 6. arXiv (bulk source tars)

SURNAMES = ("Smith", "García", "Chen", "Müller", "Rossi", "Kowalski", "Nakamura", "Okafor", "Dubois", "Ivanova",
            "Singh", "Haddad", "Larsen", "Moreau", "Novak", "Tanaka")
GIVEN = ("A.", "B.", "C.", "D.", "E.", "F.", "J.", "K.", "L.", "M.", "R.", "S.")
PAPER_TITLES = ("On the Design of {m}", "{m}: Semantics and Implementation", "A Study of the {m} Interface",
                "Towards a Formal Account of {m}", "Lessons Learned from {m}")
LATEX_SPECIALS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage[utf8]{inputenc}
\usepackage{amsmath,amssymb}
\usepackage{graphicx}
\usepackage{hyperref}

% Notation used throughout the paper
\newcommand{\R}{\mathbb{R}}
\newcommand{\vect}[1]{\mathbf{#1}}
\newcommand{\norm}[2][2]{\|#2\|_{#1}}
\def\eps{\varepsilon}
\renewcommand{\vec}[1]{\boldsymbol{#1}}
"""
MACROS = {r"\R": r"\mathbb{R}", r"\vect": r"\mathbf{#1}", r"\norm": r"\|#2\|_{#1} (optional #1 = 2)",
          r"\eps": r"\varepsilon", r"\vec": r"\boldsymbol{#1}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(c, c) for c in text)


def _tar_bytes(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), mtime, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _paper(ctx: SampleContext, rng: random.Random, layout: str, length: int) -> tuple[str, dict[str, str]]:
    """(title, {file name: content}) for one paper, with prose from real text."""
    texts = ctx.english.text_of_length(length)
    paragraphs = [latex_escape(p) for t in texts for p in t.paragraphs]
    for t in texts:
        ctx.english_origins.add(t.origin)
    subject = texts[0].title
    title = latex_escape(rng.choice(PAPER_TITLES).format(m=subject[:1].upper() + subject[1:]))
    authors = " \\and ".join(f"{rng.choice(GIVEN)} {rng.choice(SURNAMES)}" for _ in range(rng.randint(1, 4)))
    n = len(paragraphs)
    intro, method, rest = paragraphs[1:max(2, n // 3)], paragraphs[max(2, n // 3):max(3, 2 * n // 3)], \
        paragraphs[max(3, 2 * n // 3):]
    keys = [f"{rng.choice(SURNAMES).lower()}{rng.randint(1995, 2022)}{c}" for c in "abcd"]
    cite = lambda: f"~\\cite{{{rng.choice(keys)}}}"  # noqa: E731
    equation = ("\\begin{equation}\\label{eq:bound}\n  \\norm{\\vect{x} - \\vect{y}} \\le \\eps\n"
                "  \\quad\\text{for all } \\vect{x}, \\vect{y} \\in \\R^n, \\qquad \\norm[1]{\\vec{w}} \\le 1.\n"
                "\\end{equation}\n")
    method_tex = ("\\section{Method}\\label{sec:method}\n"
                  + "\n\n".join(p + (cite() if i == 0 else "") for i, p in enumerate(method))
                  + "\n\nIn our runs about 5\\% of the inputs needed a second pass; see Eq.~\\eqref{eq:bound}.\n"
                  + equation
                  + "\\begin{figure}[t]\n  \\centering\n  \\includegraphics[width=0.8\\linewidth]{figures/overview.pdf}\n"
                  f"  \\caption{{{split_sentences(method[0] if method else paragraphs[0])[0]}}}\n  \\label{{fig:overview}}\n\\end{{figure}}\n")
    discussion = "\\section{Discussion}\n" + "\n\n".join(rest[:-1] or rest) + "\n"
    conclusion = "\\section{Conclusion}\n" + (rest[-1] if rest else paragraphs[-1]) + "\n"
    head = (PREAMBLE + f"\n\\title{{{title}}}\n\\author{{{authors}}}\n\\date{{}}\n\n\\begin{{document}}\n\\maketitle\n\n"
            f"\\begin{{abstract}}\n{paragraphs[0]}\n\\end{{abstract}}\n\n"
            "\\section{Introduction}\\label{sec:intro}\n"
            + "\n\n".join(p + (cite() if i == 1 else "") for i, p in enumerate(intro))
            + "\n% TODO: shorten the introduction before the camera-ready version.\n\n")
    bib_entries = "\n".join(
        f"@article{{{key},\n  title = {{{latex_escape(' '.join(rng.sample(ctx.vocabulary(), 5)).capitalize())}}},\n"
        f"  author = {{{rng.choice(SURNAMES)}, {rng.choice(GIVEN)} and {rng.choice(SURNAMES)}, {rng.choice(GIVEN)}}},\n"
        f"  journal = {{Journal of {rng.choice(ctx.vocabulary()).capitalize()} Studies}},\n  year = {{{key[-5:-1]}}}\n}}\n"
        for key in keys)
    if layout == "multi":
        main = (head + "\\input{sections/method}\n\n" + discussion + conclusion
                + "\n\\bibliographystyle{plain}\n\\bibliography{refs}\n\n\\appendix\n\\include{appendix}\n\n\\end{document}\n")
        appendix = "\\section{Additional details}\n" + (intro[-1] if intro else paragraphs[0]) + "\n"
        return title, {"main.tex": main, "sections/method.tex": method_tex, "appendix.tex": appendix,
                       "refs.bib": bib_entries}
    bibliography = ("\\begin{thebibliography}{9}\n"
                    + "".join(f"\\bibitem{{{key}}} {rng.choice(SURNAMES)}, {rng.choice(GIVEN)}: "
                              f"{' '.join(rng.sample(ctx.vocabulary(), 4)).capitalize()}. {key[-5:-1]}.\n" for key in keys)
                    + "\\end{thebibliography}\n")
    main = head + method_tex + discussion + conclusion + "\n" + bibliography + "\n\\end{document}\n"
    return title, {"paper.tex": main}


def write_arxiv(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("arxiv")
    epoch = ctx.epoch()
    mtime = int(epoch.timestamp())
    yymm = f"{epoch.year % 100:02d}{epoch.month:02d}"
    n_papers = ctx.count(40, 4)
    length = ctx.count(9_000, 2_500)
    members: list[tuple[str, bytes]] = []
    papers, planted = [], {"multi_file": [], "single_tex": [], "thebibliography": [], "bibtex": [], "pdf_only": []}
    numbers = sorted(rng.sample(range(1, 30_000), n_papers + 1))
    for index in range(n_papers):
        arxiv_id = f"{yymm}.{numbers[index]:05d}"
        layout = "multi" if index % 2 == 0 else "single"
        title, sources = _paper(ctx, rng, layout, length)
        if layout == "multi":
            inner = _tar_bytes([(k, v.encode("utf-8")) for k, v in sorted(sources.items())], mtime)
            planted["multi_file"].append(arxiv_id)
            planted["bibtex"].append(arxiv_id)
        else:
            inner = sources["paper.tex"].encode("utf-8")
            planted["single_tex"].append(arxiv_id)
            planted["thebibliography"].append(arxiv_id)
        members.append((f"{yymm}/{arxiv_id}.gz", gzip_bytes(inner)))
        papers.append({"id": arxiv_id, "title": title, "layout": layout, "files": sorted(sources)})
    # PDF-only submissions exist in the bulk tars too; a LaTeX reader must skip them.
    pdf_id = f"{yymm}.{numbers[-1]:05d}"
    members.append((f"{yymm}/{pdf_id}.pdf", b"%PDF-1.4\n% sample PDF-only submission, no LaTeX source\n%%EOF\n"))
    planted["pdf_only"].append(pdf_id)
    planted["macros"] = MACROS
    n_tars = 1 if ctx.scale < 0.5 else 2
    files = []
    for index, chunk in enumerate(split_evenly(members, n_tars)):
        files.append(ctx.write(f"arxiv/arXiv_src_sample_{index:03d}.tar", _tar_bytes(chunk, mtime)))
    return {"files": files, "documents": len(members), "papers": papers, "planted": planted}


# ---------------------------------------------------------------------------------------------
# 7. Stack Exchange (Posts.xml of the data dump)

SE_SITES = ("softwareengineering.stackexchange.com", "codereview.stackexchange.com", "cs.stackexchange.com")
QUESTION_TITLES = ("How does {n} work in {m}?", "Why does {n} behave this way?", "What is the purpose of {n}?",
                   "When should I use {n} instead of writing my own?", "Is {n} safe to call from several threads?",
                   "What is the difference between {n} and a plain function?")


def _se_attr(value: str) -> str:
    """Attribute escaping as the dump writes it: &, <, >, \" escaped, newlines as &#xA;."""
    return html.escape(value, quote=False).replace('"', "&quot;").replace("\n", "&#xA;")


def _html_body(rng: random.Random, paragraphs: list[str], code: str | None, link: str | None) -> str:
    parts = []
    for i, paragraph in enumerate(paragraphs):
        text = html.escape(paragraph, quote=False)
        if i == 0 and rng.random() < 0.3:
            words = text.split(" ")
            if len(words) > 4:
                words[3] = f"<em>{words[3]}</em>"
            text = " ".join(words)
        parts.append(f"<p>{text}</p>")
    if code:
        parts.insert(1, f"<pre><code>{html.escape(code, quote=False)}\n</code></pre>")
    if link:
        parts.append(f'<p>See <a href="{link}" rel="nofollow">the documentation</a> for details.</p>')
    if len(paragraphs) >= 2 and rng.random() < 0.3:
        items = [split_sentences(p)[0] for p in paragraphs[:3]]
        parts.append("<ul>\n" + "".join(f"<li>{html.escape(i, quote=False)}</li>\n" for i in items) + "</ul>")
    return "\n\n".join(parts) + "\n"


def write_stackexchange(ctx: SampleContext) -> dict[str, Any]:
    rng = ctx.rng("stackexchange")
    epoch = ctx.epoch()
    n_questions = ctx.count(60, 4)
    files, sites, planted = [], {}, {"score_order": [], "unanswered_questions": [], "tag_wiki_posts": [],
                                     "empty_body_answers": []}
    for site_index, site in enumerate(SE_SITES):
        posts: list[dict[str, Any]] = []  # created in time order; Ids follow
        start = epoch - timedelta(days=900)
        for q in range(n_questions):
            text = ctx.text(min_chars=600)
            name = next(iter(text.headings.values()), text.title.split(".")[-1])
            created = start + timedelta(seconds=rng.randint(0, 800 * 86400))
            tags = sorted({t.lower().strip("_") for t in text.title.split(".")[:2] if t.strip("_")} | {"python"})
            question = {"PostTypeId": "1", "created": created, "Score": rng.choice([0, 1, 2, 3, 5, 8, 13, 21]),
                        "ViewCount": rng.randint(20, 20_000), "Title": rng.choice(QUESTION_TITLES).format(n=name, m=text.title),
                        "Tags": "".join(f"<{t}>" for t in tags),
                        "Body": _html_body(rng, text.paragraphs[:rng.randint(1, 2)], text.code[0] if text.code else None, None)}
            posts.append(question)
            if site_index == 0 and q == 0:
                scores = [9, 2, 10]  # string order would rank "9" > "2" > "10"
            elif q == 1:
                scores = []  # unanswered
            else:
                scores = [rng.choice([-1, 0, 1, 2, 4, 7, 15]) for _ in range(rng.randint(1, 3))]
            answers = []
            paragraphs = text.paragraphs[2:] or ctx.english.paragraphs(3)
            for a, score in enumerate(scores):
                chunk = paragraphs[a::max(1, len(scores))][:2] or ctx.english.paragraphs(1)
                link = f"https://docs.python.org/3/library/{text.title.split('.')[0]}.html" if rng.random() < 0.3 else None
                answer = {"PostTypeId": "2", "parent": question, "created": created + timedelta(hours=rng.randint(1, 2000)),
                          "Score": score, "Body": _html_body(rng, chunk, None, link)}
                answers.append(answer)
            if site_index == 0 and q == 2 and answers:  # a deleted-looking answer with an empty body
                answers.append({"PostTypeId": "2", "parent": question, "created": created + timedelta(hours=3),
                                "Score": 0, "Body": "", "empty": True})
            posts.extend(answers)
            question["answers"] = answers
            question["accepted"] = max(answers, key=lambda x: x["Score"]) if answers and rng.random() < 0.6 else None
            question["kind"] = "score_order" if scores == [9, 2, 10] and site_index == 0 and q == 0 else \
                ("unanswered" if not scores else "normal")
        for t in range(ctx.count(4, 1)):  # tag excerpt (4) and tag wiki (5) rows: not Q&A
            created = start + timedelta(seconds=rng.randint(0, 800 * 86400))
            paragraph = ctx.english.paragraphs(1)[0]
            posts.append({"PostTypeId": "4", "created": created, "Score": 0, "Body": split_sentences(paragraph)[0] + "\n"})
            posts.append({"PostTypeId": "5", "created": created, "Score": 0, "Body": _html_body(rng, [paragraph], None, None)})
        posts.sort(key=lambda p: (p["created"], p["PostTypeId"]))
        for post_id, post in enumerate(posts, start=1):
            post["Id"] = post_id
        rows = []
        for post in posts:
            attrs = [("Id", str(post["Id"])), ("PostTypeId", post["PostTypeId"])]
            if post["PostTypeId"] == "2":
                attrs.append(("ParentId", str(post["parent"]["Id"])))
            if post["PostTypeId"] == "1" and post["accepted"] is not None:
                attrs.append(("AcceptedAnswerId", str(post["accepted"]["Id"])))
            stamp = post["created"].strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randint(0, 999):03d}"
            attrs += [("CreationDate", stamp), ("Score", str(post["Score"]))]
            if post["PostTypeId"] == "1":
                attrs.append(("ViewCount", str(post["ViewCount"])))
            attrs.append(("Body", post["Body"]))
            attrs += [("OwnerUserId", str(rng.randint(2, 5000) if post["PostTypeId"] in "12" else -1)),
                      ("LastActivityDate", stamp)]
            if post["PostTypeId"] == "1":
                attrs += [("Title", post["Title"]), ("Tags", post["Tags"]), ("AnswerCount", str(len(post["answers"])))]
            attrs.append(("CommentCount", str(rng.randint(0, 6))))
            rows.append("  <row " + " ".join(f'{k}="{_se_attr(v)}"' for k, v in attrs) + " />")
            if post["PostTypeId"] == "1" and post["kind"] == "score_order":
                by_score = sorted(post["answers"], key=lambda a: -a["Score"])
                planted["score_order"].append({"site": site, "question_id": post["Id"],
                                               "answer_ids_by_score": [a["Id"] for a in by_score],
                                               "scores": [a["Score"] for a in by_score]})
            elif post["PostTypeId"] == "1" and post["kind"] == "unanswered":
                planted["unanswered_questions"].append({"site": site, "question_id": post["Id"]})
            elif post["PostTypeId"] in "45":
                planted["tag_wiki_posts"].append({"site": site, "id": post["Id"], "post_type": int(post["PostTypeId"])})
            elif post.get("empty"):
                planted["empty_body_answers"].append({"site": site, "id": post["Id"], "question_id": post["parent"]["Id"]})
        xml = '\ufeff<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>"
        files.append(ctx.write(f"stackexchange/{site}/Posts.xml", xml.encode("utf-8")))
        sites[site] = {"questions": sum(p["PostTypeId"] == "1" for p in posts),
                       "answers": sum(p["PostTypeId"] == "2" for p in posts), "rows": len(posts)}
    return {"files": files, "documents": sum(s["rows"] for s in sites.values()), "sites": sites, "planted": planted}
