"""The CommonCrawl (CCNet) stages on small hand-made inputs, plus the real WET samples."""

from __future__ import annotations

import gzip
import random
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydoc_data.topics import topics

from pipeline.commoncrawl.doc_dedup import CCDocDedup
from pipeline.commoncrawl.ingest import CCIngest
from pipeline.commoncrawl.langid import CCLangId
from pipeline.commoncrawl.line_dedup import CCLineDedup
from pipeline.commoncrawl.perplexity import CCPerplexity
from pipeline.commoncrawl.wikiref import CCWikiRef, normalize_url
from pipeline.documents import Document, StageError, StageFolder, read_documents, rejected_parts, write_documents
from pipeline.stage import run_stage
from pipeline.text import normalize_for_lm
from tests.conftest import REALDATA as SHARED_REALDATA

REALDATA = SHARED_REALDATA / "common_crawl"
PROSE = "\n".join(
    [
        "The history of the river valley begins with the first farming villages along its banks.",
        "Over many centuries the settlers cleared the forests and built mills beside the water.",
        "Trade with the coastal towns brought new tools, new crops and new ideas to the region.",
        "Today the valley is known for its orchards, its old stone bridges and its quiet roads.",
    ]
)


# ---------------------------------------------------------------------------------------------
# helpers


def wet_record(body: str | bytes, rtype: str = "conversion", url: str = "http://example.com/", rid: str | None = None,
               content_length: int | None = None) -> bytes:
    body = body.encode() if isinstance(body, str) else body
    rid = rid or str(uuid.uuid4())
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2019-03-18T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{rid}>\r\nWARC-Block-Digest: sha1:ABCDEF\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body) if content_length is None else content_length}\r\n\r\n"
    )
    return head.encode() + body + b"\r\n\r\n"


def write_wet_gz(path: Path, records: list[bytes]) -> Path:
    """Common Crawl's layout: one gzip member per record, a warcinfo record first."""
    path.write_bytes(b"".join(gzip.compress(r) for r in [wet_record("software: test\r\n", "warcinfo")] + records))
    return path


def page(title: str, text: str = PROSE) -> str:
    return f"{title}\n{text}\n"


def docs_of(stage_dir: Path, rejected: bool = False) -> list[Document]:
    parts = rejected_parts(stage_dir) if rejected else sorted((stage_dir / "kept").glob("*.parquet"))
    return [d for p in parts for d in read_documents(p)]


def write_part(path: Path, docs: list[Document], types: dict | None = None) -> Path:
    write_documents(path, docs, types)
    return path


def fake_stage(folder: Path, name: str, docs: list[Document], types: dict | None = None) -> Path:
    """A complete stage folder (e.g. a stand-in for wikipedia_clean) written with the contract."""
    with StageFolder(folder, name, {}, []) as out:
        with out.part(0, types or {}) as part:
            for doc in docs:
                part.write(doc)
    return folder


def cc_doc(doc_id: str, text: str, url: str | None = None, language: str | None = None) -> Document:
    columns = {"language": language} if language else {}
    return Document(id=f"cc/{doc_id}", text=text, source="cc", meta={"url": url or f"http://{doc_id}.example/"},
                    columns=columns)


def assert_reconciles(manifest: dict) -> None:
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"]
    assert sum(manifest["rejected_by_reason"].values()) == manifest["docs_rejected"]


def test_stage_names_are_registered():
    # (get_stage() imports every STAGE_MODULE; the registry itself is checked so this test does
    # not depend on the other sources' modules.)
    from pipeline import stage as stage_module

    for name in ("cc_ingest", "cc_doc_dedup", "cc_line_dedup", "cc_langid", "cc_perplexity", "cc_wikiref"):
        assert stage_module._REGISTRY[name].name == name
        assert stage_module._REGISTRY[name].__module__ in stage_module.STAGE_MODULES


# ---------------------------------------------------------------------------------------------
# cc_ingest


def test_ingest_end_to_end_counts_pages_and_skips_warcinfo(tmp_path):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    wet = write_wet_gz(tmp_path / "a.warc.wet.gz", [
        wet_record(page("Valley history"), url="http://a.example/x", rid=ids[0]),
        wet_record(page("Too short", "Just one short line."), rid=ids[1]),
        wet_record(page("Valley again", PROSE + "\nA fifth line."), rid=ids[2]),
    ])
    manifest = run_stage(CCIngest(), [tmp_path], tmp_path / "cc_ingest")
    assert_reconciles(manifest)
    assert manifest["docs_in"] == 3  # the warcinfo record is not a page and not counted
    assert manifest["docs_kept"] == 2 and manifest["rejected_by_reason"] == {"too_short": 1}
    kept = docs_of(tmp_path / "cc_ingest")
    assert [d.id for d in kept] == [f"cc/{ids[0]}", f"cc/{ids[2]}"]
    first = kept[0]
    assert first.text == PROSE  # the first line is the title (cc_net layout)
    assert first.meta["title"] == "Valley history" and first.meta["url"] == "http://a.example/x"
    assert first.meta["digest"] == "sha1:ABCDEF" and first.meta["file"] == wet.name
    assert len(first.text) >= 300


def test_ingest_empty_file_is_one_rejected_row(tmp_path):
    (tmp_path / "empty.warc.wet.gz").write_bytes(b"")
    docs = list(CCIngest().read(tmp_path / "empty.warc.wet.gz"))
    assert [(d.id, d.reason) for d in docs] == [("cc/empty.warc.wet.gz@0", "empty_file")]


def test_ingest_missing_file_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="not found"):
        list(CCIngest().read(tmp_path / "nope.warc.wet.gz"))


def test_ingest_truncated_gzip_keeps_the_records_before_the_cut(tmp_path):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    whole = write_wet_gz(tmp_path / "whole.warc.wet.gz", [wet_record(page(f"Page {i}"), rid=r) for i, r in enumerate(ids)])
    cut = tmp_path / "cut.warc.wet.gz"
    cut.write_bytes(whole.read_bytes()[:-60])  # inside the last member
    docs = list(CCIngest().read(cut))
    assert [d.id for d in docs if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[1]}"]
    broken = [d for d in docs if d.rejected]
    assert len(broken) == 1 and broken[0].reason.startswith("unreadable_record:")
    assert broken[0].id.startswith("cc/cut.warc.wet.gz@")
    # The same pages compressed as ONE gzip member (not CC's layout): checked from the start.
    single = tmp_path / "single.warc.wet.gz"
    single.write_bytes(gzip.compress(gzip.decompress(whole.read_bytes()))[:-30])
    docs = list(CCIngest().read(single))
    assert [d.id for d in docs if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[1]}"]
    assert len([d for d in docs if d.rejected]) == 1  # one defect, one row


def test_ingest_wrong_content_length_is_recovered_as_cc_net_reads_it(tmp_path):
    """cc_net reads WET line by line and never looks at Content-Length: a record whose length is
    wrong runs to the next "WARC/1.0" line (plain file) or the end of its gzip member (CC's
    layout); kept, flagged, counted in the manifest. trust_content_length: true rejects it."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    records = [
        wet_record(page("First"), rid=ids[0]),
        wet_record(page("Lying length"), rid=ids[1], content_length=5000),  # would swallow the next record
        wet_record(page("Third"), rid=ids[2]),
    ]
    for name, data in (("plain.warc.wet", b"".join(records)), ("gz.warc.wet.gz", b"".join(map(gzip.compress, records)))):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_bytes(data)
        strict = list(CCIngest({"trust_content_length": True}).read(folder / name))
        assert [d.id for d in strict if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[2]}"], name
        assert [d.reason for d in strict if d.rejected] == ["unreadable_record:content_length_mismatch"], name
        manifest = run_stage(CCIngest(), [folder], tmp_path / f"{folder.name}_ingest")
        assert_reconciles(manifest)
        assert manifest["docs_kept"] == 3 and manifest["docs_rejected"] == 0, name
        assert manifest["stats"]["records_recovered"] == 1, name
        kept = docs_of(tmp_path / f"{folder.name}_ingest")
        assert [d.id for d in kept] == [f"cc/{i}" for i in ids], name
        assert kept[1].meta["content_length_mismatch"] is True and kept[1].text == PROSE, name
        assert "content_length_mismatch" not in kept[0].meta and kept[2].text == PROSE, name
    # Too small a length on a plain file: the record is cut, the next header is garbage. Strict:
    # rejected; by default read up to the next "WARC/1.0" line.
    records[1] = wet_record(page("Short length"), rid=ids[1], content_length=10)
    (tmp_path / "small.warc.wet").write_bytes(b"".join(records))
    strict = list(CCIngest({"trust_content_length": True}).read(tmp_path / "small.warc.wet"))
    assert [d.id for d in strict if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[2]}"]
    lenient = list(CCIngest().read(tmp_path / "small.warc.wet"))
    assert [d.id for d in lenient if not d.rejected] == [f"cc/{i}" for i in ids] and len(lenient) == 3
    assert lenient[1].meta["content_length_mismatch"] is True and lenient[1].text == PROSE
    # The same in CC's gzip layout: fastwarc fails on the rest of the member after the short
    # body; the record is read back from its whole member (also when it is the last record).
    for count in (3, 2):
        (tmp_path / "small.warc.wet.gz").write_bytes(b"".join(map(gzip.compress, records[:count])))
        stage = CCIngest()
        lenient = list(stage.read(tmp_path / "small.warc.wet.gz"))
        assert [d.id for d in lenient if not d.rejected] == [f"cc/{i}" for i in ids[:count]] and len(lenient) == count
        assert lenient[1].meta["content_length_mismatch"] is True and lenient[1].text == PROSE
        assert stage.counters["records_recovered"] == 1
    # A file cut inside its last record: no record follows the declared body, whose text is
    # incomplete: rejected, not recovered; the records before it come out.
    records[1] = wet_record(page("Second"), rid=ids[1])
    for name, data in (("cut.warc.wet", b"".join(records[:2]) + records[2][:-200]),
                       ("cut.warc.wet.gz", b"".join(map(gzip.compress, records[:2])) + gzip.compress(records[2])[:-40])):
        (tmp_path / name).write_bytes(data)
        docs = list(CCIngest().read(tmp_path / name))
        assert [d.id for d in docs if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[1]}"], name
        assert [d.reason for d in docs if d.rejected] == ["unreadable_record:content_length_mismatch"], name
    # No Content-Length at all: cc_net cannot parse that header either; rejected, reading goes on.
    bare = wet_record(page("No length"), rid=str(uuid.uuid4())).replace(b"Content-Length: ", b"X-Length: ")
    (tmp_path / "bare.warc.wet").write_bytes(records[0] + bare + records[2])
    docs = list(CCIngest().read(tmp_path / "bare.warc.wet"))
    assert [d.id for d in docs if not d.rejected] == [f"cc/{ids[0]}", f"cc/{ids[2]}"]
    assert [d.reason for d in docs if d.rejected] == ["unreadable_record:content_length_mismatch"]


def test_ingest_record_whose_headers_run_into_the_next_is_rejected_not_recovered(tmp_path):
    """A wrong length whose header block has no blank line before the next "WARC/1.0" line: there
    is no body to read back (this crashed the recovery before; found by fuzzing)."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    first, third = wet_record(page("First"), rid=ids[0]), wet_record(page("Third"), rid=ids[2])
    head = wet_record(page("Second"), rid=ids[1], content_length=10).split(b"\r\n\r\n", 1)[0]
    glued = head + b"\r\n" + third.replace(b"\r\n\r\n", b"\r\nX-Pad: 1\r\n", 1)
    (tmp_path / "glued.warc.wet").write_bytes(first + glued + b"\r\n\r\n" + third)
    manifest = run_stage(CCIngest(), [tmp_path], tmp_path / "out")
    assert_reconciles(manifest)
    kept = docs_of(tmp_path / "out")
    assert kept[0].id == f"cc/{ids[0]}" and kept[-1].text == PROSE
    assert manifest["rejected_by_reason"]["unreadable_record"] == 1


def test_ingest_garbage_and_invalid_utf8(tmp_path):
    (tmp_path / "junk.warc.wet").write_bytes(b"this is not a warc file\n" * 20)
    assert [d.reason for d in CCIngest().read(tmp_path / "junk.warc.wet")] == ["unreadable_record:not_a_warc_record"]
    latin1 = page("Caf\u00e9", ("Un caf\u00e9 tr\u00e8s \u00e9l\u00e9gant \u00e0 c\u00f4t\u00e9. " * 20)).encode("latin-1")
    write_wet_gz(tmp_path / "latin.warc.wet.gz", [wet_record(latin1)])
    assert [d.reason for d in CCIngest().read(tmp_path / "latin.warc.wet.gz")] == ["invalid_utf8"]


# ---------------------------------------------------------------------------------------------
# cc_doc_dedup


def test_doc_dedup_keeps_the_first_copy_across_parts(tmp_path):
    original = PROSE + "\nFounded in 1850."
    variant = "  " + PROSE.upper() + "\nFounded in 1921.  "  # same after normalize_for_dedup
    p0 = write_part(tmp_path / "p0.parquet", [cc_doc("a", original), cc_doc("b", "Another page\nentirely.")])
    p1 = write_part(tmp_path / "p1.parquet", [cc_doc("c", variant), cc_doc("d", "Another page\nentirely."),
                                              cc_doc("e", "A third page.")])
    manifest = run_stage(CCDocDedup(), [p0, p1], tmp_path / "dedup")
    assert_reconciles(manifest)
    assert [d.id for d in docs_of(tmp_path / "dedup")] == ["cc/a", "cc/b", "cc/e"]
    rejected = {d.id: d for d in docs_of(tmp_path / "dedup", rejected=True)}
    assert rejected["cc/c"].reason == "duplicate_document" and rejected["cc/c"].meta["duplicate_of"] == "cc/a"
    assert rejected["cc/d"].meta["duplicate_of"] == "cc/b"
    assert manifest["stats"]["duplicate_documents"] == 2 and manifest["stats"]["unique_documents"] == 3


def test_doc_dedup_gives_the_same_bytes_whatever_the_partition_and_worker_count(tmp_path):
    """Partitioned passes (digests per part, first copies per partition, ids, filter) against a
    brute-force oracle: the first occurrence in (part, row) order keeps, later copies name it."""
    rng = random.Random(7)
    # Letters, not digits: the dedup key maps every digit to 0.
    names = ["".join(chr(97 + int(d)) for d in str(i * 7919)) for i in range(40)]
    texts = [f"Page {name}\nwith its own words, {name}." for name in names]
    parts, oracle_first = [], {}
    for p in range(5):
        docs = []
        for r in range(rng.randint(0, 30)):  # part sizes 0..30, copies within and across parts
            text = rng.choice(texts)
            doc_id = f"cc/p{p}r{r}"
            docs.append(cc_doc(doc_id.removeprefix("cc/"), text))
            oracle_first.setdefault(text, doc_id)
        parts.append(write_part(tmp_path / f"p{p}.parquet", docs))
    folders = []
    for partitions, workers in ((1, 1), (3, 1), (7, 2), (64, 2)):
        stage = CCDocDedup()
        stage.partitions = partitions
        out = tmp_path / f"dedup-{partitions}-{workers}"
        manifest = run_stage(stage, parts, out, workers=workers)
        assert_reconciles(manifest)
        assert not (out / "artifacts").exists()  # the exchange files are not output
        folders.append({str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
                        if f.is_file() and f.name != "timing.json"})
    assert all(folder == folders[0] for folder in folders[1:])
    kept = {d.id for d in docs_of(tmp_path / "dedup-3-1")}
    assert kept == set(oracle_first.values())
    for doc in docs_of(tmp_path / "dedup-3-1", rejected=True):
        assert doc.reason == "duplicate_document" and doc.meta["duplicate_of"] == oracle_first[doc.text]


# ---------------------------------------------------------------------------------------------
# cc_line_dedup

BOILERPLATE = "Copyright 2023 Example Corp. All rights reserved."


def test_line_dedup_removes_a_repeated_line_from_every_copy_including_the_first():
    docs = [
        cc_doc("a", f"Alpha opens here.\n{BOILERPLATE}\nAlpha closes."),
        cc_doc("b", f"Beta says hello.\n{BOILERPLATE.replace('2023', '1999').upper()}"),
        cc_doc("c", "Gamma has nothing in common."),
        cc_doc("d", BOILERPLATE),
    ]
    out = {d.id: d for d in CCLineDedup()(docs)}
    assert out["cc/a"].text == "Alpha opens here.\nAlpha closes."  # the first copy is removed too
    assert out["cc/b"].text == "Beta says hello."
    assert out["cc/c"].text == "Gamma has nothing in common." and not out["cc/c"].rejected
    assert out["cc/d"].reason == "empty_after_line_dedup"
    assert out["cc/a"].columns["lines_removed"] == 1


def test_line_dedup_keeps_the_first_of_lines_repeated_only_inside_one_page():
    """cc_net looks up a page's hashes before adding them: a line only this page repeats is no one's
    duplicate (finalize_doc keeps its first copy); a line also in another page goes everywhere."""
    docs = [
        cc_doc("a", f"Menu\nAlpha opens here.\nMenu\n{BOILERPLATE}\nMenu\nAlpha closes."),
        cc_doc("b", f"Beta says hello.\n{BOILERPLATE}\n{BOILERPLATE}"),
    ]
    out = {d.id: d for d in CCLineDedup()(docs)}
    assert out["cc/a"].text == "Menu\nAlpha opens here.\nAlpha closes."
    assert out["cc/a"].columns["lines_removed"] == 3  # two repeats of Menu, the shared line
    assert out["cc/b"].text == "Beta says hello." and out["cc/b"].columns["lines_removed"] == 2


def test_line_dedup_empties_every_copy_of_a_duplicated_page():
    """cc_net has no page dedup: two identical pages share every line, so both are emptied."""
    text = "A page that was crawled twice.\nIts second line."
    out = {d.id: d for d in CCLineDedup()([cc_doc("a", text), cc_doc("b", text), cc_doc("c", "Another page.")])}
    assert out["cc/a"].reason == out["cc/b"].reason == "empty_after_line_dedup"
    assert out["cc/c"].reason is None


def test_line_dedup_groups_hold_group_pages_pages(tmp_path):
    p0 = write_part(tmp_path / "p0.parquet", [cc_doc("a", f"Alpha.\n{BOILERPLATE}")])
    p1 = write_part(tmp_path / "p1.parquet", [cc_doc("b", f"Beta.\n{BOILERPLATE}")])
    p2 = write_part(tmp_path / "p2.parquet", [cc_doc("c", f"Gamma.\n{BOILERPLATE}"), cc_doc("d", "Delta.")])
    separate = run_stage(CCLineDedup({"group_pages": 1}), [p0, p1], tmp_path / "groups_of_1")
    assert_reconciles(separate)
    assert all(BOILERPLATE in d.text for d in docs_of(tmp_path / "groups_of_1"))  # one copy per group
    assert separate["stats"]["groups"] == 2 and separate["stats"]["lines_removed"] == 0
    together = run_stage(CCLineDedup({"group_pages": 2}), [p0, p1], tmp_path / "groups_of_2")
    assert [d.text for d in docs_of(tmp_path / "groups_of_2")] == ["Alpha.", "Beta."]
    stats = together["stats"]
    assert stats["groups"] == 1 and stats["group_pages"] == 2 and stats["pages_per_group"] == [2]
    assert stats["lines_removed"] == 2 and stats["unique_line_hashes"] == 3
    # Whole parts until a group holds group_pages: [p0, p1] (2 pages), then [p2] (2 pages).
    three = run_stage(CCLineDedup({"group_pages": 2}), [p0, p1, p2], tmp_path / "three")
    assert three["stats"]["pages_per_group"] == [2, 2]
    assert [d.text for d in docs_of(tmp_path / "three")] == ["Alpha.", "Beta.", f"Gamma.\n{BOILERPLATE}", "Delta."]


def test_groups_are_whole_parts_in_order():
    from pipeline.commoncrawl.line_dedup import groups_of

    assert groups_of([3, 3, 3, 3], 6) == [range(0, 2), range(2, 4)]
    assert groups_of([5, 1, 7, 2], 6) == [range(0, 2), range(2, 3), range(3, 4)]
    assert groups_of([1, 1], 100) == [range(0, 2)]


# ---------------------------------------------------------------------------------------------
# cc_langid

FRENCH = ("La vallée est connue pour ses vergers, ses vieux ponts de pierre et ses routes tranquilles.\n"
          "Les habitants ont construit des moulins au bord de l'eau il y a plusieurs siècles.")
CHINESE = "这个山谷以果园、古老的石桥和安静的道路而闻名。\n几个世纪以来，居民们在河边建造了磨坊。"


def test_langid_keeps_english_and_drops_french_and_chinese(tmp_path):
    part = write_part(tmp_path / "p0.parquet", [cc_doc("en", PROSE), cc_doc("fr", FRENCH), cc_doc("zh", CHINESE)])
    manifest = run_stage(CCLangId(), [part], tmp_path / "langid")
    assert_reconciles(manifest)
    kept = docs_of(tmp_path / "langid")
    assert [d.id for d in kept] == ["cc/en"] and kept[0].columns["language"] == "en"
    assert kept[0].columns["language_score"] >= 0.5
    rejected = {d.id: d for d in docs_of(tmp_path / "langid", rejected=True)}
    assert rejected["cc/fr"].reason == "non_english:fr" and rejected["cc/fr"].columns["language"] == "fr"
    assert rejected["cc/zh"].reason == "non_english:zh" and rejected["cc/zh"].columns["language_score"] > 0.5
    assert manifest["stats"]["language_distribution"] == {"en": 1, "fr": 1, "zh": 1}


def test_langid_low_score_english_is_rejected_with_its_own_reason():
    out = CCLangId({"threshold": 0.999})([cc_doc("en", "Hello there")])
    assert out[0].reason.startswith("low_language_score") and out[0].columns["language"] == "en"


# ---------------------------------------------------------------------------------------------
# cc_perplexity

TOPIC_NAMES = sorted(topics)
TRAIN_TOPICS = [t for t in TOPIC_NAMES[0::2] if len(topics[t]) < 15000]
HELD_TOPICS = [t for t in TOPIC_NAMES[1::2] if 1500 < len(topics[t]) < 15000]


def gibberish(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    letters = "qxzjkvwy"
    text = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(words))
    return "\n".join(text[i : i + 80] for i in range(0, len(text), 80))


def wikipedia_stand_in(folder: Path, ref_urls: dict[str, list[str]] | None = None) -> Path:
    docs = [Document(id=f"wikipedia/{i}", text=topics[t], source="wikipedia",
                     meta={"title": t, "ref_urls": (ref_urls or {}).get(t, [])}, columns={"language": "en"})
            for i, t in enumerate(TRAIN_TOPICS)]
    docs.append(Document(id="wikipedia/fr", text=FRENCH * 20, source="wikipedia", meta={}, columns={"language": "fr"}))
    return fake_stage(folder, "wikipedia_clean", docs, {"language": pa.string()})


def test_perplexity_ranks_prose_below_gibberish_and_buckets_by_cutoffs(tmp_path):
    wiki = wikipedia_stand_in(tmp_path / "wikipedia_clean")
    pages = [cc_doc(f"prose{i}", topics[t], language="en") for i, t in enumerate(HELD_TOPICS)]
    pages += [cc_doc(f"noise{i}", gibberish(i), language="en") for i in range(4)]
    part = write_part(tmp_path / "p0.parquet", pages, {"language": pa.string()})
    stage = CCPerplexity({"sp_vocab_size": 2000, "cutoffs": "percentiles"}, refs={"wikipedia_clean": wiki})
    manifest = run_stage(stage, [part], tmp_path / "perplexity")
    assert_reconciles(manifest)
    stats = manifest["stats"]
    assert 0 < stats["head_cutoff"] <= stats["tail_cutoff"] and stats["reference_pages"] == len(pages)
    out = {d.id: d for d in docs_of(tmp_path / "perplexity") + docs_of(tmp_path / "perplexity", rejected=True)}
    prose = [out[f"cc/prose{i}"].columns["perplexity"] for i in range(len(HELD_TOPICS))]
    noise = [out[f"cc/noise{i}"].columns["perplexity"] for i in range(4)]
    assert max(prose) < min(noise)
    for doc in out.values():
        pp, bucket = doc.columns["perplexity"], doc.columns["bucket"]
        expected = "head" if pp < stats["head_cutoff"] else "middle" if pp < stats["tail_cutoff"] else "tail"
        assert bucket == expected and (doc.reason == "perplexity_tail") == (bucket == "tail")
    assert all(out[f"cc/noise{i}"].reason == "perplexity_tail" for i in range(4))
    artifacts = {Path(a["path"]).name for a in manifest["artifacts"]}
    assert {"sp.model", "en.5gram.binary"} <= artifacts
    # cc_net's pipeline by hand on a two-line page: normalize(page) (its newlines deleted), one
    # SentencePiece call, DocLM on the one resulting sentence: 10 ** (-log10 / (pieces + 1)).
    import kenlm
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "perplexity/artifacts/sp.model"))
    lm = kenlm.Model(str(tmp_path / "perplexity/artifacts/en.5gram.binary"))
    page = "The Loop ends HERE.\n\nValues 1, 2 – and 3!"
    assert normalize_for_lm(page) == "the loop ends here.values 0, 0 - and 0!"
    pieces = sp.encode(normalize_for_lm(page), out_type=str)
    expected = round(10 ** (-lm.score(" ".join(pieces), bos=True, eos=True) / (len(pieces) + 1)), 1)
    assert stage.model.perplexity(page) == expected
    assert stats["scoring"] == "page" and stats["cutoffs"] == "percentiles"


def test_fixed_cutoffs_bucket_every_crawl_alike_and_are_calibrated_once(tmp_path):
    """cc_net's default: head/tail cutoffs fixed in the config (its cutoff.csv), not each build's
    own percentiles. calibrate() computes them once on a reference sample; a build of other pages
    is then bucketed against the same numbers; a missing cutoff is a clear error."""
    wiki = wikipedia_stand_in(tmp_path / "wikipedia_clean")
    reference = write_part(tmp_path / "ref.parquet", [cc_doc(f"prose{i}", topics[t], language="en")
                                                       for i, t in enumerate(HELD_TOPICS)] +
                           [cc_doc(f"noise{i}", gibberish(i), language="en") for i in range(4)], {"language": pa.string()})
    config = {"sp_vocab_size": 2000}
    with pytest.raises(StageError, match="calibrate-perplexity"):
        run_stage(CCPerplexity(config, refs={"wikipedia_clean": wiki}), [reference], tmp_path / "nothing")
    values = CCPerplexity(config, refs={"wikipedia_clean": wiki}).calibrate([reference])
    assert values["reference_pages"] == len(HELD_TOPICS) + 4 and values["head_cutoff"] < values["tail_cutoff"]
    fixed = config | {k: values[k] for k in ("head_cutoff", "tail_cutoff", "calibrated_model")}
    # A crawl of only gibberish: with fixed cutoffs all of it is tail (percentiles would keep 60%).
    noise = write_part(tmp_path / "noise.parquet", [cc_doc(f"n{i}", gibberish(100 + i), language="en") for i in range(10)],
                       {"language": pa.string()})
    manifest = run_stage(CCPerplexity(fixed, refs={"wikipedia_clean": wiki}), [noise], tmp_path / "fixed")
    assert manifest["rejected_by_reason"] == {"perplexity_tail": 10}
    assert (manifest["stats"]["head_cutoff"], manifest["stats"]["tail_cutoff"]) == (values["head_cutoff"], values["tail_cutoff"])
    assert manifest["stats"]["model_sha256"] == values["calibrated_model"] and "warnings" not in manifest["stats"]
    relative = run_stage(CCPerplexity(config | {"cutoffs": "percentiles"}, refs={"wikipedia_clean": wiki}), [noise],
                         tmp_path / "percentiles")
    assert relative["docs_kept"] == 6  # the 60% below the 60th percentile of its own pages
    stale = run_stage(CCPerplexity(fixed | {"calibrated_model": "0" * 64}, refs={"wikipedia_clean": wiki}), [noise],
                      tmp_path / "stale")
    assert "calibrated on another model" in stale["stats"]["warnings"][0]


# ---------------------------------------------------------------------------------------------
# cc_wikiref

SPAM_WORDS = ("cheap best price casino bonus free click here win now deal discount replica watches "
              "buy online pills top offer limited time hot sexy singles loan fast cash").split()


# fastText's defaults (RedPajama's) learn nothing from a few dozen pages: the demo spec's named
# small-corpus settings.
SMALL_CORPUS = {"epoch": 50, "lr": 0.5, "dim": 16}


def spam_page(seed: int) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(6, 14))) + "!!!" for _ in range(25)]
    return "\n".join(lines)


def test_wikiref_scores_cited_pages_above_random_pages(tmp_path):
    cited = {t: [f"HTTP://Docs.Example.ORG/{t}/"] for t in TRAIN_TOPICS}  # lightly different from the CC URL
    wiki = wikipedia_stand_in(tmp_path / "wikipedia_clean", cited)
    positives = [cc_doc(f"ref-{t}", topics[t], url=f"http://docs.example.org/{t}") for t in TRAIN_TOPICS]
    negatives = [cc_doc(f"spam{i}", spam_page(i)) for i in range(len(TRAIN_TOPICS) + 10)]
    part = write_part(tmp_path / "p0.parquet", positives + negatives)
    manifest = run_stage(CCWikiRef(SMALL_CORPUS, refs={"wikipedia_clean": wiki}), [part], tmp_path / "wikiref")
    assert_reconciles(manifest)
    stats = manifest["stats"]
    long_enough = sum(len(topics[t]) >= 1000 for t in TRAIN_TOPICS)  # RedPajama: cited pages of 1,000+ characters
    assert stats["positives"] == long_enough == stats["negatives"]
    held = stats["held_out"]
    assert held["examples"] > 0 and {"precision", "recall", "accuracy"} <= set(held)
    assert held["accuracy"] >= 0.8  # prose vs spam is easy: a working classifier separates them
    out = {d.id: d for d in docs_of(tmp_path / "wikiref") + docs_of(tmp_path / "wikiref", rejected=True)}
    assert len(out) == len(positives) + len(negatives)  # every page is scored
    pos = np.mean([out[d.id].columns["wikiref_score"] for d in positives])
    neg = np.mean([out[d.id].columns["wikiref_score"] for d in negatives])
    assert pos > neg + 0.3
    for doc in out.values():
        assert (doc.reason == "wikiref_below_threshold") == (doc.columns["wikiref_score"] < 0.25)
    assert "wikiref.bin" in {Path(a["path"]).name for a in manifest["artifacts"]}

    # Deterministic: a second training on the same pages gives the same scores, bit for bit
    # (the fastText wheel's uninitialized rows once made this random; see train_classifier).
    run_stage(CCWikiRef(SMALL_CORPUS, refs={"wikipedia_clean": wiki}), [part], tmp_path / "again")
    again = {d.id: d.columns["wikiref_score"] for d in docs_of(tmp_path / "again") + docs_of(tmp_path / "again", rejected=True)}
    assert again == {i: d.columns["wikiref_score"] for i, d in out.items()}


def test_wikiref_learns_from_its_input_and_cited_pages_of_1000_characters(tmp_path):
    """RedPajama's corpus: positives are cited pages of at least 1,000 characters, and the training
    pages are the head/middle ones this stage reads (after the perplexity filter); cc_langid's pages
    only with `training_pages: before_perplexity`."""
    cited = {t: [f"http://docs.example.org/{t}"] for t in TRAIN_TOPICS}
    wiki = wikipedia_stand_in(tmp_path / "wikipedia_clean", cited)
    positives = [cc_doc(f"ref-{t}", topics[t], url=f"http://docs.example.org/{t}") for t in TRAIN_TOPICS]
    short = cc_doc("short", "A cited page of a few words.", url=f"http://docs.example.org/{TRAIN_TOPICS[0]}")
    negatives = [cc_doc(f"spam{i}", spam_page(i)) for i in range(len(TRAIN_TOPICS) + 10)]
    part = write_part(tmp_path / "p0.parquet", positives + [short] + negatives)
    langid = fake_stage(tmp_path / "cc_langid", "cc_langid", positives[:6] + negatives[:8])
    refs = {"wikipedia_clean": wiki, "cc_langid": langid}
    stats = run_stage(CCWikiRef(SMALL_CORPUS, refs=refs), [part], tmp_path / "input")["stats"]
    long_enough = sum(len(topics[t]) >= 1000 for t in TRAIN_TOPICS)
    assert stats["training_pages"] == "input" and stats["positives"] == long_enough
    assert stats["cited_pages_too_short"] == len(TRAIN_TOPICS) - long_enough + 1
    before = run_stage(CCWikiRef(SMALL_CORPUS | {"training_pages": "before_perplexity", "min_positives": 2}, refs=refs),
                       [part], tmp_path / "before")["stats"]
    assert before["positives"] == sum(len(topics[t]) >= 1000 for t in TRAIN_TOPICS[:6]) and before["negatives"] <= 8


def test_wikiref_without_enough_cited_pages_is_an_error(tmp_path):
    wiki = wikipedia_stand_in(tmp_path / "wikipedia_clean", {TRAIN_TOPICS[0]: ["http://only.example/one"]})
    part = write_part(tmp_path / "p0.parquet", [cc_doc("one", PROSE, url="http://only.example/one/"),
                                                cc_doc("two", spam_page(1))])
    with pytest.raises(StageError, match="min_positives"):
        run_stage(CCWikiRef(SMALL_CORPUS, refs={"wikipedia_clean": wiki}), [part], tmp_path / "wikiref")
    assert not (tmp_path / "wikiref").exists()


def test_url_normalization_is_light():
    assert normalize_url(" HTTPS://Example.COM/Path/ ") == "https://example.com/Path"
    assert normalize_url("<https://a.org/x#frag>") == "https://a.org/x"


# ---------------------------------------------------------------------------------------------
# real Common Crawl samples


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real-data samples not found at {REALDATA}")
def test_real_wet_samples_ingest_and_langid(tmp_path):
    # cc_net's sample has hand-made Content-Lengths that do not match its bytes (the zh/ru ones
    # count characters): trusted, every record is unreadable; read like cc_net (the default), the
    # warcinfo and the 3 pages are recovered, with cc_net's url, title and lines.
    strict = run_stage(CCIngest({"trust_content_length": True}), [REALDATA / "ccnet-sample.warc.wet"], tmp_path / "strict")
    assert strict["docs_kept"] == 0 and strict["rejected_by_reason"] == {"unreadable_record": 4}
    ingest = run_stage(CCIngest(), [REALDATA / "ccnet-sample.warc.wet", REALDATA / "whirlwind.warc.wet.gz"], tmp_path / "ingest")
    assert_reconciles(ingest)
    assert ingest["docs_in"] == 4 and ingest["stats"]["records_recovered"] == 4
    assert ingest["rejected_by_reason"] == {"too_short": 1}  # the zh page has 100 characters
    pages = {d.meta["url"]: d for d in docs_of(tmp_path / "ingest") + docs_of(tmp_path / "ingest", rejected=True)}
    # what cc_net's group_by_docs/parse_doc give for this file (its raw_content, empty lines dropped)
    assert pages["http://sample_english.com"].meta["title"] == "Famous Mark Twain Quotes"
    assert pages["http://sample_english.com"].text.split("\n")[-1] == "Fiction is obliged to stick to possibilities. Truth isn't."
    assert [len(pages[u].text) for u in ("http://sample_english.com", "http://sample_chinese.zh", "http://sample_russian.ru")] == [328, 100, 324]
    langid = run_stage(CCLangId(), [tmp_path / "ingest"], tmp_path / "langid")
    assert_reconciles(langid)
    kept = docs_of(tmp_path / "langid")
    assert [d.meta["url"] for d in kept] == ["http://sample_english.com"]
    assert "Mark Twain" in kept[0].meta["title"]
    rejected = {d.meta["url"]: d for d in docs_of(tmp_path / "langid", rejected=True)}
    assert rejected["http://sample_russian.ru"].reason == "non_english:ru"
    wiki_page = rejected["https://an.wikipedia.org/wiki/Escopete"]
    assert wiki_page.columns["language"] != "en" and wiki_page.reason.startswith("non_english:")
