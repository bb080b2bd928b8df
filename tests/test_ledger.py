"""The ledger (`llama-recipe verify BUILD`): a good build verifies; a tampered part, a deleted row,
a manifest edit, a missing reason and a half stage each fail with a line that names them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.documents import sha256_file
from pipeline.ledger import verify_build
from pipeline.samples import write_samples
from pipeline.stage import get_stage, run_stage


@pytest.fixture(scope="module")
def good_build(tmp_path_factory) -> Path:
    """A two-source build through run_stage: c4_ingest → c4_quality, github_ingest → github_filter."""
    root = tmp_path_factory.mktemp("ledger")
    samples = root / "samples"
    write_samples(samples, seed=1, scale=0.05)
    stages = root / "build" / "stages"
    for chain, raw in ((("c4_ingest", "c4_quality"), samples / "c4"), (("github_ingest", "github_filter"), samples / "github")):
        inputs = [raw]
        for name in chain:
            run_stage(get_stage(name)(), inputs, stages / name)
            inputs = [stages / name]
    return root / "build"


@pytest.fixture
def build(good_build, tmp_path) -> Path:
    copy = tmp_path / "build"
    shutil.copytree(good_build, copy)
    return copy


def _problems(build: Path) -> list[str]:
    report = verify_build(build)
    assert not report.ok
    return report.problems


def _rewrite_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_good_build_verifies(good_build):
    report = verify_build(good_build)
    assert report.ok, report.render()
    assert len(report.lines) == 4
    result = CliRunner().invoke(app, ["verify", str(good_build)])
    assert result.exit_code == 0, result.output
    assert "OK: 4 folders" in result.output


def test_tampered_part_fails(build):
    part = build / "stages" / "c4_quality" / "kept" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    problems = _problems(build)
    assert any("c4_quality/kept/part-00000.parquet: sha256 differs" in p for p in problems), problems
    result = CliRunner().invoke(app, ["verify", str(build)])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "c4_quality/kept/part-00000.parquet" in result.output


def test_deleted_row_fails_even_with_rehashed_manifest(build):
    folder = build / "stages" / "c4_quality"
    part = folder / "rejected" / "part-00000.parquet"
    table = pq.read_table(part)
    assert table.num_rows >= 1
    pq.write_table(table.slice(1), part, compression="zstd")
    assert any("rejected/part-00000.parquet: sha256 differs" in p for p in _problems(build))

    # Someone "fixes" the checksum too: the row count still gives it away.
    def rehash(manifest):
        for out in manifest["rejected_outputs"]:
            if out["path"] == "rejected/part-00000.parquet":
                out["sha256"], out["bytes"] = sha256_file(part), part.stat().st_size
    _rewrite_manifest(folder, rehash)
    problems = _problems(build)
    assert any(f"rejected/part-00000.parquet: {table.num_rows - 1} rows, the manifest says {table.num_rows}" in p
               for p in problems), problems


def test_manifest_edit_fails(build):
    _rewrite_manifest(build / "stages" / "c4_ingest", lambda m: m.update(docs_kept=m["docs_kept"] + 1))
    problems = _problems(build)
    assert any(p.startswith("stages/c4_ingest: docs_in") and "!= docs_kept" in p for p in problems), problems
    # ... and the next stage of the chain no longer reconciles with it.
    assert any(p.startswith("stages/c4_quality: docs_in") and "of stages/c4_ingest" in p for p in problems), problems


def test_rejected_row_without_reason_fails(build):
    folder = build / "stages" / "github_filter"
    part = next(p for p in sorted((folder / "rejected").glob("*.parquet")) if pq.ParquetFile(p).metadata.num_rows)
    table = pq.read_table(part)
    reasons = table["reason"].to_pylist()
    reasons[0] = None
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    pq.write_table(table, part, compression="zstd")
    rel = str(part.relative_to(folder))
    _rewrite_manifest(folder, lambda m: [o.update(sha256=sha256_file(part), bytes=part.stat().st_size)
                                         for o in m["rejected_outputs"] if o["path"] == rel])
    problems = _problems(build)
    assert any(f"github_filter/{rel}: 1 rejected row(s) without a reason" in p for p in problems), problems


def test_replaced_upstream_is_stale(build):
    # c4_ingest recomputed into different bytes after c4_quality ran: c4_quality's inputs are stale.
    folder = build / "stages" / "c4_ingest"
    part = folder / "kept" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table, part, compression="snappy")  # same rows, other bytes
    _rewrite_manifest(folder, lambda m: [o.update(sha256=sha256_file(part), bytes=part.stat().st_size)
                                         for o in m["outputs"] if o["path"] == "kept/part-00000.parquet"])
    problems = _problems(build)
    assert problems == ["stages/c4_quality: its input stages/c4_ingest/kept/part-00000.parquet is not the file "
                        "stages/c4_ingest wrote (stale: rerun it)"]


def test_half_stage_fails_and_temp_folder_is_a_note(build):
    (build / "stages" / "github_filter" / "manifest.json").unlink()
    (build / "stages" / ".c4_quality.tmp-123").mkdir()
    report = verify_build(build)
    assert not report.ok
    assert "stages/github_filter: incomplete stage folder (no manifest.json)" in report.problems
    assert any(".c4_quality.tmp-123" in n for n in report.notes)
