import bz2
from pathlib import Path

import pytest

from pipeline.documents import kept_parts, read_documents, rejected_parts
from pipeline.sources.wikipedia import WikipediaClean, WikipediaIngest, wikitext_to_plain
from pipeline.stage import run_stage
from tests.conftest import REALDATA

REAL_DUMP = REALDATA / "wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

ARTICLE = """{{Infobox person|name=Ada|birth_date=1815}}
'''Ada Lovelace''' was an English [[mathematician]] and writer, chiefly known for her work on
[[Charles Babbage|Babbage's]] proposed mechanical general-purpose computer, the
[[Analytical Engine]].<ref>{{cite web |url=http://example.org/ada |title=Ada}}</ref> She was the
first to recognise that the machine had applications beyond pure calculation.<ref name="b">See
[http://example.com/notes Notes] and http://example.net/bare</ref><ref name="b"/>

== Early life ==
Her father was [[Lord Byron]]; she was ''privately'' educated.<!-- hidden comment -->
[[File:Ada Lovelace portrait.jpg|thumb|A portrait of [[Ada Lovelace]]]]
{| class="wikitable"
|-
| cell one || cell two
|}
See the [http://example.com/site official site] for more.

[[Category:English mathematicians]]
[[de:Ada Lovelace]]
"""


def dump_xml(pages: list[tuple[str, int, int, str, bool]], dbname: str = "enwiki", ns: str = "0.10") -> str:
    body = []
    for title, namespace, page_id, text, redirect in pages:
        body.append(
            f"<page><title>{title}</title><ns>{namespace}</ns><id>{page_id}</id>"
            + ('<redirect title="X" />' if redirect else "")
            + f"<revision><id>{page_id * 10}</id><timestamp>2022-06-01T00:00:00Z</timestamp>"
            + f'<text xml:space="preserve">{escape(text)}</text></revision></page>'
        )
    return (
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-{ns}/" version="{ns}" xml:lang="en">'
        f"<siteinfo><dbname>{dbname}</dbname><namespaces>"
        '<namespace key="0" /><namespace key="1">Talk</namespace></namespaces></siteinfo>'
        + "".join(body)
        + "</mediawiki>"
    )


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


PAGES = [
    ("Ada Lovelace", 0, 1, ARTICLE, False),
    ("Lovelace", 0, 2, "#REDIRECT [[Ada Lovelace]]", True),
    ("Countess of Lovelace", 0, 3, "#redirect [[Ada Lovelace]]", False),  # text-only redirect
    ("Talk:Ada Lovelace", 1, 4, "This talk page discusses the article at length. " * 5, False),
    ("Stub", 0, 5, "{{stub}} Tiny.", False),
]


def write_bz2(path: Path, xml: str) -> Path:
    with bz2.open(path, "wt", encoding="utf-8") as fh:
        fh.write(xml)
    return path


def test_ingest_then_clean_end_to_end(tmp_path):
    dump = write_bz2(tmp_path / "enwiki-test.xml.bz2", dump_xml(PAGES))
    ingest = run_stage(WikipediaIngest(), [dump], tmp_path / "wikipedia_ingest")
    assert ingest["docs_in"] == 5 == ingest["docs_kept"] + ingest["docs_rejected"]
    assert ingest["rejected_by_reason"] == {"redirect": 2, "namespace": 1}
    raw = [d for p in kept_parts(tmp_path / "wikipedia_ingest") for d in read_documents(p)]
    assert [d.id for d in raw] == ["wikipedia/en/1", "wikipedia/en/5"]
    assert "[[Charles Babbage|" in raw[0].text  # ingest keeps the raw wikitext
    assert raw[0].columns["language"] == "en"
    assert raw[0].meta == {
        "title": "Ada Lovelace", "page_id": 1, "revision_id": 10,
        "timestamp": "2022-06-01T00:00:00Z", "lang": "en",
    }  # fmt: skip
    rejected = [d for p in rejected_parts(tmp_path / "wikipedia_ingest") for d in read_documents(p)]
    assert {d.id: d.reason for d in rejected}["wikipedia/en/4"] == "namespace:1"

    clean = run_stage(WikipediaClean(), [tmp_path / "wikipedia_ingest"], tmp_path / "wikipedia_clean")
    assert clean["docs_in"] == 2 and clean["rejected_by_reason"] == {"empty_after_clean": 1}
    (ada,) = [d for p in kept_parts(tmp_path / "wikipedia_clean") for d in read_documents(p)]
    assert ada.columns["language"] == "en"
    text = ada.text
    for markup in ("[[", "]]", "{{", "}}", "<ref", "'''", "''", "{|", "<!--", "http://example.org"):
        assert markup not in text
    assert text.startswith("Ada Lovelace was an English mathematician and writer")
    assert "Babbage's proposed" in text and "Analytical Engine." in text
    assert "\nEarly life\n" in text  # headings become plain lines
    assert "official site for more" in text
    for dropped in ("cell one", "Infobox", "portrait", "English mathematicians", "de:Ada", "hidden comment"):
        assert dropped not in text
    assert ada.meta["ref_urls"] == ["http://example.org/ada", "http://example.com/notes", "http://example.net/bare"]


def test_other_language_dump_is_rejected(tmp_path):
    dump = tmp_path / "jawiki-test.xml"
    dump.write_text(dump_xml(PAGES[:1], dbname="jawiki"), encoding="utf-8")
    docs = list(WikipediaIngest().read(dump))
    assert [(d.id, d.reason) for d in docs] == [("wikipedia/ja/1", "language:ja")]
    assert [d.reason for d in WikipediaIngest({"languages": ["ja"]}).read(dump)] == [None]


def test_old_export_version_without_ns_element(tmp_path):
    xml = dump_xml(PAGES[:1], ns="0.3").replace("<ns>0</ns>", "")
    xml = xml.replace("</mediawiki>", "<page><title>Talk:Foo</title><id>9</id><revision><text>hello</text></revision></page></mediawiki>")
    dump = tmp_path / "enwiki-old.xml"
    dump.write_text(xml, encoding="utf-8")
    assert [d.reason for d in WikipediaIngest().read(dump)] == [None, "namespace:1"]


def test_malformed_xml_keeps_earlier_pages_and_empty_file(tmp_path):
    xml = dump_xml(PAGES[:1])
    broken = tmp_path / "enwiki-broken.xml"
    broken.write_text(xml.replace("</mediawiki>", "<page><title>Bad</title><ns>0</ns></pag>"), encoding="utf-8")
    docs = list(WikipediaIngest().read(broken))
    assert docs[0].id == "wikipedia/en/1" and docs[0].reason is None
    assert docs[1].reason.startswith("malformed_xml:")
    empty = tmp_path / "enwiki-empty.xml.bz2"
    empty.write_bytes(b"")
    assert [d.reason for d in WikipediaIngest().read(empty)] == ["empty_file"]
    manifest = run_stage(WikipediaIngest(), [broken, empty], tmp_path / "out")
    assert manifest["docs_in"] == 3 and manifest["rejected_by_reason"] == {"malformed_xml": 1, "empty_file": 1}


def test_unparsed_markup_is_still_removed():
    # mwparserfromhell leaves a multi-line image caption and a table inside a template as text.
    text, urls = wikitext_to_plain(
        "Intro sentence here.\n[[File:X.png|thumb|Line one\nline two [[Link]]]]\n"
        "{{Infobox|a=1}}\nA ''[[Target|label]]'' ends.<ref>[//example.org/p x]</ref>"
    )
    assert text == "Intro sentence here.\n\nA label ends."
    assert urls == ["https://example.org/p"]


@pytest.mark.skipif(not REAL_DUMP.is_file(), reason=f"real-data sample absent: {REAL_DUMP}")
def test_real_enwiki_excerpt(tmp_path):
    ingest = run_stage(WikipediaIngest(), [REAL_DUMP], tmp_path / "ingest")
    assert ingest["docs_in"] == 206
    assert ingest["rejected_by_reason"]["redirect"] >= 90
    assert 100 <= ingest["docs_kept"] <= 110
    run_stage(WikipediaClean(), [tmp_path / "ingest"], tmp_path / "clean")
    docs = [d for p in kept_parts(tmp_path / "clean") for d in read_documents(p)]
    assert len(docs) >= 100
    for doc in docs:
        assert "[[" not in doc.text and "{{" not in doc.text and "<ref" not in doc.text, doc.id
    assert sum(len(d.meta["ref_urls"]) for d in docs) > 3000
    anarchism = next(d for d in docs if d.meta["title"] == "Anarchism")
    assert anarchism.text.startswith("Anarchism is a political philosophy")


REAL_TABLES = REALDATA / "wikipedia/enwiki-table-markup.xml.bz2"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_TABLES.is_file(), reason=f"real-data sample absent: {REAL_TABLES}")
def test_real_table_heavy_pages(tmp_path):
    """Five real enwiki pages made mostly of {| tables |}: the tables go, the prose stays."""
    ingest = run_stage(WikipediaIngest(), [REAL_TABLES], tmp_path / "ingest")
    assert ingest["docs_in"] == ingest["docs_kept"] + ingest["docs_rejected"]
    clean = run_stage(WikipediaClean(), [tmp_path / "ingest"], tmp_path / "clean")
    docs = {d.meta["title"]: d for p in kept_parts(tmp_path / "clean") for d in read_documents(p)}
    assert "Economy of Estonia" in docs and "Brahui language" in docs
    for doc in docs.values():
        for markup in ("{|", "|}", "|-", "[[", "{{", "<ref", "class=", "wikitable"):
            assert markup not in doc.text, (doc.meta["title"], markup)
    assert docs["Brahui language"].text.startswith("Brahui")
