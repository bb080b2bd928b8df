"""The sample generator writes every source in its wild format, deterministically, with the planted
cases the manifest promises really present in the files (read back with the real libraries)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import mwparserfromhell
import pytest
import zstandard
from fastwarc.warc import ArchiveIterator, WarcRecordType
from lxml import etree

from pipeline.samples import SAMPLES_MANIFEST, base36_sha1, git_blob_id, write_samples
from pipeline.samples_prose import EnglishProse, ForeignProse, parse_pydoc_topic

SCALE = 0.05
MW = "{http://www.mediawiki.org/xml/export-0.10/}"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("samples")
    return out, write_samples(out, seed=0, scale=SCALE)


def sources(sample) -> dict:
    return sample[1]["sources"]


def read_wet(out: Path, files: list[str]) -> dict[str, dict]:
    pages = {}
    for name in files:
        with open(out / name, "rb") as handle:
            for record in ArchiveIterator(handle, record_types=WarcRecordType.conversion, parse_http=False):
                assert record.verify_block_digest(), record.headers["WARC-Target-URI"]  # before reading
                payload = record.reader.read()
                assert len(payload) == record.content_length == int(record.headers["Content-Length"])
                pages[record.headers["WARC-Target-URI"]] = {
                    "text": payload.decode("utf-8"), "id": record.headers["WARC-Record-ID"],
                    "lang": record.headers.get("WARC-Identified-Content-Language")}
    return pages


@pytest.fixture(scope="module")
def wet_pages(sample) -> dict[str, dict]:
    out, manifest = sample
    return read_wet(out, manifest["sources"]["cc"]["files"])


@pytest.fixture(scope="module")
def wiki_pages(sample) -> list[dict]:
    out, manifest = sample
    root = etree.fromstring(bz2.decompress((out / manifest["sources"]["wikipedia"]["files"][0]).read_bytes()))
    assert root.tag == f"{MW}mediawiki" and root.findtext(f"{MW}siteinfo/{MW}dbname") == "enwiki"
    pages = []
    for page in root.iter(f"{MW}page"):
        text = page.find(f"{MW}revision/{MW}text")
        pages.append({"title": page.findtext(f"{MW}title"), "ns": int(page.findtext(f"{MW}ns")),
                      "id": int(page.findtext(f"{MW}id")), "text": text.text or "",
                      "bytes": int(text.get("bytes")), "sha1": page.findtext(f"{MW}revision/{MW}sha1"),
                      "redirect": page.find(f"{MW}redirect")})
    return pages


# ---------------------------------------------------------------------------------------------
# Determinism and layout


def test_same_seed_same_bytes_other_seed_other_bytes(sample, tmp_path):
    out, manifest = sample
    again = write_samples(tmp_path / "again", seed=0, scale=SCALE)
    other = write_samples(tmp_path / "other", seed=1, scale=SCALE)
    names = [f for s in manifest["sources"].values() for f in s["files"]] + [SAMPLES_MANIFEST]
    assert [f for s in again["sources"].values() for f in s["files"]] + [SAMPLES_MANIFEST] == names
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    differing = [n for n in names if (tmp_path / "other" / n).exists()
                 and (out / n).read_bytes() != (tmp_path / "other" / n).read_bytes()]
    assert any(n.startswith("cc/") for n in differing) and any(n.startswith("wikipedia/") for n in differing)


def test_manifest_lists_files_counts_and_every_planted_category(sample):
    out, manifest = sample
    assert json.loads((out / SAMPLES_MANIFEST).read_text(encoding="utf-8")) == manifest
    assert set(manifest["sources"]) == {"cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange"}
    for name, source in manifest["sources"].items():
        assert source["files"] and source["documents"] > 0, name
        for path in source["files"]:
            assert (out / path).is_file() and (out / path).stat().st_size > 0, path
        for category, cases in source["planted"].items():
            assert cases, f"{name}: planted category {category} is empty"
    layout = {
        "cc": r"cc/CC-MAIN-sample-\d{5}\.warc\.wet\.gz", "c4": r"c4/c4-train\.\d{5}-of-\d{5}\.json\.gz",
        "github": r"github/github-\d{5}\.jsonl\.gz", "wikipedia": r"wikipedia/enwiki-sample-pages-articles\.xml\.bz2",
        "books": r"books/(gutenberg/pg\d+\.txt|books3/books3-\d{5}\.jsonl\.zst)",
        "arxiv": r"arxiv/arXiv_src_sample_\d{3}\.tar", "stackexchange": r"stackexchange/[a-z.]+\.com/Posts\.xml"}
    for name, pattern in layout.items():
        for path in manifest["sources"][name]["files"]:
            assert re.fullmatch(pattern, path), path


# ---------------------------------------------------------------------------------------------
# CommonCrawl


def test_wet_files_are_real_warc_with_one_gzip_member_per_record(sample, wet_pages):
    out, manifest = sample
    cc = manifest["sources"]["cc"]
    members = records = 0
    for name in cc["files"]:
        data = (out / name).read_bytes()
        while data:
            stream = zlib.decompressobj(31)
            chunk = stream.decompress(data)
            assert chunk.startswith(b"WARC/1.0\r\n")
            members += 1
            data = stream.unused_data
        with open(out / name, "rb") as handle:
            types = [r.record_type for r in ArchiveIterator(handle, record_types=WarcRecordType.any_type)]
        assert types[0] == WarcRecordType.warcinfo and all(t == WarcRecordType.conversion for t in types[1:])
        records += len(types)
    assert members == records == cc["documents"] + len(cc["files"])
    assert len(wet_pages) == cc["documents"]
    assert {p["id"] for p in wet_pages.values()} == set(cc["record_ids"].values())
    assert all(re.fullmatch(r"<urn:uuid:[0-9a-f-]{36}>", p["id"]) for p in wet_pages.values())


def test_cc_planted_pages_are_what_they_claim(sample, wet_pages):
    planted = sources(sample)["cc"]["planted"]
    english = planted["english_prose_urls"]
    assert len(english) >= 40 and len(planted["cited_urls"]) >= 10
    assert set(planted["cited_urls"]) <= set(english) <= set(wet_pages)
    assert 0.55 <= len(english) / len(wet_pages) <= 0.8  # CommonCrawl is ~60-70% English
    cited_lengths = [len(wet_pages[u]["text"]) for u in planted["cited_urls"]]
    assert min(cited_lengths) >= 1500
    for original, duplicate in planted["exact_duplicate_urls"]:
        assert original != duplicate and wet_pages[original]["text"] == wet_pages[duplicate]["text"]
    for original, near in planted["near_duplicate_urls"]:
        a, b = wet_pages[original]["text"], wet_pages[near]["text"]
        assert a != b
        shared = set(a.splitlines()) & set(b.splitlines())
        assert len(shared) >= 0.7 * len(set(a.splitlines()))
    for url in planted["short_urls"]:
        assert len(wet_pages[url]["text"].encode("utf-8")) < 300
    for url in planted["gibberish_urls"]:
        tokens = wet_pages[url]["text"].split()
        assert len(tokens) > 40 and sum(any(c.isdigit() for c in t) for t in tokens) / len(tokens) > 0.3
    for url in planted["low_quality_urls"]:
        lines = wet_pages[url]["text"].splitlines()
        assert len(set(lines)) < len(lines) or max(Counter(wet_pages[url]["text"].split()).values()) >= 10
    for line, pages in planted["boilerplate_lines"].items():
        found = sum(line in p["text"].splitlines() for p in wet_pages.values())
        assert found == pages >= 2, line


def test_cc_non_english_pages_are_really_non_english(sample, wet_pages):
    foreign = sources(sample)["cc"]["planted"]["non_english_urls"]
    scripts = {"zh": r"[\u4e00-\u9fff]", "ja": r"[\u3040-\u30ff]", "ko": r"[\uac00-\ud7af]", "ru": r"[\u0400-\u04ff]"}
    assert len(set(foreign.values())) >= 3
    for url, language in foreign.items():
        text = wet_pages[url]["text"]
        assert wet_pages[url]["lang"] is not None
        if language in scripts:
            assert len(re.findall(scripts[language], text)) > 20, (url, language)
    lid = Path(__file__).resolve().parents[1] / ".tools" / "models" / "lid.176.ftz"
    if lid.is_file():  # the real language identifier agrees on most pages
        import fasttext
        model = fasttext.load_model(str(lid))
        agree = sum(model.predict(wet_pages[u]["text"].replace("\n", " "))[0][0] == f"__label__{lang}"
                    for u, lang in foreign.items())
        assert agree >= 0.8 * len(foreign)
        english = sources(sample)["cc"]["planted"]["english_prose_urls"]
        assert sum(model.predict(wet_pages[u]["text"].replace("\n", " "))[0][0] == "__label__en"
                   for u in english) >= 0.95 * len(english)


def test_cited_pages_carry_real_reference_prose(sample, wet_pages):
    from pydoc_data.topics import topics
    corpus = " ".join(" ".join(t.split()) for t in topics.values())
    planted = sources(sample)["cc"]["planted"]
    lines = [line for u in planted["cited_urls"] for line in wet_pages[u]["text"].splitlines()[1:-1]]
    found = sum(line[:50] in corpus for line in lines)
    assert found >= 0.8 * len(lines)


# ---------------------------------------------------------------------------------------------
# Wikipedia


def test_wikipedia_dump_is_valid_mediawiki_with_clean_english_and_every_cited_url(sample, wiki_pages):
    planted = sources(sample)["wikipedia"]["planted"]
    articles = [p for p in wiki_pages if p["ns"] == 0 and p["redirect"] is None]
    assert len(articles) >= 20
    for page in wiki_pages:
        assert page["bytes"] == len(page["text"].encode("utf-8")) and page["sha1"] == base36_sha1(page["text"])
    assert len({p["id"] for p in wiki_pages}) == len(wiki_pages)
    clean = "\n".join(mwparserfromhell.parse(p["text"]).strip_code() for p in articles)
    assert len(clean.encode("utf-8")) >= 30_000
    refs = " ".join(m for p in articles for m in re.findall(r"<ref[^>/]*>(.*?)</ref>", p["text"], re.S))
    for url in planted["cc_cited_urls"] + planted["uncrawled_ref_urls"]:
        assert url in refs, url
    assert planted["cc_cited_urls"] == sources(sample)["cc"]["planted"]["cited_urls"]
    markup = "\n".join(p["text"] for p in articles)
    for token in ("'''", "[[", "{{Infobox", "{{cite web", "<ref name=", "== ", "[[Category:", "[http"):
        assert token in markup, token
    redirects = {p["title"] for p in wiki_pages if p["redirect"] is not None}
    assert redirects == set(planted["redirect_titles"])
    assert all(p["text"].startswith("#REDIRECT [[") for p in wiki_pages if p["redirect"] is not None)
    namespaces = {p["title"]: p["ns"] for p in wiki_pages if p["ns"] != 0}
    assert namespaces == planted["non_article_titles"] and {1, 2, 4, 10, 14} <= set(namespaces.values())


# ---------------------------------------------------------------------------------------------
# C4


def test_c4_lines_and_planted_rules(sample):
    out, manifest = sample
    c4 = manifest["sources"]["c4"]
    docs = {}
    for name in c4["files"]:
        with gzip.open(out / name, "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                assert set(row) == {"text", "timestamp", "url"}
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["timestamp"])
                docs[row["url"]] = row["text"]
    assert len(docs) == c4["documents"] >= 30
    planted = c4["planted"]
    for key in ("no_terminal_punctuation_lines", "short_lines", "javascript_lines", "policy_lines"):
        for case in planted[key]:
            assert case["line"] in docs[case["url"]].split("\n"), key
    assert all(c["line"][-1] not in ".!?\"" for c in planted["no_terminal_punctuation_lines"])
    assert all(len(c["line"].split()) < 3 for c in planted["short_lines"])
    assert all("javascript" in c["line"].lower() for c in planted["javascript_lines"])
    assert all(len(re.findall(r"[.!?](\s|$)", docs[u])) < 5 for u in planted["few_sentences_urls"])
    assert all("lorem ipsum" in docs[u].lower() for u in planted["lorem_ipsum_urls"])
    assert all("{" in docs[u] for u in planted["curly_bracket_urls"])
    assert all(re.search(rf"\b{planted['bad_word']}\b", docs[u]) for u in planted["bad_word_urls"])
    for span in planted["repeated_spans"]:
        assert len(span["urls"]) >= 2 and all(span["span"] in docs[u] for u in span["urls"])
        assert sum(span["span"] in text for text in docs.values()) == len(span["urls"])


# ---------------------------------------------------------------------------------------------
# GitHub


def test_github_rows_are_bigquery_shaped_real_files_with_planted_cases(sample):
    out, manifest = sample
    gh = manifest["sources"]["github"]
    rows = []
    for name in gh["files"]:
        with gzip.open(out / name, "rt", encoding="utf-8") as handle:
            rows += [json.loads(line) for line in handle]
    assert len(rows) == gh["documents"]
    fields = {"repo_name", "id", "size", "content", "binary", "copies", "ref", "path", "mode", "symlink_target",
              "license", "language"}
    by_key = {}
    for row in rows:
        assert set(row) == fields and row["binary"] is False and row["mode"] == "33188"
        assert row["id"] == git_blob_id(row["content"].encode("utf-8"))
        assert row["size"] == str(len(row["content"].encode("utf-8")))
        assert row["license"] == gh["repos"][row["repo_name"]]
        assert all(set(lang) == {"name", "bytes"} for lang in row["language"])
        by_key[(row["repo_name"], row["path"])] = row
    planted = gh["planted"]
    licenses = {r["license"] for r in rows}
    assert licenses & {"mit", "apache-2.0", "bsd-3-clause"} and licenses & {"gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0"}
    for repo in planted["non_permissive_repos"]:
        assert any(r["repo_name"] == repo["repo_name"] for r in rows) and repo["license"] not in ("mit", "apache-2.0")

    def content(case):
        return by_key[(case["repo_name"], case["path"])]["content"]

    assert all(max(map(len, content(c).splitlines())) > 1000 for c in planted["long_line_files"])
    for case in planted["long_mean_line_files"]:
        lines = content(case).splitlines()
        assert sum(map(len, lines)) / len(lines) > 100 and max(map(len, lines)) <= 1000
    for case in planted["low_alphanumeric_files"]:
        assert sum(c.isalnum() for c in content(case)) / len(content(case)) < 0.25
    for group in planted["duplicate_files"]:
        copies = [r for r in rows if r["id"] == group["id"]]
        assert len({r["repo_name"] for r in copies}) >= 2 and all(r["copies"] == str(len(copies)) for r in copies)
    assert all(Path(c["path"]).suffix not in (".py", ".c", ".h", ".js", ".md", ".rst")
               for c in planted["non_whitelisted_extension_files"])
    for case in planted["license_header_files"]:
        assert re.match(r"# (Copyright|SPDX-License-Identifier)", content(case))
    # real source: every Python file of a permissive repo (not a planted oddity) parses
    import ast
    odd = {(c["repo_name"], c["path"]) for k in planted for c in planted[k] if isinstance(c, dict) and "path" in c}
    parsed = [ast.parse(r["content"]) for r in rows if r["path"].endswith(".py") and (r["repo_name"], r["path"]) not in odd]
    assert len(parsed) >= 5


# ---------------------------------------------------------------------------------------------
# Books


def _book_paragraphs(text: str) -> set[str]:
    return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p) > 80}


def test_books_gutenberg_and_books3_with_near_duplicates_and_a_half_overlap(sample):
    out, manifest = sample
    books = manifest["sources"]["books"]
    texts = {}
    for name in books["files"]:
        data = (out / name).read_bytes()
        if name.endswith(".txt"):
            text = data.decode("utf-8")
            assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
            start = re.search(r"\*\*\* ?START OF TH(IS|E) PROJECT GUTENBERG EBOOK (.+?) ?\*\*\*", text)
            end = re.search(r"\*\*\* ?END OF TH(IS|E) PROJECT GUTENBERG EBOOK (.+?) ?\*\*\*", text)
            assert start and end and start.end() < end.start() and "FULL LICENSE" in text[end.end():]
            body = text[start.end():end.start()]
            assert len(body) >= 8000
            texts[Path(name).stem] = body.replace("\r\n", "\n")
        else:
            lines = zstandard.ZstdDecompressor().decompress(data).decode("utf-8").splitlines()
            for number, line in enumerate(lines):
                row = json.loads(line)
                assert set(row) == {"text", "meta"} and row["meta"]["title"]
                texts[f"books3-00000:{number}"] = row["text"]
    assert len(texts) == books["documents"]

    def shared(pair):
        a, b = _book_paragraphs(texts[pair["a"]["id"]]), _book_paragraphs(texts[pair["b"]["id"]])
        return len(a & b) / max(len(a), len(b))

    for pair in books["planted"]["near_duplicate_pairs"]:
        assert shared(pair) > 0.85, pair
    for pair in books["planted"]["partial_overlap_pairs"]:
        assert 0.3 < shared(pair) < 0.7, pair
    kinds = {p["a"]["file"].split("/")[1] + "+" + p["b"]["file"].split("/")[1] for p in books["planted"]["near_duplicate_pairs"]}
    assert "gutenberg+books3" in kinds


# ---------------------------------------------------------------------------------------------
# arXiv


def test_arxiv_bulk_tar_of_gzipped_sources(sample):
    out, manifest = sample
    arxiv = manifest["sources"]["arxiv"]
    members = {}
    for name in arxiv["files"]:
        with tarfile.open(out / name) as outer:
            for member in outer.getmembers():
                members[Path(member.name).name] = outer.extractfile(member).read()
    assert len(members) == arxiv["documents"]
    planted = arxiv["planted"]
    for paper_id in planted["multi_file"]:
        inner = tarfile.open(fileobj=io.BytesIO(gzip.decompress(members[f"{paper_id}.gz"])))
        files = {m.name: inner.extractfile(m).read().decode("utf-8") for m in inner.getmembers()}
        main = files["main.tex"]
        for token in (r"\documentclass", r"\newcommand{\R}{\mathbb{R}}", r"\newcommand{\vect}[1]",
                      r"\newcommand{\norm}[2][2]", r"\def\eps", r"\input{sections/method}", r"\include{appendix}",
                      r"\bibliography{refs}", r"\begin{abstract}", r"\section{Introduction}", "\n% "):
            assert token in main, token
        assert {"sections/method.tex", "appendix.tex", "refs.bib"} <= set(files)
        assert r"\norm{\vect{x}" in files["sections/method.tex"] and r"\%" in files["sections/method.tex"]
        assert "@article{" in files["refs.bib"]
    for paper_id in planted["single_tex"]:
        tex = gzip.decompress(members[f"{paper_id}.gz"]).decode("utf-8")
        assert tex.startswith(r"\documentclass") and r"\begin{thebibliography}" in tex
    for paper_id in planted["pdf_only"]:
        assert members[f"{paper_id}.pdf"].startswith(b"%PDF")


# ---------------------------------------------------------------------------------------------
# Stack Exchange


def test_stackexchange_posts_dump_with_planted_cases(sample):
    out, manifest = sample
    se = manifest["sources"]["stackexchange"]
    rows_by_site = {}
    for name in se["files"]:
        data = (out / name).read_bytes()
        assert data.startswith("\ufeff<?xml".encode("utf-8"))
        root = etree.fromstring(data.decode("utf-8").lstrip("\ufeff").encode("utf-8"))
        rows = {int(r.get("Id")): dict(r.attrib) for r in root.iter("row")}
        rows_by_site[Path(name).parent.name] = rows
        questions = [r for r in rows.values() if r["PostTypeId"] == "1"]
        for q in questions:
            answers = [r for r in rows.values() if r.get("ParentId") == q["Id"]]
            assert int(q["AnswerCount"]) == len(answers) and q["Title"] and q["Tags"].startswith("<")
            if "AcceptedAnswerId" in q:
                assert rows[int(q["AcceptedAnswerId"])]["ParentId"] == q["Id"]
        assert any("<p>" in q["Body"] for q in questions)
    planted = se["planted"]
    for case in planted["score_order"]:
        rows = rows_by_site[case["site"]]
        answers = [r for r in rows.values() if r.get("ParentId") == str(case["question_id"])]
        scores = sorted((int(a["Score"]) for a in answers), reverse=True)
        assert scores == [10, 9, 2] == case["scores"]
        assert sorted((a["Score"] for a in answers), reverse=True) != [str(s) for s in scores]  # the trap
    for case in planted["unanswered_questions"]:
        assert rows_by_site[case["site"]][case["question_id"]]["AnswerCount"] == "0"
    assert {c["post_type"] for c in planted["tag_wiki_posts"]} == {4, 5}
    for case in planted["tag_wiki_posts"]:
        assert rows_by_site[case["site"]][case["id"]]["PostTypeId"] == str(case["post_type"])
    for case in planted["empty_body_answers"]:
        row = rows_by_site[case["site"]][case["id"]]
        assert row["Body"] == "" and row["PostTypeId"] == "2"


# ---------------------------------------------------------------------------------------------
# The prose itself


def test_prose_sources_are_real_writing():
    topic = parse_pydoc_topic("if", __import__("pydoc_data.topics").topics.topics["if"])
    assert topic.title == 'The "if" statement'
    assert any(p.startswith("It selects exactly one of the suites") for p in topic.paragraphs)
    assert any("if_stmt ::=" in c for c in topic.code)  # grammar kept out of the prose
    english = EnglishProse(seed=3)
    text = english.text(min_chars=500)
    assert text.chars >= 500 and all(p[-1] in ".!?:)\"'" for p in text.paragraphs)
    assert len(set(english.paragraphs(200))) == 200  # never the same paragraph twice
    foreign = ForeignProse(seed=3)
    assert {"fr", "de", "ru", "zh", "ja"} <= set(foreign.languages())  # humanize's catalogs at least
    assert all(re.search(r"[\u0400-\u04ff]", s) for s in foreign.sentences("ru", 10))


def test_scale_grows_documents(tmp_path):
    small = write_samples(tmp_path / "small", seed=5, scale=0.05)["sources"]
    larger = write_samples(tmp_path / "larger", seed=5, scale=0.12)["sources"]
    for name in ("cc", "c4", "wikipedia", "stackexchange"):
        assert larger[name]["documents"] > small[name]["documents"], name
