"""Bad input in the skeleton's scope, for every source's reader: an empty file and a truncated file
give rejected rows with a reason (the build goes on), counts reconcile, and a missing file is a
clear error naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.documents import StageError, read_documents, rejected_parts
from pipeline.samples import write_samples
from pipeline.stage import get_stage, run_stage

# (ingest stage, sample file relative to the samples folder)
READERS = [
    ("cc_ingest", "cc/CC-MAIN-sample-00000.warc.wet.gz"),
    ("c4_ingest", "c4/c4-train.00000-of-00002.json.gz"),
    ("github_ingest", "github/github-00000.jsonl.gz"),
    ("wikipedia_ingest", "wikipedia/enwiki-sample-pages-articles.xml.bz2"),
    ("books_ingest", "books/books3/books3-00000.jsonl.zst"),
    ("arxiv_ingest", "arxiv/arXiv_src_sample_000.tar"),
    ("stackexchange_ingest", "stackexchange/cs.stackexchange.com/Posts.xml"),
]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    write_samples(out, seed=3, scale=0.05)
    return out


def _copy_as(src: Path, dst_dir: Path) -> Path:
    # Keep the parent folder name: StackExchange takes the site from it.
    dst = dst_dir / src.parent.name / src.name
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    return dst


def _rejected(folder: Path):
    return [doc for part in rejected_parts(folder) for doc in read_documents(part)]


@pytest.mark.parametrize("stage_name, sample", READERS, ids=[r[0] for r in READERS])
def test_empty_file_is_a_rejected_row(tmp_path, samples, stage_name, sample):
    empty = _copy_as(samples / sample, tmp_path / "in")
    empty.write_bytes(b"")
    manifest = run_stage(get_stage(stage_name)(), [empty], tmp_path / "out")
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 1
    (row,) = _rejected(tmp_path / "out")
    assert row.reason == "empty_file"
    assert empty.name in row.id + str(row.meta)  # the row says which file


@pytest.mark.parametrize("stage_name, sample", READERS, ids=[r[0] for r in READERS])
def test_truncated_file_keeps_what_was_readable(tmp_path, samples, stage_name, sample):
    whole = _copy_as(samples / sample, tmp_path / "whole")
    full = run_stage(get_stage(stage_name)(), [whole], tmp_path / "full")

    cut = _copy_as(samples / sample, tmp_path / "cut")
    data = cut.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    manifest = run_stage(get_stage(stage_name)(), [cut], tmp_path / "out")

    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"]
    assert manifest["docs_rejected"] >= 1, "the damage must be recorded as a rejected row"
    assert manifest["docs_kept"] < full["docs_kept"] or full["docs_kept"] == 0
    reasons = {r.reason.split(":")[0] for r in _rejected(tmp_path / "out")} - set(full["rejected_by_reason"])
    assert reasons, "a truncated file gives a reason of its own"


@pytest.mark.parametrize("stage_name, sample", READERS, ids=[r[0] for r in READERS])
def test_missing_file_is_an_error_naming_it(tmp_path, stage_name, sample):
    missing = tmp_path / Path(sample).name
    with pytest.raises(StageError, match=Path(sample).name.replace(".", r"\.")):
        run_stage(get_stage(stage_name)(), [missing], tmp_path / "out")


# ---- records that parse but hold no valid text, or fields of the wrong type (issue 15) ----------

SURROGATE = '"\\ud800"'  # JSON's escape for a lone UTF-16 surrogate: json.loads gives a str no writer takes
GOOD_TEXT = "A sentence that is fine. " * 20


def _gz_lines(path: Path, lines: list[str]) -> Path:
    import gzip

    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0))
    return path


def _reasons(folder: Path) -> list[str]:
    return [d.reason for part in rejected_parts(folder) for d in read_documents(part)]


def _books3(path: Path, lines: list[str]) -> Path:
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress("".join(line + "\n" for line in lines).encode()))
    return path


@pytest.mark.parametrize("stage_name,writer,record", [
    ("c4_ingest", _gz_lines, '{"text": "hello " + S + " world", "url": "http://a/", "timestamp": "2019-04-25T12:57:54Z"}'),
    ("github_ingest", _gz_lines, '{"repo_name": "a/b", "path": "x.py", "license": "mit", "content": "print(1) " + S}'),
    ("books_ingest", _books3, '{"text": "%s" + S, "meta": {"title": "T"}}' % (GOOD_TEXT * 20)),
], ids=["c4", "github", "books3"])
def test_a_lone_surrogate_is_a_rejected_row_not_a_crashed_stage(tmp_path, stage_name, writer, record):
    good = {"c4_ingest": '{"text": "%s", "url": "http://b/"}' % GOOD_TEXT,
            "github_ingest": '{"repo_name": "a/b", "path": "y.py", "license": "mit", "content": "x = 1\\n"}',
            "books_ingest": '{"text": "%s", "meta": {"title": "U"}}' % (GOOD_TEXT * 20)}[stage_name]
    bad = record.replace('" + S + "', SURROGATE[1:-1]).replace('" + S', SURROGATE[1:])
    name = {"c4_ingest": "c4.json.gz", "github_ingest": "gh.jsonl.gz", "books_ingest": "b.jsonl.zst"}[stage_name]
    path = writer(tmp_path / name, [bad, good])
    manifest = run_stage(get_stage(stage_name)(), [path], tmp_path / "out")
    assert manifest["docs_in"] == 2 and manifest["docs_kept"] == 1
    assert _reasons(tmp_path / "out") == ["invalid_text:surrogate"]
    # Per config, the surrogate becomes U+FFFD and the record is kept (and counted).
    manifest = run_stage(get_stage(stage_name)({"invalid_text": "replace"}), [path], tmp_path / "replaced")
    assert manifest["docs_kept"] == 2 and manifest["stats"]["invalid_text_replaced"] == 1
    texts = [d.text for part in (tmp_path / "replaced" / "kept").glob("*.parquet") for d in read_documents(part)]
    assert any("\ufffd" in t for t in texts)


def test_a_field_of_the_wrong_type_is_a_rejected_row_naming_the_field(tmp_path):
    rows = ['{"repo_name": "a/b", "path": "x.py", "license": ["mit"], "content": "x = 1\\n"}',
            '{"repo_name": "a/b", "path": "y.py", "license": "mit", "size": {"bytes": 3}, "content": "y = 2\\n"}',
            '{"repo_name": "a/b", "path": "z.py", "license": "mit", "content": "z = 3\\n"}']
    path = _gz_lines(tmp_path / "gh.jsonl.gz", rows)
    run_stage(get_stage("github_ingest")(), [path], tmp_path / "ingest")
    assert _reasons(tmp_path / "ingest") == ["wrong_type:license", "wrong_type:size"]
    manifest = run_stage(get_stage("github_filter")(), [tmp_path / "ingest"], tmp_path / "filter")  # no crash downstream
    assert manifest["docs_in"] == 1
    c4 = _gz_lines(tmp_path / "c4.json.gz", ['{"text": "%s", "url": ["http://a/"]}' % GOOD_TEXT])
    run_stage(get_stage("c4_ingest")(), [c4], tmp_path / "c4")
    assert _reasons(tmp_path / "c4") == ["wrong_type:url"]


def test_a_failure_that_escapes_a_reader_names_the_stage_file_and_record(tmp_path, monkeypatch):
    from pipeline.documents import Document
    from pipeline.sources.c4 import C4Ingest

    def read(self, path):
        yield Document(id="c4/x/1", text="fine", source="c4")
        raise ZeroDivisionError("a bug in a reader")

    monkeypatch.setattr(C4Ingest, "read", read)
    path = _gz_lines(tmp_path / "c4.json.gz", ['{"text": "x"}'])
    with pytest.raises(StageError) as error:
        run_stage(C4Ingest(), [path], tmp_path / "out")
    assert str(error.value) == f"c4_ingest: {path}: record 2: ZeroDivisionError: a bug in a reader"
    assert not (tmp_path / "out").exists()  # nothing half-written is left as a stage folder


def test_a_failure_that_escapes_a_cleaner_names_the_stage_part_and_record(tmp_path, monkeypatch):
    from pipeline.sources.github import GithubFilter

    path = _gz_lines(tmp_path / "gh.jsonl.gz", ['{"repo_name": "a/b", "path": "%s.py", "license": "mit", '
                                                 '"content": "x = 1\\n"}' % name for name in "xyz"])
    run_stage(get_stage("github_ingest")(), [path], tmp_path / "ingest")

    def process(self, docs, part=0):
        for number, doc in enumerate(docs, 1):
            if number == 3:
                raise KeyError("license")
            yield doc

    monkeypatch.setattr(GithubFilter, "process", process)
    with pytest.raises(StageError, match=r"^github_filter: .*/ingest/kept/part-00000\.parquet: record 3: KeyError: 'license'$"):
        run_stage(GithubFilter(), [tmp_path / "ingest"], tmp_path / "filter")
