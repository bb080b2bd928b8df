"""Stack Exchange (LLaMA §2: "a dump of Stack Exchange ... We kept the data from the 28 largest
websites, removed the HTML tags from text and sorted the answers by score (from highest to lowest).")

Stage
  stackexchange_ingest  <site>/Posts.xml of the official data dump -> one Document per question,
                        its answers attached below it, best-scored first.

Compared with RedPajama v1 (data_prep/stack_exchange/filter.py + post_processing.py), which this
follows otherwise: answers are sorted by their INTEGER score (RedPajama sorts the Score attribute as
a string, so "9" ranks above "10"), ties broken by answer Id; HTML becomes text with resiliparse
instead of BeautifulSoup.get_text, so code blocks keep their line breaks and indentation and list
items keep their bullets (get_text runs list items and paragraphs together).

Memory is bounded by one question and its answers, not by the site: rows are filed into a
temporary SQLite table on disk as they stream past (answers may come before their question), then
each question is read back with its answers ORDER BY Score DESC -- the same code path serves
coffee.stackexchange.com and stackoverflow.com.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

from lxml import etree
from resiliparse.extract.html2text import extract_plain_text

from pipeline.documents import Document
from pipeline.stage import ReaderConfig, Stage, StageConfig

SOURCE = "stackexchange"
QUESTION, ANSWER = "1", "2"
# Not from RedPajama: Stack Exchange caps a post's body at 30,000 characters; a row far over that
# is not a post, and is not filed (nor converted) so memory stays bounded by the parser's line.
MAX_BODY_CHARS = 1_000_000

# LLaMA §2: "We kept the data from the 28 largest websites". The paper does not list them; size
# is RedPajama's definition (count.py: questions + answers in Posts.xml). This is the 28 largest
# English-language sites by that count in the 2023 dumps, largest first. data_specs/llama1.yaml
# passes it as `sites`; for another dump date recompute it with `largest_sites(dump_folder)`.
LLAMA_SITES: tuple[str, ...] = (
    "stackoverflow.com", "math.stackexchange.com", "superuser.com", "askubuntu.com",
    "serverfault.com", "unix.stackexchange.com", "tex.stackexchange.com",
    "electronics.stackexchange.com", "stats.stackexchange.com", "physics.stackexchange.com",
    "english.stackexchange.com", "apple.stackexchange.com", "gis.stackexchange.com",
    "mathoverflow.net", "salesforce.stackexchange.com", "softwareengineering.stackexchange.com",
    "scifi.stackexchange.com", "wordpress.stackexchange.com", "magento.stackexchange.com",
    "sharepoint.stackexchange.com", "gaming.stackexchange.com", "dba.stackexchange.com",
    "diy.stackexchange.com", "ell.stackexchange.com", "security.stackexchange.com",
    "drupal.stackexchange.com", "codereview.stackexchange.com", "mathematica.stackexchange.com",
)  # fmt: skip


def count_posts(posts_xml: Path) -> int:
    """RedPajama's site size: rows that are questions or answers (PostTypeId 1 or 2)."""
    count = 0
    for _, row in etree.iterparse(str(posts_xml), events=("end",), tag="row", resolve_entities=False, no_network=True):
        count += row.get("PostTypeId") in (QUESTION, ANSWER)
        row.clear(keep_tail=True)
        while row.getprevious() is not None:
            del row.getparent()[0]
    return count


def largest_sites(dump_folder: Path, n: int = 28) -> list[str]:
    """The n largest sites of a dump folder laid out as <site>/Posts.xml, by count_posts, largest
    first (ties by name): how LLAMA_SITES is made for a given dump date."""
    sizes = Counter({p.parent.name: count_posts(p) for p in Path(dump_folder).glob("*/Posts.xml")})
    return [site for site, _ in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def html_to_text(html: str) -> str:
    """Stack Exchange bodies are HTML fragments. resiliparse keeps block structure, <pre><code>
    indentation and list bullets (preserve_formatting); image alt texts ("enter image description
    here" on most SE images) and link targets are dropped."""
    if not html:
        return ""
    return extract_plain_text(html, preserve_formatting=True, alt_texts=False, links=False, list_bullets=True).strip()


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def parse_tags(value: str | None) -> list[str]:
    """Older dumps write "<espresso><milk>", newer ones "|espresso|milk|"."""
    if not value:
        return []
    if value.startswith("<"):
        return [t for t in value.strip("<>").split("><") if t]
    return [t for t in value.split("|") if t]


class StackExchangeIngest(Stage):
    """One Document per question of a site's Posts.xml, the site being the parent folder's name
    (e.g. "cooking.stackexchange.com/Posts.xml").

    Layout of the text (answers best score first, ties by answer Id):
        Q: <title>
        <question body>

        A: <best answer>

        A: <next answer>
    id "stackexchange/<site>/<question Id>"; meta: site, question_id, score, answer_ids (in text
    order), accepted_answer_id, tags, url, creation_date.

    Every row of the file is accounted for: answers travel inside their question's document; the
    other rows come out as rejected documents:
      no_answers / too_few_answers  a question with fewer than `min_answers` answers (default 0:
                                    unanswered questions are kept, as RedPajama keeps them)
      orphan_answer                 an answer whose ParentId is not a question of this file
      post_type:<n>                 tag wikis (4, 5) and other post types: not Q&A content
      unreadable_record:<why>       a row without a usable Id
      duplicate_post                a question Id seen twice
      malformed_xml:<line>:<col>    the file breaks off here; questions read before still come out
      empty_file                    no rows at all
      site_not_selected:<site>      the whole file, when `sites` is set and excludes this site
    The file is streamed with lxml.iterparse (entities not resolved, no network, elements cleared as
    they go); questions and answers wait in a temporary on-disk SQLite database (see the module
    docstring), so memory holds one question and its answers at a time."""

    name = "stackexchange_ingest"
    parallel_parts = True  # one site's Posts.xml per part: a question and its answers share a file
    remote_parts = True  # nothing prepared: a worker anywhere rebuilds it from its config
    source = SOURCE
    reads = "raw"
    raw_patterns = ("Posts.xml",)
    description = "Stack Exchange Posts.xml -> question + sorted answers documents"

    class Config(ReaderConfig):
        # LLaMA §2: "the 28 largest websites": data_specs/llama1.yaml passes LLAMA_SITES. None keeps
        # every site given to the stage (the demo's sample sites are small ones).
        sites: list[str] | None = None
        # 0 (RedPajama v1, filter.py + post_processing.py): a question nobody answered is kept, as
        # "Q: <title> <body>" alone. 1: reject it ("no_answers"), a deliberate deviation for builds
        # that want only question-and-answer text (an unanswered question teaches no answer, and
        # is often a duplicate or a low-effort post); n > 1: "too_few_answers" below n.
        min_answers: int = 0

    def read(self, path: Path) -> Iterator[Document]:
        path = Path(path)
        site = path.parent.name
        file_id = f"{SOURCE}/{site}/{path.name}"
        if self.config.sites is not None and site not in self.config.sites:
            yield Document(id=file_id, text="", source=SOURCE, meta={"site": site}).reject(f"site_not_selected:{site}")
            return
        if path.stat().st_size == 0:
            yield Document(id=file_id, text="", source=SOURCE, meta={"site": site}).reject("empty_file")
            return

        with tempfile.TemporaryDirectory(prefix="se-posts-") as tmp:
            db = sqlite3.connect(Path(tmp) / "posts.sqlite", isolation_level=None)
            try:
                yield from self._stream(path, site, file_id, db)
            finally:
                db.close()

    def _stream(self, path: Path, site: str, file_id: str, db: sqlite3.Connection) -> Iterator[Document]:
        db.executescript(
            """
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
            CREATE TABLE question (id INTEGER PRIMARY KEY, title TEXT, body TEXT, score INTEGER,
                                   tags TEXT, accepted INTEGER, created TEXT, seq INTEGER);
            CREATE TABLE answer (id INTEGER, parent INTEGER, score INTEGER, body TEXT);
            BEGIN;
            """
        )
        rows = 0
        error: etree.XMLSyntaxError | None = None
        try:
            for _, row in etree.iterparse(
                str(path), events=("end",), tag="row", resolve_entities=False, no_network=True, huge_tree=False
            ):
                rows += 1
                rejected = self._take_row(row, site, rows, db)
                row.clear(keep_tail=True)
                while row.getprevious() is not None:
                    del row.getparent()[0]
                if rejected is not None:
                    yield rejected
        except etree.XMLSyntaxError as exc:
            error = exc
        db.execute("COMMIT")
        db.execute("CREATE INDEX answer_parent ON answer (parent, score DESC, id)")

        questions = db.execute("SELECT id, title, body, score, tags, accepted, created FROM question ORDER BY seq")
        for question in questions:
            # LLaMA §2: "sorted the answers by score (from highest to lowest)": INTEGER scores (RedPajama
            # sorts the attribute strings, "9" > "10"); ties by answer Id.
            ranked = db.execute(
                "SELECT id, score, body FROM answer WHERE parent = ? ORDER BY score DESC, id", (question[0],)
            ).fetchall()
            yield self._question_document(question, ranked, site)
        orphans = db.execute(
            "SELECT a.id, a.parent, a.score, a.body FROM answer a LEFT JOIN question q ON q.id = a.parent"
            " WHERE q.id IS NULL ORDER BY a.rowid"
        )
        for answer_id, parent_id, score, body in orphans:
            yield Document(
                id=f"{SOURCE}/{site}/{answer_id}",
                text=html_to_text(body),
                source=SOURCE,
                meta={"site": site, "answer_id": answer_id, "parent_id": parent_id, "score": score},
                reason="orphan_answer",
            )
        if error is not None:
            line, column = error.position if error.position else (error.lineno, 0)
            yield Document(
                id=f"{file_id}@{line}:{column}",
                text=str(error.msg)[:200],
                source=SOURCE,
                meta={"site": site, "file": path.name, "line": line, "column": column},
                reason=f"malformed_xml:{line}:{column}",
            )
        elif rows == 0:
            yield Document(id=file_id, text="", source=SOURCE, meta={"site": site}).reject("empty_file")

    def _take_row(self, row: etree._Element, site: str, seq: int, db: sqlite3.Connection) -> Document | None:
        """File the row as a question or answer; return a rejected Document for anything else."""
        post_id = _int(row.get("Id"), -1)
        post_type = row.get("PostTypeId")
        body_chars = len(row.get("Body", ""))
        if body_chars > MAX_BODY_CHARS:
            return Document(
                id=f"{SOURCE}/{site}/Posts.xml@row{row.sourceline}",
                text="",
                source=SOURCE,
                meta={"site": site, "line": row.sourceline, "post_id": post_id},
                reason=f"unreadable_record:body_too_large ({body_chars} characters)",
            )
        if post_id < 0:
            return Document(
                id=f"{SOURCE}/{site}/Posts.xml@row{row.sourceline}",
                text="",
                source=SOURCE,
                meta={"site": site, "line": row.sourceline},
                reason="unreadable_record:missing Id",
            )
        if post_type == QUESTION:
            accepted = row.get("AcceptedAnswerId")
            try:
                db.execute(
                    "INSERT INTO question VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        post_id,
                        row.get("Title", ""),
                        row.get("Body", ""),
                        _int(row.get("Score")),
                        "\x1f".join(parse_tags(row.get("Tags"))),
                        _int(accepted) if accepted is not None else None,
                        row.get("CreationDate"),
                        seq,
                    ),
                )
            except sqlite3.IntegrityError:
                return Document(
                    id=f"{SOURCE}/{site}/{post_id}@row{row.sourceline}",
                    text=html_to_text(row.get("Body", "")),
                    source=SOURCE,
                    meta={"site": site, "post_id": post_id},
                    reason="duplicate_post",
                )
            return None
        if post_type == ANSWER:
            parent = row.get("ParentId")
            db.execute(
                "INSERT INTO answer VALUES (?, ?, ?, ?)",
                (post_id, _int(parent, -1) if parent is not None else None, _int(row.get("Score")), row.get("Body", "")),
            )
            return None
        return Document(
            id=f"{SOURCE}/{site}/{post_id}",
            text=html_to_text(row.get("Body", "")),
            source=SOURCE,
            meta={"site": site, "post_id": post_id, "post_type": post_type},
            reason=f"post_type:{post_type}",
        )

    def _question_document(self, question: tuple, ranked: list[tuple[int, int, str]], site: str) -> Document:
        question_id, title, body, score, tags, accepted, created = question
        parts = [f"Q: {title}\n{html_to_text(body)}".strip()]
        parts += [f"A: {html_to_text(answer_body)}" for _, _, answer_body in ranked]
        doc = Document(
            id=f"{SOURCE}/{site}/{question_id}",
            text="\n\n".join(parts),
            source=SOURCE,
            meta={
                "site": site,
                "question_id": question_id,
                "score": score,
                "answer_ids": [a[0] for a in ranked],
                "answer_scores": [a[1] for a in ranked],
                "accepted_answer_id": accepted,
                "tags": tags.split("\x1f") if tags else [],
                "url": f"https://{site}/questions/{question_id}",
                "creation_date": created,
            },
        )
        if len(ranked) < self.config.min_answers:
            doc.reject("no_answers" if not ranked else "too_few_answers")
        return doc
