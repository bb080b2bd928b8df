"""cc_ingest: Common Crawl WET files -> Documents (the first box of CCNet, LLaMA §2).

Reads WET files (gzip with one member per record, as Common Crawl ships them, or plain) with
fastwarc. Only `conversion` records are pages; warcinfo and any other record types are skipped
and not counted. The page is laid out as cc_net's `process_wet_file.parse_doc` does it: every line
stripped, empty lines dropped, the first line is the page title (kept in meta["title"]), the rest
is the text; pages shorter than cc_net's `min_len` (300 characters) are rejected.

Broken input never stops the build. fastwarc, as of 2.0, does not report every defect itself, so
the reader checks each one, rejects one row per defect ("unreadable_record:<why>", id
"cc/<file>@<offset>") and reads on from the next record it can find:
  - a record whose body is shorter than its Content-Length: fastwarc would otherwise swallow the
    records that follow into its body;
  - in a plain file, bytes after the declared body that are not blank lines + the next record
    (fastwarc's quirks mode, needed for LF-only files, would skip to the next record silently);
    by default (trust_content_length: false) a wrong Content-Length is not rejected but
    recovered as cc_net reads such records: in a plain file the record runs to the next
    "WARC/1.x" line (or the end of the file), in a gzip file to the end of its member; kept with
    meta["content_length_mismatch"], counted in stats.records_recovered. Still rejected: a plain
    file's last record whose declared body runs past the end of the file (a cut file), a cut or
    corrupt gzip member, a record without Content-Length;
  - a parse error (bad header, gzip data error): resynchronize on the next gzip member or the next
    "WARC/1." line;
  - a gzip file whose last member is truncated: fastwarc stops silently there, so the members
    from the last record it returned to the end of the file are checked with zlib;
  - a record body over MAX_RECORD_BYTES ("record_too_large": a gzip bomb or an absurd length),
    read past without being held;
  - a non-empty file with no WARC record at all, and an empty file ("empty_file").
A WARC-Record-ID seen twice in one file (a malformed file) gets "@<file>:<offset>" appended.
Record offsets (meta["offset"], ids of broken rows) are fastwarc's `stream_pos`: the byte offset of
the record's gzip member in CC's layout, of the record itself in a plain file.
meta of every page: url (WARC-Target-URI), date (WARC-Date), digest (WARC-Block-Digest), length
(bytes of the record block), title, file, offset; cc_language when CC identified one.

cc_warc_ingest (CCWarcIngest, same reader) takes WARC files instead and turns their HTML `response`
records into the same layout with resiliparse (pipeline/commoncrawl/html.py): title, then text lines
as close to CC's own WET conversion as we measured we can get.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.commoncrawl.html import HTML_TYPES, decode_html, html_to_text, parse_http_response
from pipeline.documents import Document, StageError
from pipeline.stage import ReaderConfig, Stage

GZIP_MAGIC = b"\x1f\x8b\x08"
# Not from cc_net: the most of one record's body a reader holds, so a record that inflates to
# gigabytes (a gzip bomb, an absurd Content-Length) is one rejected row ("record_too_large") and
# fastwarc streams past the rest. Common Crawl truncates its captures at 1 MiB (WARC-Truncated).
MAX_RECORD_BYTES = 64 << 20
WARC_VERSION_RE = re.compile(rb"WARC/1\.[01]\r?\n")
_UUID_RE = re.compile(r"urn:uuid:([0-9a-fA-F-]+)")


class IngestConfig(ReaderConfig):
    # cc_net CCShardReader(min_len=300): pages with fewer characters (after the title) are dropped.
    min_length: int = 300
    # Pages whose bytes are not UTF-8 (the WET text is UTF-8 by spec): reject when more than this
    # fraction of the decoded characters are U+FFFD replacements. Our choice; cc_net assumes UTF-8.
    max_replacement_fraction: float = 0.01
    # False (cc_net): a plain WET record whose Content-Length disagrees with the record boundary is
    # read up to the next "WARC/1.x" line, as cc_net's line-based reader (process_wet_file.
    # group_by_docs) reads every record, and kept with meta["content_length_mismatch"] = True; the
    # manifest counts them (stats.records_recovered). A last record whose declared body runs past
    # the end of the file is cut short, not mislabelled: still rejected. True: WARC 1.0 makes the
    # length authoritative, every such record is "unreadable_record:content_length_mismatch".
    # gzip files (CC's layout, one member per record): the record is its whole member, whether
    # the length was too large (the body ran past the member) or too small (fastwarc fails on the
    # rest of the member, so each record is held until the next one parses).
    trust_content_length: bool = False


class CCIngest(Stage):
    name = "cc_ingest"
    source = "cc"
    reads = "raw"
    raw_patterns = ("*.warc.wet.gz", "*.warc.wet", "*.wet.gz")
    Config = IngestConfig
    description = "Common Crawl WET pages -> Documents (cc_net layout, min length 300)"
    parallel_parts = True  # one WET file per part, read on its own
    remote_parts = True  # nothing prepared: a worker anywhere reads its file
    page_record_type = WarcRecordType.conversion  # the records that are pages; others are skipped

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{path}: input file not found")
        size = path.stat().st_size
        if size == 0:
            yield self._broken(path, 0, "empty_file")
            return
        seen_ids: set[str] = set()  # per file: CC record ids are unique, a repeat is a malformed file
        reported: set[int] = set()
        gzipped = _is_gzip(path)
        records_read = 0
        with open(path, "rb") as fh:
            start: int | None = 0
            last_pos = 0
            last_member = 0
            in_broken_region = False  # a failed resync attempt is the same defect, not a new row
            # gzip, recovering: a record is held until the next one parses. A Content-Length that is
            # too small shows only there (fastwarc then fails on the rest of the member), and the
            # held record is then read back from its whole gzip member instead.
            hold = gzipped and not self.config.trust_content_length
            held: tuple[int, Any, bytes] | None = None  # (pos, record, body)
            while start is not None:
                fh.seek(start)
                read_any = False
                resync_from = None
                try:
                    # quirks_mode accepts LF-only line endings (hand-made files such as cc_net's
                    # test sample) but resyncs silently after a wrong Content-Length, so it is
                    # only used on plain files, where `_body_end` checks each record boundary.
                    for record in ArchiveIterator(fh, parse_http=False, quirks_mode=not gzipped):
                        if held is not None:
                            yield from self._held_out(path, held, seen_ids)
                            held = None
                        pos = last_pos = record.stream_pos
                        if gzipped and os.pread(fh.fileno(), 3, pos) == GZIP_MAGIC:
                            last_member = pos  # a record that starts a gzip member (CC's layout)
                        if records_read == 0 and pos != start:
                            reported.add(start)
                            yield self._broken(path, start, "unreadable_record:not_a_warc_record")
                        records_read += 1
                        body = record.reader.read(MAX_RECORD_BYTES + 1) if record.reader is not None else b""
                        declared = _int_or_none(record.headers.get("Content-Length"))
                        why = None
                        if len(body) > MAX_RECORD_BYTES:
                            # The framing is sound: report it and read on at the next record.
                            reported.add(pos)
                            yield self._broken(path, pos, f"unreadable_record:record_too_large ({declared} bytes)")
                            read_any = True
                            continue
                        if record.record_id is None:
                            why = "no_record_header"
                        elif declared is None or len(body) < declared:
                            why = "content_length_mismatch"
                        elif not gzipped and not _ends_cleanly(fh, _body_end(fh, pos, declared)):
                            why = "content_length_mismatch"
                        if why == "content_length_mismatch" and gzipped and not self.config.trust_content_length:
                            # CC's layout: one gzip member per record, so the member's end is the
                            # record's end (a record that does not start a member, or whose member
                            # is cut, stays rejected below).
                            member = _gzip_member(fh, pos) if pos == last_member and declared is not None else None
                            if member is not None:
                                data, member_end = member
                                head_end = _header_end(data)
                                if head_end is not None:
                                    self.tally("records_recovered")
                                    if record.record_type == self.page_record_type:
                                        doc = self._page(path, pos, record, data[head_end:].rstrip(b"\r\n"), seen_ids)
                                        doc.meta["content_length_mismatch"] = True
                                        yield doc
                                    resync_from = member_end
                                    break
                        if why == "content_length_mismatch" and not gzipped and not self.config.trust_content_length:
                            # cc_net's own reader splits on "WARC/1.0" lines and never reads the
                            # length; do the same for this record and keep it, flagged. Unless no
                            # record follows and the declared body runs past the end of the file
                            # (a cut file: the text is incomplete), or there is no Content-Length
                            # at all (cc_net's parse_doc cannot read that header either).
                            next_start = _next_record_start(fh, pos + 1, gzipped)
                            begin = _body_end(fh, pos, 0)
                            end = next_start if next_start is not None else os.fstat(fh.fileno()).st_size
                            # (headers that run into the next record, or a body past the cap: not
                            # a record that can be read back; rejected below)
                            if (declared is not None and (next_start is not None or len(body) >= declared)
                                    and begin <= end and end - begin <= MAX_RECORD_BYTES):
                                body = _read_between(fh, begin, next_start)
                                self.tally("records_recovered")
                                if record.record_type == self.page_record_type:
                                    doc = self._page(path, pos, record, body, seen_ids)
                                    doc.meta["content_length_mismatch"] = True
                                    yield doc
                                resync_from = pos + 1
                                break
                        if why:
                            if pos not in reported:
                                reported.add(pos)
                                yield self._broken(path, pos, f"unreadable_record:{why}")
                            resync_from = pos + 1
                            break
                        read_any = True
                        in_broken_region = False
                        if hold and pos == last_member:
                            held = (pos, record, body)
                        elif record.record_type == self.page_record_type:
                            yield self._page(path, pos, record, body, seen_ids)
                except OSError as exc:  # fastwarc reports parse and decompression errors as OSError
                    if held is not None and held[0] == last_pos:
                        # fastwarc failed right after the held record, inside or past its member:
                        # when the member holds more than the declared length, the length was too
                        # small; the record is the whole member, as cc_net would read it.
                        recovered = self._recover_member(path, held, seen_ids)
                        if recovered is not None:
                            held = None
                            member_end, docs = recovered
                            yield from docs
                            start = _next_record_start(fh, member_end, gzipped)
                            continue
                    if held is not None:
                        yield from self._held_out(path, held, seen_ids)
                        held = None
                    error_at = last_pos if read_any else start
                    if not (in_broken_region and not read_any) and error_at not in reported:
                        reported.add(error_at)
                        yield self._broken(path, error_at, f"unreadable_record:{_reason_of(exc)}")
                    in_broken_region = True
                    resync_from = error_at + 1
                if held is not None:
                    yield from self._held_out(path, held, seen_ids)
                    held = None
                start = _next_record_start(fh, resync_from, gzipped) if resync_from is not None else None
        if records_read == 0 and not reported:
            reported.add(0)  # (a truncated gzip member at 0 is this same defect: one row, one id)
            yield self._broken(path, 0, "unreadable_record:not_a_warc_record")
        if gzipped:
            # From the last member boundary seen: cheap for CC's one-member-per-record files; a file
            # compressed as a single member is checked from its start.
            broken_at = _truncated_gzip_member(path, last_member)
            # (not when a broken record inside that member was already reported)
            if broken_at is not None and not any(offset >= broken_at for offset in reported):
                yield self._broken(path, broken_at, "unreadable_record:truncated_gzip")

    def _held_out(self, path: Path, held: tuple, seen_ids: set[str]) -> Iterator[Document]:
        pos, record, body = held
        if record.record_type == self.page_record_type:
            yield self._page(path, pos, record, body, seen_ids)

    def _recover_member(self, path: Path, held: tuple, seen_ids: set[str]) -> tuple[int, list[Document]] | None:
        """The held record read back from its whole gzip member, when that member is whole and
        holds more than the record's headers and declared body: (member end, its documents)."""
        pos, record, body = held
        with open(path, "rb") as fh:
            member = _gzip_member(fh, pos)
        if member is None:
            return None
        data, member_end = member
        head_end = _header_end(data)
        if head_end is None or len(data[head_end:].rstrip(b"\r\n")) <= len(body):
            return None
        self.tally("records_recovered")
        docs = []
        if record.record_type == self.page_record_type:
            doc = self._page(path, pos, record, data[head_end:].rstrip(b"\r\n"), seen_ids)
            doc.meta["content_length_mismatch"] = True
            docs.append(doc)
        return member_end, docs

    def final_stats(self) -> dict:
        # records whose Content-Length was wrong, read up to the next record instead (pages among
        # them are kept or rejected like any page; other record types are skipped as usual)
        return {"records_recovered": int(self.counters.get("records_recovered", 0))}

    # -- documents
    def _page(self, path: Path, pos: int, record, body: bytes, seen_ids: set[str]) -> Document:
        headers = record.headers
        match = _UUID_RE.search(record.record_id or "")
        native = match.group(1).lower() if match else (record.record_id or "").strip("<>")
        doc_id = f"cc/{native}"
        if doc_id in seen_ids:
            doc_id = f"cc/{native}@{path.name}:{pos}"
        seen_ids.add(doc_id)
        meta = {
            # wget writes "WARC-Target-URI: <https://...>" (the WARC 1.1 draft's angle brackets)
            "url": (headers.get("WARC-Target-URI") or "").strip().strip("<>") or None,
            "date": headers.get("WARC-Date"),
            "digest": headers.get("WARC-Block-Digest"),
            "length": len(body),
            "title": "",
            "file": path.name,
            "offset": pos,
        }
        language = headers.get("WARC-Identified-Content-Language")
        if language:
            meta["cc_language"] = language  # CC's own CLD2 guess, kept for comparison with cc_langid
        doc = Document(id=doc_id, text="", source="cc", meta=meta)
        title, lines, reason = self._title_and_lines(record, body, doc)
        doc.meta["title"] = title
        doc.text = "\n".join(lines)
        if reason:
            return doc.reject(reason)
        if len(doc.text) < self.config.min_length:
            return doc.reject("too_short")
        return doc

    def _title_and_lines(self, record, body: bytes, doc: Document) -> tuple[str, list[str], str | None]:
        """A WET conversion record: UTF-8 text, laid out as cc_net's parse_doc reads it (every line
        stripped, empty lines dropped, the first line is the title)."""
        raw = body.decode("utf-8", errors="replace")
        lines = [line.strip() for line in raw.split("\n")]
        lines = [line for line in lines if line]
        title, lines = (lines[0], lines[1:]) if lines else ("", [])
        if raw and raw.count("\ufffd") / len(raw) > self.config.max_replacement_fraction:
            return title, lines, "invalid_utf8"
        return title, lines, None

    @staticmethod
    def _broken(path: Path, offset: int, reason: str) -> Document:
        return Document(
            id=f"cc/{path.name}@{offset}", text="", source="cc", meta={"file": path.name, "offset": offset}
        ).reject(reason)


class WarcIngestConfig(ReaderConfig):
    # cc_net CCShardReader(min_len=300), as for WET pages.
    min_length: int = 300
    # As cc_ingest; WARC Content-Lengths are the crawler's own and normally right.
    trust_content_length: bool = True
    # Common Crawl makes WET text only from successful fetches; redirects and errors are rejected
    # ("http_status:<code>") so they stay visible in the counts.
    accept_status: list[int] = [200]
    # resiliparse form_fields: CC's WET keeps button labels, resiliparse writes them "[ label ]"
    # (see pipeline/commoncrawl/html.py for the measured effect). Off: closer line by line.
    form_fields: bool = False


class CCWarcIngest(CCIngest):
    """cc_warc_ingest: WARC `response` records (HTML) -> Documents laid out like cc_ingest's WET
    pages, for builds that start from WARC files (or reference pages fetched by a crawler such as
    wget). Same robustness as cc_ingest; other record types are skipped and not counted; a response
    that is not HTML is rejected ("not_html:<content type>")."""

    name = "cc_warc_ingest"
    raw_patterns = ("*.warc.gz", "*.warc")
    Config = WarcIngestConfig
    description = "Common Crawl WARC HTML responses -> Documents (resiliparse text, WET layout, min length 300)"
    page_record_type = WarcRecordType.response

    def _title_and_lines(self, record, body: bytes, doc: Document) -> tuple[str, list[str], str | None]:
        response = parse_http_response(body)
        doc.meta["payload_digest"] = record.headers.get("WARC-Payload-Digest")
        doc.meta["http_status"] = response.status
        if response.status not in self.config.accept_status:
            return "", [], f"http_status:{response.status}"
        content_type = response.content_type or (record.headers.get("WARC-Identified-Payload-Type") or "").lower()
        if content_type not in HTML_TYPES:
            return "", [], f"not_html:{content_type or 'unknown'}"
        html = decode_html(response.body, response.charset)
        title, lines = html_to_text(html, form_fields=self.config.form_fields)
        return title, lines, None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(3) == GZIP_MAGIC


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason_of(exc: Exception) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(exc).lower()).strip("_")[:60] or type(exc).__name__.lower()


def _next_record_start(fh: BinaryIO, offset: int, gzipped: bool, chunk: int = 1 << 20) -> int | None:
    """The offset of the next gzip member (gzipped file) or "WARC/1.x" line at or after `offset`."""
    fh.seek(offset)
    base = offset
    tail = b""
    while True:
        block = fh.read(chunk)
        if not block:
            return None
        data = tail + block
        if gzipped:
            found = data.find(GZIP_MAGIC)
            at = found if found >= 0 else -1
        else:
            match = WARC_VERSION_RE.search(data)
            at = match.start() if match else -1
            # a record starts at the beginning of a line (or at the very offset we resume from)
            while match and at > 0 and base + at != offset and data[at - 1 : at] != b"\n":
                match = WARC_VERSION_RE.search(data, at + 1)
                at = match.start() if match else -1
        if at >= 0:
            return base + at
        keep = 16
        tail = data[-keep:]
        base += len(data) - len(tail)


def _body_end(fh: BinaryIO, pos: int, content_length: int) -> int:
    """In a plain WET file: where the body of the record at `pos` ends if its length is right
    (headers end at the first blank line, CRLF or LF)."""
    head = os.pread(fh.fileno(), 1 << 16, pos)
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    return pos + (min(ends) if ends else len(head)) + content_length


def _ends_cleanly(fh: BinaryIO, body_end: int) -> bool:
    """After a body come blank lines, then the next "WARC/" record or the end of the file;
    anything else means the Content-Length is wrong."""
    after = os.pread(fh.fileno(), 64, body_end).lstrip(b"\r\n")
    return after == b"" or after.startswith(b"WARC/")


def _header_end(data: bytes) -> int | None:
    """Where a record's headers end (after the first blank line, CRLF or LF), or None."""
    return min((i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0), default=None)


def _gzip_member(fh: BinaryIO, start: int, chunk: int = 1 << 16) -> tuple[bytes, int] | None:
    """The decompressed gzip member at `start` and the offset where it ends; None when it is cut,
    corrupt, or inflates past MAX_RECORD_BYTES."""
    fh.seek(start)
    decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out: list[bytes] = []
    size = consumed = 0
    while not decomp.eof:
        data = fh.read(chunk)
        if not data:
            return None
        try:
            piece = decomp.decompress(data, MAX_RECORD_BYTES + 1 - size)
        except zlib.error:
            return None
        size += len(piece)
        out.append(piece)
        if size > MAX_RECORD_BYTES or (decomp.unconsumed_tail and not decomp.eof):
            return None
        consumed += len(data) - len(decomp.unused_data)
    return b"".join(out), start + consumed


def _read_between(fh: BinaryIO, begin: int, end: int | None) -> bytes:
    fh.seek(begin)
    return (fh.read(end - begin) if end is not None else fh.read()).rstrip(b"\r\n")


def _truncated_gzip_member(path: Path, start: int, chunk: int = 1 << 16) -> int | None:
    """Check the gzip members from `start` to the end of the file; the offset of the first member
    that does not decompress to its end, or None when they are all whole."""
    with open(path, "rb") as fh:
        fh.seek(start)
        member_start = start
        decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
        consumed = start
        pending = b""
        while True:
            data = pending or fh.read(chunk)
            pending = b""
            if not data:
                return None if decomp.eof or consumed == member_start else member_start
            try:
                decomp.decompress(data)
            except zlib.error:
                return member_start
            if decomp.eof:
                used = len(data) - len(decomp.unused_data)
                consumed += used
                pending = decomp.unused_data
                member_start = consumed
                decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
                if not pending:
                    nxt = fh.read(chunk)
                    if not nxt:
                        return None
                    pending = nxt
            else:
                consumed += len(data)
