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
