"""The reliability campaign (issue 8): broken and hostile inputs against every reader they can
reach, and kill -9 at random points of a corpus build. Anyone can rerun it:

    .venv/bin/python scripts/reliability.py                  # everything -> docs/RELIABILITY.md
    .venv/bin/python scripts/reliability.py --quick          # the reduced set tests/test_reliability.py runs
    .venv/bin/python scripts/reliability.py --only xxe,tar   # some input kinds, table on stdout
    .venv/bin/python scripts/reliability.py --kills 10 --no-inputs   # only the kill campaign
    .venv/bin/python scripts/reliability.py --fuzz 2000      # also fuzz every reader (scripts/fuzz.py)

Bad inputs: each case writes its input files into its own folder, then runs the reader's stage
(run_stage) on them in a child process under strace, with a wall-clock limit (a hang) and an
address-space limit (a runaway allocation shows as a crash instead of taking the machine down).
A case passes when the child exits cleanly, docs_in == kept + rejected, the Parquet parts hold
exactly the manifest's rows, every rejected row has a reason, the intact records planted beside
the bad one all come out, the bad record/file is a rejected row (or the case says why it may be
kept), peak RSS stays under the case's bound, and strace saw no file outside the case folder
read or written (besides the interpreter, its libraries and /proc, /sys, /dev, /etc).

Kills: a reference build (`llama-recipe build --ephemeral` on `llama-recipe samples --scale
0.05`), then for each kill point a fresh build killed with SIGKILL after a random delay, then the
same build run again to completion: its token shards and every manifest must equal the
reference's byte for byte (wall times, which differ by nature, excepted and reported), and no
stage folder may exist without its manifest.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20

# ---------------------------------------------------------------------------------------------
# Valid records of each reader's format (small, English, long enough to pass min-length rules)

PROSE = (
    "The river runs past the old mill and the children walk along its bank every morning. "
    "Their teacher says that the water was once clean enough to drink, and that the mill "
    "ground wheat for the whole valley until the railway came. Now the wheel turns slowly "
    "and nobody remembers who built it, though the stones carry a date from long ago. "
)


def wet_record(i: int, text: str | bytes, *, content_length: int | None = None, record_id: bool = True,
               rtype: str = "conversion", payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else (f"Page {i}\n".encode() + (text if isinstance(text, bytes) else text.encode()))
    headers = [f"WARC/1.0", f"WARC-Type: {rtype}", f"WARC-Target-URI: http://example.com/{i}",
               "WARC-Date: 2023-01-01T00:00:00Z"]
    if record_id:
        headers.append(f"WARC-Record-ID: <urn:uuid:{uuid.UUID(int=i + 1)}>")
    if rtype == "response":
        headers.append("Content-Type: application/http; msgtype=response")
    if content_length != -1:
        headers.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body + b"\r\n\r\n"


def html_response(i: int, html: bytes) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    return wet_record(i, b"", rtype="response", payload=http + html)


def page_html(i: int, extra: bytes = b"") -> bytes:
    return (f"<html><head><title>Page {i}</title></head><body><p>{PROSE}</p>".encode() + extra + b"</body></html>")


def gz_members(records: list[bytes]) -> bytes:
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def c4_row(i: int, text: str = PROSE) -> dict:
    return {"text": text, "url": f"http://example.com/{i}", "timestamp": "2019-04-25T12:57:54Z"}


def github_row(i: int, content: str = "def f():\n    return 1\n" * 20) -> dict:
    return {"repo_name": f"acme/repo{i}", "path": f"src/m{i}.py", "content": content, "license": "mit",
            "id": f"{i:040x}", "size": len(content), "binary": False, "copies": 1, "ref": "refs/heads/main",
            "language": [{"name": "Python", "bytes": len(content)}]}


def wiki_page(i: int, text: str | bytes = PROSE * 3) -> bytes:
    text = text if isinstance(text, bytes) else text.encode()
    return (f"<page><title>Article {i}</title><ns>0</ns><id>{i}</id><revision><id>{1000 + i}</id>"
            f"<timestamp>2023-01-01T00:00:00Z</timestamp><text xml:space=\"preserve\">").encode() + text + b"</text></revision></page>\n"


WIKI_HEAD = (b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="en"><siteinfo>'
             b"<dbname>enwiki</dbname><namespaces><namespace key=\"0\" /></namespaces></siteinfo>\n")


def wiki_dump(pages: list[bytes], doctype: bytes = b"", tail: bytes = b"</mediawiki>\n") -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + doctype + WIKI_HEAD + b"".join(pages) + tail


def se_rows(rows: list[bytes], doctype: bytes = b"", tail: bytes = b"</posts>\n") -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + doctype + b"<posts>\n" + b"".join(rows) + tail


def se_question(i: int, body: bytes = b"&lt;p&gt;How do I sort a list in place?&lt;/p&gt;") -> bytes:
    return (f'<row Id="{i}" PostTypeId="1" Score="3" Title="Question {i}" Tags="&lt;python&gt;" '
            f'CreationDate="2020-01-01T00:00:00" Body="').encode() + body + b'" />\n'


def se_answer(i: int, parent: int) -> bytes:
    return f'<row Id="{i}" PostTypeId="2" ParentId="{parent}" Score="5" Body="&lt;p&gt;Use list.sort().&lt;/p&gt;" />\n'.encode()


def se_qa(n: int) -> list[bytes]:
    return [row for i in range(1, n + 1) for row in (se_question(10 * i), se_answer(10 * i + 1, 10 * i))]


def gutenberg(text: str | bytes) -> bytes:
    text = text if isinstance(text, bytes) else text.encode()
    return (b"The Project Gutenberg EBook of A Book\r\n\r\nTitle: A Book\r\nAuthor: Someone\r\n\r\n"
            b"*** START OF THIS PROJECT GUTENBERG EBOOK A BOOK ***\r\n\r\n" + text +
            b"\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK A BOOK ***\r\n")


def books3(rows: list[bytes]) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(b"".join(r + b"\n" for r in rows))


def book_row(i: int, text: str = PROSE * 12) -> bytes:
    return json.dumps({"text": text, "meta": {"title": f"Book {i}"}}).encode()


def tex(i: int, body: str | bytes = PROSE) -> bytes:
    body = body if isinstance(body, bytes) else body.encode()
    return b"\\documentclass{article}\n\\begin{document}\n\\section{Intro}\n" + body + b"\n\\end{document}\n"


def tar_bytes(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """members: (name, data, kind) with kind "file", "symlink:<target>", "hardlink:<target>"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind.split(":", 1)[1]
                tar.addfile(info)
            elif kind.startswith("hardlink:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind.split(":", 1)[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def paper_gz(i: int, files: dict[str, bytes] | None = None) -> bytes:
    files = files if files is not None else {"main.tex": tex(i)}
    return gzip.compress(tar_bytes([(n, d, "file") for n, d in files.items()]), mtime=0)


def bulk_tar(papers: list[tuple[str, bytes | None, str]]) -> bytes:
    return tar_bytes(papers)


def good_papers(n: int) -> list[tuple[str, bytes, str]]:
    return [(f"2301.{i:05d}.gz", paper_gz(i), "file") for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------
# Streams for the bombs and huge lines: written in blocks, never held whole in memory


def write_stream(path: Path, pieces, compress: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        fh = gzip.open(path, "wb", compresslevel=6)
    elif compress == "bz2":
        fh = bz2.open(path, "wb", compresslevel=9)
    elif compress == "zst":
        import zstandard

        raw = open(path, "wb")
        fh = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
    else:
        fh = open(path, "wb")
    with fh:
        for piece in pieces:
            fh.write(piece)
    return path


def repeated(prefix: bytes, fill: bytes, size: int, suffix: bytes, block: int = 4 * MB):
    yield prefix
    chunk = fill * (block // len(fill))
    left = size
    while left > 0:
        yield chunk[: min(left, len(chunk))]
        left -= len(chunk)
    yield suffix


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    kind: str  # the input kind (the table's rows are grouped by it)
    reader: str  # the stage that reads it
    note: str  # what the bad input is
    make: Callable[[Path], list[Path]]  # writes the inputs under a folder, returns the stage's inputs
    min_rows: int = 1  # rows that must come out (the intact records planted + the bad one)
    kept_min: int = 0  # intact records that must be kept
    may_keep: bool = False  # the bad record may legitimately be kept (e.g. decoded as Latin-1)
    rss_mb: int = 700  # bound on the child's peak RSS
    secret: bool = False  # the case points at the outside secret file: it must never be opened
    quick: bool = False  # part of the reduced set run by `make test`
    stage: str | None = None  # a documents stage run on the reader's output (e.g. arxiv_clean)

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.reader}/{self.note}"


def _w(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _corrupt(data: bytes, at: float, n: int = 16) -> bytes:
    i = int(len(data) * at)
    return data[:i] + bytes((b ^ 0x5A) for b in data[i : i + n]) + data[i + n :]


BIG = 100 * MB  # "a 100 MB line"
BOMB = 1536 * MB  # decompressed size of the bombs (a few MB on disk)


def build_cases(secret: Path) -> list[Case]:
    s = secret.as_posix()
    cases: list[Case] = []
    add = cases.append

    # -- corrupt gzip: one damaged member/stream among good ones
    wet3 = [wet_record(i, PROSE) for i in range(3)]
    add(Case("corrupt gzip", "cc_ingest", "deflate data of the 2nd of 3 members flipped",
             lambda d: [_w(d / "a.warc.wet.gz", gzip.compress(wet3[0], mtime=0) + _corrupt(gzip.compress(wet3[1], mtime=0), 0.5)
                           + gzip.compress(wet3[2], mtime=0))], min_rows=3, kept_min=2, quick=True))
    warc3 = [html_response(i, page_html(i)) for i in range(3)]
    add(Case("corrupt gzip", "cc_warc_ingest", "deflate data of the 2nd of 3 members flipped",
             lambda d: [_w(d / "a.warc.gz", gzip.compress(warc3[0], mtime=0) + _corrupt(gzip.compress(warc3[1], mtime=0), 0.5)
                           + gzip.compress(warc3[2], mtime=0))], min_rows=3, kept_min=2))
    for reader, name, row in (("c4_ingest", "c4-train.00000-of-00001.json.gz", c4_row),
                              ("github_ingest", "github-00000.jsonl.gz", github_row)):
        add(Case("corrupt gzip", reader, "bytes flipped at 60% of the stream",
                 lambda d, name=name, row=row: [_w(d / name, _corrupt(gzip.compress(jsonl([row(i) for i in range(200)]), mtime=0), 0.6))],
                 min_rows=2, kept_min=1, quick=reader == "c4_ingest"))
    add(Case("corrupt gzip", "arxiv_ingest", "one paper's .gz member corrupt in a bulk tar",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", _corrupt(paper_gz(9), 0.5), "file")]))],
             min_rows=3, kept_min=2))
    add(Case("corrupt gzip", "arxiv_ingest", "a single paper .tar.gz corrupt",
             lambda d: [_w(d / "2301.00001.tar.gz", _corrupt(paper_gz(1), 0.5))]))

    # -- truncated zstd / bz2 garbage
    add(Case("truncated zstd", "books_ingest", "books3 shard cut inside its frame",
             lambda d: [_w(d / "books3-00000.jsonl.zst", (lambda b: b[: len(b) * 2 // 3])(books3([book_row(i, _words(i, 3000)) for i in range(40)])))],
             min_rows=2, kept_min=1, quick=True))
    add(Case("bz2 garbage", "wikipedia_ingest", "random bytes after a bz2 header",
             lambda d: [_w(d / "enwiki-pages-articles.xml.bz2", b"BZh9" + random.Random(0).randbytes(50_000))], quick=True))
    add(Case("bz2 garbage", "wikipedia_ingest", "a good dump with bytes flipped at 70%",
             lambda d: [_w(d / "enwiki-pages-articles.xml.bz2", _corrupt(bz2.compress(wiki_dump([wiki_page(i, PROSE * 30 + str(i)) for i in range(1, 200)])), 0.7, 64))],
             min_rows=2, kept_min=1))

    # -- WARC framing
    add(Case("truncated WARC record", "cc_ingest", "plain WET cut inside the last record's body",
             lambda d: [_w(d / "a.warc.wet", (lambda b: b[: -200])(b"".join(wet3)))], min_rows=3, kept_min=2, quick=True))
    add(Case("truncated WARC record", "cc_ingest", "gzip WET cut inside the last member",
             lambda d: [_w(d / "a.warc.wet.gz", (lambda b: b[: -40])(gz_members(wet3)))], min_rows=3, kept_min=2))
    add(Case("truncated WARC record", "cc_warc_ingest", "gzip WARC cut inside the last member",
             lambda d: [_w(d / "a.warc.gz", (lambda b: b[: -40])(gz_members(warc3)))], min_rows=3, kept_min=2))
    for cl, what in ((100, "too small"), (10_000, "too large"), (99_999_999_999, "absurd (100 GB)")):
        # cc_ingest reads a plain WET record with a wrong length up to the next "WARC/1.0" line, as
        # cc_net does (trust_content_length: false, the default): all three come out, kept.
        add(Case("wrong Content-Length", "cc_ingest", f"2nd of 3 records, length {what}",
                 lambda d, cl=cl: [_w(d / "a.warc.wet", wet3[0] + wet_record(1, PROSE, content_length=cl) + wet3[2])],
                 min_rows=3, kept_min=3, may_keep=True, quick=cl == 100))
        add(Case("wrong Content-Length", "cc_warc_ingest", f"2nd of 3 records, length {what}",
                 lambda d, cl=cl: [_w(d / "a.warc", warc3[0] + wet_record(1, b"", rtype="response", content_length=cl,
                                                    payload=b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + page_html(1)) + warc3[2])],
                 min_rows=2, kept_min=1))

    # -- invalid UTF-8 and NUL bytes, in every reader
    for kind, raw in (("invalid UTF-8", b"\xff\xfe\xc3\x28\xa0\xa1" * 40), ("NUL bytes", b"\x00" * 240)):
        q = kind == "invalid UTF-8"
        add(Case(kind, "cc_ingest", "in the 2nd page's text",
                 lambda d, raw=raw: [_w(d / "a.warc.wet.gz", gz_members([wet3[0], wet_record(1, PROSE.encode() + raw), wet3[2]]))],
                 min_rows=3, kept_min=2, may_keep=True, quick=q))
        add(Case(kind, "cc_warc_ingest", "in the 2nd page's HTML (charset utf-8)",
                 lambda d, raw=raw: [_w(d / "a.warc.gz", gz_members([warc3[0], html_response(1, page_html(1, raw)), warc3[2]]))],
                 min_rows=3, kept_min=2, may_keep=True))
        for reader, name, row in (("c4_ingest", "c4-train.00000-of-00001.json.gz", c4_row),
                                  ("github_ingest", "github-00000.jsonl.gz", github_row)):
            add(Case(kind, reader, "raw bytes in the 2nd line",
                     lambda d, raw=raw, name=name, row=row: [_w(d / name, gzip.compress(
                         jsonl([row(0)]) + json.dumps(row(1)).encode()[:-2] + raw + b'"}\n' + jsonl([row(2)]), mtime=0))],
                     min_rows=3, kept_min=2, quick=reader == "c4_ingest"))
        add(Case(kind, "wikipedia_ingest", "in the 2nd page's text (plain XML)",
                 lambda d, raw=raw: [_w(d / "enwiki-pages-articles.xml", wiki_dump([wiki_page(1), wiki_page(2, PROSE.encode() + raw), wiki_page(3)]))],
                 min_rows=2, kept_min=1))
        add(Case(kind, "books_ingest", "in a Gutenberg .txt",
                 lambda d, raw=raw: [_w(d / "12345.txt", gutenberg(PROSE.encode() * 12 + raw))], may_keep=True))
        add(Case(kind, "books_ingest", "in the 2nd books3 line",
                 lambda d, raw=raw: [_w(d / "books3-00000.jsonl.zst", books3([book_row(0), book_row(1)[:-2] + raw + b'"}', book_row(2)]))],
                 min_rows=3, kept_min=2))
        add(Case(kind, "stackexchange_ingest", "in the 2nd question's body",
                 lambda d, raw=raw: [_w(d / "cs.stackexchange.com" / "Posts.xml", se_rows(se_qa(1) + [se_question(20, raw), se_answer(21, 20)] + se_qa(1)))],
                 min_rows=2, kept_min=1))
        add(Case(kind, "arxiv_ingest", "in a paper's main.tex",
                 lambda d, raw=raw: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, {"main.tex": tex(9, PROSE.encode() + raw)}), "file")]))],
                 min_rows=3, kept_min=2, may_keep=True))

    # -- a 100 MB line
    big_text = lambda: repeated(b"", b"word ", BIG, b"")
    add(Case("100 MB line", "c4_ingest", "one JSON line of 100 MB between two good ones",
             lambda d: [write_stream(d / "c4-train.00000-of-00001.json.gz", [jsonl([c4_row(0)]), *repeated(b'{"text": "', b"word ", BIG, b'"}\n'), jsonl([c4_row(2)])], "gz")],
             min_rows=3, kept_min=2, quick=True))
    add(Case("100 MB line", "github_ingest", "one JSON line of 100 MB between two good ones",
             lambda d: [write_stream(d / "github-00000.jsonl.gz", [jsonl([github_row(0)]), *repeated(b'{"repo_name": "a/b", "path": "x.py", "content": "', b"x = 1 ", BIG, b'"}\n'), jsonl([github_row(2)])], "gz")],
             min_rows=3, kept_min=2))
    add(Case("100 MB line", "books_ingest", "one books3 line of 100 MB between two good ones",
             lambda d: [write_stream(d / "books3-00000.jsonl.zst", [book_row(0) + b"\n", *repeated(b'{"text": "', b"word ", BIG, b'"}\n'), book_row(2) + b"\n"], "zst")],
             min_rows=3, kept_min=2))
    add(Case("100 MB line", "books_ingest", "a Gutenberg .txt that is one 100 MB line",
             lambda d: [write_stream(d / "12345.txt", repeated(gutenberg(b"").split(b"***\r\n\r\n")[0] + b"***\r\n\r\n", b"word ", BIG, b"\r\n"), None)], may_keep=True, rss_mb=1400))
    add(Case("100 MB line", "cc_ingest", "a WET page of one 100 MB line",
             lambda d: [_big_wet(d / "a.warc.wet", wet3)], min_rows=3, kept_min=2))
    add(Case("100 MB line", "wikipedia_ingest", "a page whose text is one 100 MB line",
             lambda d: [write_stream(d / "enwiki-pages-articles.xml.bz2", [wiki_dump([wiki_page(1)], tail=b""), wiki_page(2, b"")[:-len(b"</text></revision></page>\n")],
                                     *repeated(b"", b"word ", BIG, b"</text></revision></page>\n"), wiki_page(3), b"</mediawiki>\n"], "bz2")],
             min_rows=2, kept_min=1))
    add(Case("100 MB line", "stackexchange_ingest", "a question body attribute of 100 MB",
             lambda d: [write_stream(d / "cs.stackexchange.com" / "Posts.xml", [se_rows(se_qa(1), tail=b""), b'<row Id="20" PostTypeId="1" Score="1" Title="t" Body="',
                                     *repeated(b"", b"word ", BIG, b'" />\n'), se_question(30), se_answer(31, 30), b"</posts>\n"], None)],
             min_rows=2, kept_min=1))
    add(Case("100 MB line", "arxiv_ingest", "a main.tex of one 100 MB line",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", gzip.compress(tar_bytes([("main.tex", tex(9, b"word " * (BIG // 5)), "file")]), compresslevel=1), "file")]))],
             min_rows=3, kept_min=2, rss_mb=1000))

    # -- empty files (every reader)
    for reader, name in (("cc_ingest", "a.warc.wet.gz"), ("cc_warc_ingest", "a.warc.gz"), ("c4_ingest", "c4.json.gz"),
                         ("github_ingest", "github-00000.jsonl.gz"), ("wikipedia_ingest", "enwiki.xml.bz2"),
                         ("books_ingest", "1.txt"), ("books_ingest", "books3-00000.jsonl.zst"), ("arxiv_ingest", "arXiv_src_0001.tar"),
                         ("stackexchange_ingest", "cs.stackexchange.com/Posts.xml")):
        add(Case("empty file", reader, name, lambda d, name=name: [_w(d / name, b"")], quick=reader == "cc_ingest"))
    add(Case("empty file", "c4_ingest", "a .json.gz of an empty stream", lambda d: [_w(d / "c4.json.gz", gzip.compress(b"", mtime=0))]))

    # -- malformed XML, entity bombs, external entities
    add(Case("malformed XML", "wikipedia_ingest", "unclosed tag after 2 pages",
             lambda d: [_w(d / "enwiki-pages-articles.xml", wiki_dump([wiki_page(1), wiki_page(2), b"<page><title>x</titl></page>"]))],
             min_rows=3, kept_min=2, quick=True))
    add(Case("malformed XML", "stackexchange_ingest", "unclosed attribute after 2 questions",
             lambda d: [_w(d / "cs.stackexchange.com" / "Posts.xml", se_rows(se_qa(2) + [b'<row Id="99" Body="oops />\n'], tail=b""))],
             min_rows=3, kept_min=2))
    lol = b"<!DOCTYPE mediawiki [<!ENTITY lol \"lol\">" + b"".join(
        b"<!ENTITY lol%d \"%s\">" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)) + b"]>\n"
    add(Case("entity bomb (billion laughs)", "wikipedia_ingest", "&lol9; in a page's text",
             lambda d: [_w(d / "enwiki-pages-articles.xml", wiki_dump([wiki_page(1), wiki_page(2, b"&lol9;")], doctype=lol))], quick=True))
    add(Case("entity bomb (billion laughs)", "stackexchange_ingest", "&lol9; in a body attribute",
             lambda d: [_w(d / "cs.stackexchange.com" / "Posts.xml", se_rows(se_qa(1) + [se_question(20, b"&lol9;")], doctype=lol.replace(b"mediawiki", b"posts")))]))
    xxe = f'<!DOCTYPE mediawiki [<!ENTITY xxe SYSTEM "file://{s}">]>\n'.encode()
    xxe_dtd = f'<!DOCTYPE mediawiki SYSTEM "file://{s}">\n'.encode()
    xxe_param = f'<!DOCTYPE mediawiki [<!ENTITY % p SYSTEM "file://{s}"> %p;]>\n'.encode()
    for what, dt in (("external general entity", xxe), ("external DTD", xxe_dtd), ("external parameter entity", xxe_param)):
        add(Case("external entities (XXE)", "wikipedia_ingest", what,
                 lambda d, dt=dt: [_w(d / "enwiki-pages-articles.xml", wiki_dump([wiki_page(1), wiki_page(2, PROSE.encode() * 2 + b"&xxe;")], doctype=dt))],
                 secret=True, may_keep=True, quick=what == "external general entity"))
        add(Case("external entities (XXE)", "stackexchange_ingest", what,
                 lambda d, dt=dt: [_w(d / "cs.stackexchange.com" / "Posts.xml", se_rows(se_qa(1) + [se_question(20, b"&xxe;"), se_answer(21, 20)], doctype=dt.replace(b"mediawiki", b"posts")))],
                 secret=True, may_keep=True))

    # -- hostile tars
    evil_paper = lambda name, kind, data=b"x": gzip.compress(tar_bytes([("main.tex", tex(5), "file"), (name, data, kind)]), mtime=0)
    add(Case("tar with ../ and links", "arxiv_ingest", "bulk tar members ../, absolute, symlink, hardlink",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [
                 ("../../escape.gz", paper_gz(7), "file"), (f"{s}.gz", paper_gz(8), "file"),
                 ("2301.00010.gz", None, f"symlink:{s}"), ("2301.00011.gz", None, "hardlink:2301.00001.gz")]))],
             min_rows=6, kept_min=2, secret=True, quick=True))
    add(Case("tar with ../ and links", "arxiv_ingest", "paper tars with ../ member, symlink to the secret, absolute path",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [
                 ("2301.00007.gz", evil_paper("../../../escape.tex", "file"), "file"),
                 ("2301.00008.gz", evil_paper("secret.tex", f"symlink:{s}"), "file"),
                 ("2301.00009.gz", evil_paper(f"{s}", "file"), "file")]))],
             min_rows=5, kept_min=2, secret=True))

    # -- decompression bombs: a few MB on disk, 1.5 GB inside
    add(Case("decompression bomb", "c4_ingest", "1.5 GB line in a .json.gz",
             lambda d: [write_stream(d / "c4-train.00000-of-00001.json.gz", [jsonl([c4_row(0)]), *repeated(b'{"text": "', b"a", BOMB, b'"}\n'), jsonl([c4_row(2)])], "gz")],
             min_rows=3, kept_min=2))
    add(Case("decompression bomb", "github_ingest", "1.5 GB line in a .jsonl.gz",
             lambda d: [write_stream(d / "github-00000.jsonl.gz", [jsonl([github_row(0)]), *repeated(b'{"content": "', b"a", BOMB, b'"}\n'), jsonl([github_row(2)])], "gz")],
             min_rows=3, kept_min=2))
    add(Case("decompression bomb", "books_ingest", "1.5 GB line in a books3 .jsonl.zst",
             lambda d: [write_stream(d / "books3-00000.jsonl.zst", [book_row(0) + b"\n", *repeated(b'{"text": "', b"a", BOMB, b'"}\n'), book_row(2) + b"\n"], "zst")],
             min_rows=3, kept_min=2, quick=True))
    add(Case("decompression bomb", "cc_ingest", "a 1.5 GB record in a .warc.wet.gz",
             lambda d: [write_stream(d / "a.warc.wet.gz", [wet3[0], wet_record(1, b"", payload=b"", content_length=BOMB)[:-4],
                                     *repeated(b"", b"a", BOMB, b"\r\n\r\n"), wet3[2]], "gz")], min_rows=3, kept_min=2))
    add(Case("decompression bomb", "cc_warc_ingest", "a 1.5 GB record in a .warc.gz",
             lambda d: [write_stream(d / "a.warc.gz", [warc3[0], wet_record(1, b"", rtype="response", payload=b"", content_length=BOMB)[:-4],
                                     *repeated(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n", b"a", BOMB - 44, b"\r\n\r\n"), warc3[2]], "gz")],
             min_rows=3, kept_min=2))
    add(Case("decompression bomb", "wikipedia_ingest", "a 1.5 GB page text in a .xml.bz2",
             lambda d: [write_stream(d / "enwiki-pages-articles.xml.bz2", [wiki_dump([wiki_page(1)], tail=b""), wiki_page(2, b"")[:-len(b"</text></revision></page>\n")],
                                     *repeated(b"", b"a", BOMB, b"</text></revision></page>\n"), wiki_page(3), b"</mediawiki>\n"], "bz2")],
             min_rows=2, kept_min=1))
    add(Case("decompression bomb", "arxiv_ingest", "a paper .gz of 1.5 GB in a bulk tar",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", _gzip_stream(repeated(b"", b"a", BOMB, b"")), "file")]))],
             min_rows=3, kept_min=2))
    add(Case("decompression bomb", "arxiv_ingest", "\\input expansion bomb (20 levels x 10 includes)",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, _input_bomb()), "file")]))],
             min_rows=3, kept_min=2))
    add(Case("decompression bomb", "arxiv_ingest", "user macro bomb (a 100 KB \\def used 100,000 times)",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, {"main.tex": _macro_bomb()}), "file")]))],
             min_rows=3, may_keep=True, stage="arxiv_clean"))

    # -- records with missing fields
    add(Case("missing fields", "c4_ingest", "a line without text, one with text null",
             lambda d: [_w(d / "c4-train.00000-of-00001.json.gz", gzip.compress(jsonl([c4_row(0), {"url": "u"}, {"text": None}, c4_row(3)]), mtime=0))],
             min_rows=4, kept_min=2, quick=True))
    add(Case("missing fields", "github_ingest", "rows without content, without repo_name",
             lambda d: [_w(d / "github-00000.jsonl.gz", gzip.compress(jsonl([github_row(0), {"path": "a.py", "content": "x"}, {"repo_name": "a/b", "path": "b.py"}, github_row(3)]), mtime=0))],
             min_rows=4, kept_min=2))
    add(Case("missing fields", "books_ingest", "books3 lines without text, a JSON list",
             lambda d: [_w(d / "books3-00000.jsonl.zst", books3([book_row(0), b'{"meta": {}}', b"[1, 2]", book_row(3)]))],
             min_rows=4, kept_min=2))
    add(Case("missing fields", "wikipedia_ingest", "pages without revision, without title/id",
             lambda d: [_w(d / "enwiki-pages-articles.xml", wiki_dump([wiki_page(1), b"<page><title>No revision</title><ns>0</ns><id>5</id></page>",
                                                                         b"<page><revision><text>bare</text></revision></page>", wiki_page(3)]))],
             min_rows=4, kept_min=2))
    add(Case("missing fields", "stackexchange_ingest", "rows without Id, answer without ParentId, no PostTypeId",
             lambda d: [_w(d / "cs.stackexchange.com" / "Posts.xml", se_rows(se_qa(2) + [b'<row PostTypeId="1" Body="x" />\n',
                                                                                         b'<row Id="77" PostTypeId="2" Body="x" />\n', b'<row Id="78" Body="x" />\n']))],
             min_rows=5, kept_min=2))
    add(Case("missing fields", "cc_ingest", "records without WARC-Record-ID, without Content-Length",
             lambda d: [_w(d / "a.warc.wet", wet3[0] + wet_record(1, PROSE, record_id=False) + wet_record(2, PROSE, content_length=-1) + wet_record(3, PROSE))],
             min_rows=3, kept_min=2))
    add(Case("missing fields", "cc_warc_ingest", "a response without HTTP headers",
             lambda d: [_w(d / "a.warc", warc3[0] + wet_record(1, b"", rtype="response", payload=page_html(1)) + warc3[2])],
             min_rows=3, kept_min=2))
    add(Case("missing fields", "arxiv_ingest", "a paper without any .tex, an empty paper member",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, {"fig.png": b"\x89PNG"}), "file"),
                                                                                 ("2301.00010.gz", b"", "file")]))],
             min_rows=4, kept_min=2))

    # -- non-UTF-8 LaTeX
    latin = "Caf\xe9 na\xefve r\xe9sum\xe9 \u00fcber ".encode("latin-1") * 20 + PROSE.encode()
    add(Case("non-UTF-8 LaTeX", "arxiv_ingest", "Latin-1 main.tex (kept, decoded as Latin-1)",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, {"main.tex": tex(9, latin)}), "file")]))],
             min_rows=3, kept_min=3, may_keep=True, quick=True))
    add(Case("non-UTF-8 LaTeX", "arxiv_ingest", "Shift-JIS \\input file",
             lambda d: [_w(d / "arXiv_src_0001.tar", bulk_tar(good_papers(2) + [("2301.00009.gz", paper_gz(9, {"main.tex": tex(9, b"\\input{jp}\n" + PROSE.encode()),
                                                                                                               "jp.tex": "日本語の論文です。".encode("shift_jis")}), "file")]))],
             min_rows=3, kept_min=3, may_keep=True))
    return cases


def _words(seed: int, n: int) -> str:
    """Prose that compresses like text, not like one repeated paragraph."""
    words = PROSE.replace(".", "").replace(",", "").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(words) + ("." if rng.random() < 0.08 else "") for _ in range(n))


def _big_wet(path: Path, wet3: list[bytes]) -> Path:
    body_len = len(b"Page 1\n") + BIG
    head = wet_record(1, b"", payload=b"", content_length=body_len)[:-4]
    return write_stream(path, [wet3[0], head, *repeated(b"Page 1\n", b"word ", BIG, b"\r\n\r\n"), wet3[2]], None)


def _gzip_stream(pieces) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as fh:
        for piece in pieces:
            fh.write(piece)
    return out.getvalue()


def _input_bomb() -> dict[str, bytes]:
    files = {"main.tex": b"\\documentclass{article}\n\\begin{document}\n\\section{A}\n" + b"\\input{l0}\n" * 10 + b"\\end{document}\n"}
    for level in range(20):
        files[f"l{level}.tex"] = (f"\\input{{l{level + 1}}}\n" * 10).encode()
    files["l20.tex"] = PROSE.encode()
    return files


def _macro_bomb() -> bytes:
    """A 100 KB macro used 100,000 times: 10 GB after one expansion pass."""
    body = PROSE.encode() * 300
    return (b"\\documentclass{article}\n\\def\\b{" + body + b"}\n\\begin{document}\n\\section{A}\n"
            + PROSE.encode() * 3 + b"\n" + b"\\b\n" * 100_000 + b"\\end{document}\n")


# ---------------------------------------------------------------------------------------------
# One case in a child process


def worker(stage_name: str, output: Path, inputs: list[Path], then: str | None) -> dict:
    """Run the stage (and `then` on its output); report counts, reasons, accounting and peak RSS."""
    from pipeline.documents import StageError, read_manifest
    from pipeline.stage import get_stage, run_stage
    import pyarrow.parquet as pq

    result: dict = {"error": None}
    try:
        run_stage(get_stage(stage_name)(), inputs, output)
        if then:
            run_stage(get_stage(then)(), [output], output.parent / then)
            output = output.parent / then
    except StageError as exc:
        result["error"] = f"StageError: {exc}"
    if result["error"] is None:
        manifest = read_manifest(output)
        rows_kept = sum(pq.ParquetFile(output / o["path"]).metadata.num_rows for o in manifest["outputs"])
        reasons: list[str | None] = []
        texts = b""
        for o in manifest["rejected_outputs"]:
            table = pq.read_table(output / o["path"], columns=["reason", "text"])
            reasons += table["reason"].to_pylist()
        for o in manifest["outputs"] + manifest["rejected_outputs"]:
            for batch in pq.ParquetFile(output / o["path"]).iter_batches(columns=["text"], batch_size=64):
                texts = texts[-64:] + "".join(t[:2_000_000] for t in batch.column(0).to_pylist()).encode("utf-8", "surrogatepass")
                if b"TOPSECRET" in texts:
                    result["secret_in_output"] = True
        result |= {
            "docs_in": manifest["docs_in"], "kept": manifest["docs_kept"], "rejected": manifest["docs_rejected"],
            "reasons": manifest["rejected_by_reason"],
            "rows_match": rows_kept == manifest["docs_kept"] and len(reasons) == manifest["docs_rejected"],
            "all_reasons": all(bool(r) for r in reasons),
            "full_reasons": sorted({r for r in reasons if r})[:6],
        }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


# ---------------------------------------------------------------------------------------------
# Watching file access with strace

# Read-only places any Python process touches: the interpreter, its libraries, kernel files.
SYSTEM_ROOTS = ("/usr/", "/lib/", "/lib64/", "/etc/", "/proc/", "/sys/", "/dev/", "/bin/", "/opt/")
_STRACE_LINE = re.compile(r'^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def outside_access(log: Path, case_dir: Path, secret: Path) -> tuple[list[str], bool]:
    """Files opened/created/renamed outside the case folder (reads of the interpreter and system
    excepted) and whether the secret file was ever asked for, even unsuccessfully."""
    allowed_read = [str(case_dir), str(ROOT), sys.prefix, sys.base_prefix, *SYSTEM_ROOTS]
    outside: set[str] = set()
    secret_touched = False
    if not log.exists():
        return ["(no strace log)"], False
    for line in log.read_text(errors="replace").splitlines():
        m = _STRACE_LINE.match(line)
        if not m:
            continue
        call, args, ret = m.group(1), m.group(2), int(m.group(3))
        paths = [p.encode().decode("unicode_escape") for p in _QUOTED.findall(args)]
        if any(str(secret) in p for p in paths):
            secret_touched = True
        if ret < 0:
            continue
        writes = call not in ("open", "openat", "stat", "newfstatat", "access") or bool(re.search(r"O_WRONLY|O_RDWR|O_CREAT", args))
        for p in paths[:2]:
            if not p.startswith("/"):
                p = str(case_dir / p)  # the child runs in the case folder
            p = os.path.normpath(p)
            if p in ("/dev/null", "/dev/urandom") or p.startswith("/dev/shm/"):
                continue
            inside = p == str(case_dir) or p.startswith(str(case_dir) + "/")
            if writes and not inside:
                outside.add(f"write {p}")
            elif not writes and not inside and not any(p == r.rstrip("/") or p.startswith(r.rstrip("/") + "/") for r in allowed_read):
                outside.add(f"read {p}")
    return sorted(outside), secret_touched


def run_case(case: Case, work: Path, secret: Path, timeout: float, use_strace: bool) -> dict:
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9]+", "-", case.id).strip("-")[:60]
    case_dir = work / f"{slug}-{hashlib.sha1(case.id.encode()).hexdigest()[:8]}"
    shutil.rmtree(case_dir, ignore_errors=True)
    (case_dir / "tmp").mkdir(parents=True)
    started = time.time()
    inputs = case.make(case_dir / "in")
    make_s = time.time() - started
    out = case_dir / "build" / case.reader
    cmd = [sys.executable, str(Path(__file__).resolve()), *(["--then", case.stage] if case.stage else []),
           "--worker", case.reader, str(out), *[str(p) for p in inputs]]
    log = case_dir / "strace.log"
    if use_strace:
        cmd = ["strace", "-f", "-qq", "-o", str(log), "-e",
               "trace=open,openat,creat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,symlink,symlinkat,link,linkat,truncate",
               *cmd]
    env = os.environ | {"TMPDIR": str(case_dir / "tmp"), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}

    def limit_memory() -> None:  # a runaway allocation fails in the child instead of swapping the host
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    started = time.time()
    verdict: dict = {"case": case.id, "kind": case.kind, "reader": case.reader + (f" → {case.stage}" if case.stage else ""),
                     "note": case.note, "input_bytes": sum(p.stat().st_size for p in inputs)}
    try:
        proc = subprocess.run(cmd, cwd=case_dir, env=env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit_memory)
        verdict["wall_s"] = round(time.time() - started, 1)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            verdict |= {"status": "CRASH", "detail": tail[:300]}
        else:
            verdict |= json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        verdict |= {"status": "HANG", "detail": f"no result after {timeout:.0f} s", "wall_s": timeout}
    if use_strace:
        verdict["outside"], verdict["secret_touched"] = outside_access(log, case_dir, secret)
    verdict["make_s"] = round(make_s, 1)
    _judge(case, verdict)
    shutil.rmtree(case_dir, ignore_errors=True)  # bombs and 100 MB lines: do not keep them around
    return verdict


def _judge(case: Case, v: dict) -> None:
    problems: list[str] = []
    if "status" in v:
        return
    if v.get("error"):
        # A clear StageError is an acceptable outcome only when nothing else could be read.
        if case.kept_min:
            problems.append("stopped with an error")
    else:
        if v["docs_in"] != v["kept"] + v["rejected"] or not v["rows_match"]:
            problems.append("LOST: counts do not reconcile")
        if not v["all_reasons"]:
            problems.append("rejected row without reason")
        if v["docs_in"] < case.min_rows:
            problems.append(f"LOST: {v['docs_in']} rows < {case.min_rows} planted")
        if v["kept"] < case.kept_min:
            problems.append(f"LOST: {v['kept']} kept < {case.kept_min} intact")
        if not case.may_keep and v["rejected"] == 0:
            problems.append("the bad input was not rejected")
        if v.get("secret_in_output"):
            problems.append("LEAK: the secret file's text is in the output")
    if v.get("peak_rss_mb", 0) > case.rss_mb:
        problems.append(f"MEMORY: peak RSS {v['peak_rss_mb']} MB > {case.rss_mb} MB")
    if v.get("secret_touched"):
        problems.append("LEAK: the secret file was opened")
    if v.get("outside"):
        problems.append("outside the build folder: " + ", ".join(v["outside"][:3]))
    v["status"] = "ok" if not problems else "FAIL"
    v["detail"] = "; ".join(problems)


def outcome(v: dict) -> str:
    if v.get("error"):
        return v["error"][:120]
    if "docs_in" not in v:
        return v.get("detail", "")
    reasons = ", ".join(v.get("full_reasons") or []) or "-"
    return f"{v['kept']} kept, {v['rejected']} rejected ({reasons[:160]})"


# ---------------------------------------------------------------------------------------------
# Kill -9 campaign


def _build_cmd(spec: str, samples: Path, out: Path) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "llama-recipe"), "build", "--spec", spec, "--inputs", str(samples),
            "--out", str(out)]


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    """One local Prefect server for all the builds of the campaign (each build would otherwise
    start an ephemeral one, ~12 s): on 127.0.0.1, a free port, its own home, its own session so
    that killing a build's process group leaves it running."""
    import socket

    from flows.server import QUIET_ENV, api_url, is_healthy

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | QUIET_ENV | {"PREFECT_HOME": str(home)}
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = api_url("127.0.0.1", port)
    deadline = time.time() + 120
    while not is_healthy(url):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not start; see {home / 'server.log'}")
        time.sleep(0.5)
    return proc, url


def stop_prefect_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


WALL_KEYS = ("wall_time_s", "prepare_wall_time_s")


def _strip_wall(value):
    if isinstance(value, dict):
        return {k: _strip_wall(v) for k, v in value.items() if k not in WALL_KEYS and not k.endswith("_wall_time_s")}
    if isinstance(value, list):
        return [_strip_wall(v) for v in value]
    return value


def compare_builds(ref: Path, other: Path) -> dict:
    """Manifests (bytes, and without wall times) and token shards of two builds."""
    manifests = sorted(p.relative_to(ref) for p in ref.rglob("manifest.json"))
    other_manifests = sorted(p.relative_to(other) for p in other.rglob("manifest.json"))
    result = {"manifests": len(manifests), "same_set": manifests == other_manifests, "bytes_differ": [], "differ": []}
    for rel in manifests:
        a, b = ref / rel, other / rel
        if not b.exists():
            result["differ"].append(str(rel))
            continue
        if a.read_bytes() != b.read_bytes():
            result["bytes_differ"].append(str(rel))
            if _strip_wall(json.loads(a.read_text())) != _strip_wall(json.loads(b.read_text())):
                result["differ"].append(str(rel))
    shards = sorted(p.relative_to(ref) for p in (ref / "tokens").rglob("shard-*"))
    result["shards"] = len(shards)
    result["shards_differ"] = [str(s) for s in shards if not (other / s).exists() or (ref / s).read_bytes() != (other / s).read_bytes()]
    result["ok"] = result["same_set"] and not result["differ"] and not result["shards_differ"] and result["shards"] > 0
    return result


def kill_campaign(work: Path, kills: int, seed: int = 0, spec: str = "demo", points: list[float] | None = None,
                  log=print, check_determinism: bool = True) -> dict:
    """A reference build, then per kill point a fresh build killed (SIGKILL to its whole process
    group) after that many seconds and run again to completion, compared with the reference and
    checked with the ledger. `points`: fractions of the reference's wall time (default: `kills`
    seeded random ones)."""
    from pipeline.ledger import verify_build

    work.mkdir(parents=True, exist_ok=True)
    samples = work / "samples"
    if not (samples / "SAMPLES.json").exists():
        subprocess.run([str(ROOT / ".venv" / "bin" / "llama-recipe"), "samples", "--out", str(samples), "--scale", "0.05"],
                       check=True, capture_output=True)
    server, url = start_prefect_server(work / "prefect")
    env = os.environ | {"PREFECT_API_URL": url}
    try:
        ref = work / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        started = time.time()
        proc = subprocess.run(_build_cmd(spec, samples, ref), capture_output=True, text=True, cwd=work,
                              env=env | {"PYTHONHASHSEED": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"reference build failed: {proc.stderr[-2000:]}")
        first_s = ref_s = time.time() - started
        determinism = None
        # A second uninterrupted build: the same bytes without any kill (determinism alone), and
        # the duration the kill points are drawn in (the first build also warms the server up).
        if check_determinism:
            again = work / "reference-again"
            shutil.rmtree(again, ignore_errors=True)
            started = time.time()
            subprocess.run(_build_cmd(spec, samples, again), capture_output=True, text=True, cwd=work,
                           env=env | {"PYTHONHASHSEED": "2"}, check=True)  # another set/dict order
            ref_s = time.time() - started
            determinism = compare_builds(ref, again)
            shutil.rmtree(again, ignore_errors=True)
            log(f"reference builds: {first_s:.1f} s and {ref_s:.1f} s; identical: {determinism['ok'] and not determinism['bytes_differ']}")
        rng = random.Random(seed)
        fractions = points if points is not None else sorted(rng.uniform(0.1, 0.95) for _ in range(kills))
        rows = []
        for n, fraction in enumerate(fractions):
            delay = fraction * ref_s
            out = work / f"killed-{n}"
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.Popen(_build_cmd(spec, samples, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    cwd=work, env=env, start_new_session=True)
            time.sleep(delay)
            finished_first = proc.poll() is not None
            if not finished_first:  # the CLI and every stage worker it forked
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            complete = sorted(str(p.parent.relative_to(out)) for p in out.rglob("manifest.json"))
            tmp_left = sorted(p.name for p in out.rglob(".*.tmp-*"))
            # Under its final name a folder is always complete: a half stage only ever has a dot name.
            half = [str(p.relative_to(out)) for p in [*(out / "stages").glob("*"), *(out / n for n in ("tokenizer", "mixture", "tokens"))]
                    if p.is_dir() and not p.name.startswith(".") and not (p / "manifest.json").exists()]
            rerun = subprocess.run(_build_cmd(spec, samples, out), capture_output=True, text=True, cwd=work, env=env)
            row = {"kill_at_s": round(delay, 1), "finished_before_kill": finished_first, "complete_at_kill": len(complete),
                   "tmp_at_kill": tmp_left, "half_stage_at_kill": half, "rerun_rc": rerun.returncode}
            if rerun.returncode == 0:
                row |= compare_builds(ref, out)
                ledger = verify_build(out)
                row["verify"] = "ok" if ledger.ok else "; ".join(ledger.problems[:3])
                row["ok"] = row["ok"] and ledger.ok and not half
            else:
                row |= {"ok": False, "detail": _last_line(rerun.stderr)}
            rows.append(row)
            log(f"kill {n + 1}/{len(fractions)} at {delay:.1f} s: {len(complete)} folders complete, temporary: {tmp_left or 'none'}; "
                f"rerun rc {rerun.returncode}; " + ("identical, verify ok" if row["ok"] else "DIFFERENT: " + json.dumps(
                    {k: row.get(k) for k in ("differ", "bytes_differ", "shards_differ", "verify", "detail")})))
            shutil.rmtree(out, ignore_errors=True)
    finally:
        stop_prefect_server(server)
    return {"reference_s": round(ref_s, 1), "spec": spec, "rows": rows, "determinism": determinism}


# ---------------------------------------------------------------------------------------------
# Disk full and permissions


def _in_private_mount(target: Path, options: bytes, read_only: bool) -> Callable[[], None]:
    """A preexec_fn: a mount namespace of the child's own, with a tmpfs on `target` (nothing is
    mounted for anyone else, and it vanishes with the child). Needs CAP_SYS_ADMIN."""
    def setup() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clone_newns, ms_rdonly, ms_rec, ms_private = 0x00020000, 1, 0x4000, 0x40000
        if libc.unshare(clone_newns) != 0 or libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
            raise OSError(ctypes.get_errno(), "unshare/mount --make-rprivate failed")
        if libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", ms_rdonly if read_only else 0, options) != 0:
            raise OSError(ctypes.get_errno(), f"mount tmpfs on {target} failed")
    return setup


def disk_and_permission_checks(work: Path) -> list[dict]:
    """The output folder on a read-only file system, on a full one (a 512 KiB tmpfs), and past a
    file-size limit (RLIMIT_FSIZE, EFBIG): each must end in a clear message naming the cause, with
    no folder left that looks complete. The tmpfs are mounted in the stage's own mount namespace
    (root in a container); where that is not permitted the row says so."""
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    data = work / "in"
    _w(data / "c4-train.00000-of-00001.json.gz", gzip.compress(jsonl([c4_row(i, _words(i, 1500)) for i in range(2000)]), mtime=0))
    cli = str(ROOT / ".venv" / "bin" / "llama-recipe")

    def small_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing

    for case, folder, preexec in (
        ("read-only file system (tmpfs mounted ro)", "readonly", lambda t: _in_private_mount(t, b"size=1m", True)),
        ("disk full (512 KiB tmpfs)", "full", lambda t: _in_private_mount(t, b"size=512k", False)),
        ("file size limit (RLIMIT_FSIZE 256 KiB, EFBIG)", "fsize", lambda t: small_file_limit),
    ):
        target = work / folder
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        output = target / "c4_ingest"
        try:
            proc = subprocess.run([cli, "run-stage", "c4_ingest", "--input", str(data), "--output", str(output)],
                                  capture_output=True, text=True, preexec_fn=preexec(target))
        except (OSError, subprocess.SubprocessError) as exc:
            rows.append({"case": case, "rc": "-", "message": f"not run: {exc}", "complete_folder_left": False})
            continue
        rows.append({"case": case, "rc": proc.returncode, "message": _last_line(proc.stderr),
                     "traceback": "Traceback" in proc.stderr, "complete_folder_left": (output / "manifest.json").exists()})
    return rows


def _last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


# ---------------------------------------------------------------------------------------------
# Report


LIMITS = [
    "- Memory caps per record: 64 MiB per JSON line (C4, GitHub, Books3) and per WARC record body (`line_too_long`, "
    "`record_too_large`: read past in chunks, never held); libxml2's 10 MB per text node for Wikipedia (no `huge_tree`); "
    "1 MB per StackExchange body; arXiv's `max_member_bytes` / `max_paper_bytes`, also applied to `\\input` "
    "expansion (at most 10,000 file expansions) and to each macro-expansion pass.",
    "- Read whole, so memory is about 10x the input (they are plain files, not compressed, so no bomb): a "
    "Gutenberg .txt, and the longest line of a StackExchange Posts.xml (libxml2 buffers a line; the 100 MB "
    "body row above peaks at ~0.5 GB).",
    "- XML that breaks (malformed, an entity bomb, a text node over 10 MB, an undefined entity in an "
    "attribute) ends that file at the break: the pages/posts before it come out, the rest is one "
    "`malformed_xml:<line>` row. libxml2 itself refuses the billion laughs (its amplification limit).",
    "- A gzip stream corrupted mid-member (C4/GitHub JSON lines) inflates to garbage until zlib's CRC or "
    "an invalid code notices: those lines come out as `unreadable_record:invalid json` (or, rarely, as kept "
    "text if they happen to be valid JSON), then one `unreadable_file`/`truncated_file` row.",
    "- Invalid UTF-8 and NUL bytes inside a page that is otherwise readable are kept where the format "
    "allows (WET/WARC text under cc_ingest's 1% replacement threshold, Gutenberg and arXiv fall back to "
    "Latin-1, JSON `\\u0000`); in XML and raw JSON they are a rejected row.",
    "- Scratch files (StackExchange's SQLite table) go to $TMPDIR; the campaign points it inside the case "
    "folder, so strace sees no write outside.",
]


def render(results: list[dict], kills: dict | None, disk: list[dict] | None, command: str,
           fuzz_section: str | None = None) -> str:
    out = ["# Reliability campaign", "",
           f"Produced by `{command}` (scripts/reliability.py; rerun it to refresh this file). "
           "Each bad input runs through its reader's stage in a child process under strace, with a "
           "wall-clock limit and an 8 GiB address-space limit. **ok** means: no crash or hang, "
           "docs_in = kept + rejected and the Parquet parts hold exactly those rows, every rejected "
           "row has a reason, every intact record planted beside the bad one came out, the bad "
           "one is a rejected row (unless noted as kept), peak RSS under the bound, and no file "
           "outside the case folder read or written (strace; the interpreter, its libraries and "
           "/proc, /sys, /dev, /etc excepted; for XXE and tar cases the secret file outside the "
           "folder must never even be opened).", ""]
    ok = sum(r["status"] == "ok" for r in results)
    if results:
        out += [f"**Bad inputs: {ok}/{len(results)} ok.**", "",
                "| input kind | reader | bad input | outcome (kept, rejected, reasons / error) | peak RSS MB | s | status |",
                "|---|---|---|---|---:|---:|---|"]
        for r in results:
            status = r["status"] + (f": {r['detail']}" if r.get("detail") and r["status"] != "ok" else "")
            out.append(f"| {r['kind']} | {r['reader']} | {r['note']} | {outcome(r).replace('|', '/')} | "
                       f"{r.get('peak_rss_mb', '-')} | {r.get('wall_s', '-')} | {status.replace('|', '/')} |")
        out.append("")
    if kills:
        n_ok = sum(r["ok"] for r in kills["rows"])
        out += ["## kill -9 during a corpus build", "",
                f"`llama-recipe build --spec {kills['spec']}` on `llama-recipe samples --scale 0.05` (one local Prefect "
                f"server for all builds): an uninterrupted build takes {kills['reference_s']} s, and two of them "
                f"(PYTHONHASHSEED 1 and 2) give {'the same bytes' if kills['determinism']['ok'] and not kills['determinism']['bytes_differ'] else 'DIFFERENT bytes: ' + ', '.join(kills['determinism']['bytes_differ'] + kills['determinism']['shards_differ'])}. "
                "Each row starts a fresh build, "
                "kills its whole process group with SIGKILL after the given delay, then runs the same build again "
                "to completion and compares it with the reference: every manifest.json byte for byte (wall times "
                "live in timing.json beside it) and every token shard (.bin and .idx), and runs "
                f"`llama-recipe verify` on it. **{n_ok}/{len(kills['rows'])} identical and verified.**", "",
                "| kill at s | folders complete at kill | temporary (dot) folders at kill | incomplete folder under a final name | rerun | manifests byte-identical | token shards identical | verify |",
                "|---:|---:|---|---|---|---|---|---|"]
        for r in kills["rows"]:
            if r["rerun_rc"] != 0:
                out.append(f"| {r['kill_at_s']} | {r['complete_at_kill']} | {', '.join(r['tmp_at_kill']) or '-'} | {', '.join(r['half_stage_at_kill']) or 'none'} | FAILED: {r.get('detail', '')} | | | |")
                continue
            same = "yes" if not r["bytes_differ"] else ("only wall times differ: " if not r["differ"] else "NO: ") + ", ".join(r["bytes_differ"][:3])
            out.append(f"| {r['kill_at_s']}{' (build had finished)' if r['finished_before_kill'] else ''} | {r['complete_at_kill']} | "
                       f"{', '.join(r['tmp_at_kill']) or '-'} | {', '.join(r['half_stage_at_kill']) or 'none'} | rc 0 | {same} ({r['manifests']}) | "
                       f"{'yes' if not r['shards_differ'] else 'NO'} ({r['shards']}) | {r['verify']} |")
        out.append("")
    if disk:
        out += ["## Disk full and permissions", "",
                "`llama-recipe run-stage c4_ingest` writing into a tmpfs mounted read-only, a 512 KiB tmpfs, and under "
                "a 256 KiB file-size limit (each in the stage's own mount namespace).", "",
                "| case | exit code | message | traceback | complete folder left |", "|---|---:|---|---|---|"]
        for r in disk:
            out.append(f"| {r['case']} | {r['rc']} | `{r['message']}` | {'yes' if r.get('traceback') else 'no'} | "
                       f"{'yes' if r['complete_folder_left'] else 'no'} |")
        out.append("")
    if fuzz_section:
        out += [fuzz_section, ""]
    out += ["## Limits", "", *LIMITS, ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--then", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="the reduced set (make test)")
    parser.add_argument("--only", help="comma-separated substrings of input kinds or readers")
    parser.add_argument("--kills", type=int, default=10, help="kill points (0: none)")
    parser.add_argument("--spec", default="demo", help="build spec of the kill campaign")
    parser.add_argument("--no-inputs", action="store_true", help="skip the bad-input cases")
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--fuzz", type=int, default=0, help="also fuzz every reader with this many mutated inputs "
                        "per seed file (scripts/fuzz.py; 2000 for the full campaign)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args()
    if args.worker:
        stage, output, *inputs = args.worker
        print(json.dumps(worker(stage, Path(output), [Path(p) for p in inputs], args.then)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    secret_dir = Path(tempfile.mkdtemp(prefix="reliability-secret-"))  # outside every case folder
    secret = secret_dir / "secret.txt"
    secret.write_text("TOPSECRET\n")
    use_strace = not args.no_strace and shutil.which("strace") is not None
    results = []
    if not args.no_inputs:
        cases = build_cases(secret)
        if args.quick:
            cases = [c for c in cases if c.quick]
        if args.only:
            keys = [k.strip().lower() for k in args.only.split(",")]
            cases = [c for c in cases if any(k in c.id.lower() for k in keys)]
        for case in cases:
            v = run_case(case, work / "cases", secret, args.timeout, use_strace)
            results.append(v)
            print(f"{v['status']:<5} {case.id}: {outcome(v)}  [{v.get('peak_rss_mb', '-')} MB, {v.get('wall_s')} s]"
                  + (f"  {v['detail']}" if v.get("detail") and v["status"] != "ok" else ""), flush=True)
    kills = kill_campaign(work / "kills", args.kills, spec=args.spec) if args.kills else None
    disk = None if args.quick or args.only else disk_and_permission_checks(work / "disk")
    if disk:
        for row in disk:
            print(f"{row['case']}: rc {row['rc']}: {row['message']}")
    fuzz_section = None
    if args.fuzz:
        import fuzz

        fuzz_rows = fuzz.campaign(args.fuzz, work=work / "fuzz")
        fuzz_section = fuzz.render(fuzz_rows, f"python scripts/reliability.py --fuzz {args.fuzz}")
    shutil.rmtree(secret_dir, ignore_errors=True)
    command = "python scripts/reliability.py" + (" --quick" if args.quick else "") + (f" --kills {args.kills}" if args.kills != 10 else "")
    # The outside folder's random name would make every run's table differ: name it by its role.
    text = render(results, kills, disk, command, fuzz_section).replace(str(secret_dir), "<outside folder>")
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(r["status"] != "ok" for r in results) + (sum(not r["ok"] for r in kills["rows"]) if kills else 0)
    failed += sum(r["crashes"] + r["hangs"] + r["fails"] for r in fuzz_rows) if args.fuzz else 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
