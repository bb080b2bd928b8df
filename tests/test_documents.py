"""The stage-folder contract: parts, rejected parts with reasons, manifest, atomic commit."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.documents import (
    Document,
    StageError,
    StageFolder,
    is_complete,
    kept_parts,
    read_documents,
    read_manifest,
    rejected_parts,
    write_documents,
)
from pipeline.stage import Stage, StageConfig, run_stage


class MinLengthConfig(StageConfig):
    min_chars: int = 10


class MinLength(Stage):
    """A toy filter used only here: rejects short texts and annotates the length."""

    name = "test_min_length"
    columns = {"n_chars": pa.int64()}
    Config = MinLengthConfig

    def process(self, docs, part=0):
        for doc in docs:
            doc.columns["n_chars"] = len(doc.text)
            if len(doc.text) < self.config.min_chars:
                doc.reject("too_short")
            yield doc


class Explodes(MinLength):
    name = "test_explodes"

    def process(self, docs, part=0):
        for i, doc in enumerate(docs):
            if i == 2:
                raise RuntimeError("boom")
            yield doc


def _docs(n, short_every=3):
    return [
        Document(id=f"t/{i}", text=("x" * 3 if i % short_every == 0 else f"document number {i} " * 3), source="cc", meta={"i": i})
        for i in range(n)
    ]


def test_roundtrip_keeps_meta_and_annotations(tmp_path):
    path = tmp_path / "a.parquet"
    docs = _docs(5)
    for d in docs:
        d.columns["score"] = d.meta["i"] / 10
    write_documents(path, docs, {"score": pa.float64()})
    back = list(read_documents(path))
    assert [d.id for d in back] == [d.id for d in docs]
    assert back[3].meta == {"i": 3}
    assert back[3].columns["score"] == pytest.approx(0.3)
    assert pq.read_metadata(path).schema.to_arrow_schema().field("text").type == pa.string()


def test_run_stage_writes_contract_and_reconciles(tmp_path):
    inputs = []
    for part in range(2):
        path = tmp_path / f"in-{part}.parquet"
        write_documents(path, _docs(7))
        inputs.append(path)
    out = tmp_path / "build" / "test_min_length"
    manifest = run_stage(MinLength({"min_chars": 10}), inputs, out)

    assert is_complete(out)
    assert manifest["docs_in"] == 14
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"]
    assert manifest["rejected_by_reason"] == {"too_short": 6}  # ids 0, 3, 6 in each part
    assert manifest["config"] == {"min_chars": 10} and len(manifest["config_hash"]) == 16
    assert manifest["code_version"].startswith("0.1.0+")
    assert all(len(entry["sha256"]) == 64 for entry in manifest["inputs"] + manifest["outputs"])

    kept = [d for p in kept_parts(out) for d in read_documents(p)]
    rejected = [d for p in rejected_parts(out) for d in read_documents(p)]
    assert len(kept) == 8 and all(d.columns["n_chars"] >= 10 for d in kept)
    assert {d.reason for d in rejected} == {"too_short"}
    table = pq.read_table(rejected_parts(out)[0])
    assert set(table.column("stage").to_pylist()) == {"test_min_length"}


def test_failed_stage_leaves_previous_complete_folder_untouched(tmp_path):
    path = tmp_path / "in.parquet"
    write_documents(path, _docs(5))
    out = tmp_path / "stage"
    run_stage(MinLength(), [path], out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(Explodes(), [path], out)
    assert (out / "manifest.json").read_text() == before
    assert not any(p.name.startswith(".stage.tmp") for p in tmp_path.iterdir())


def test_incomplete_upstream_is_a_clear_error(tmp_path):
    half = tmp_path / "half_done"
    (half / "kept").mkdir(parents=True)
    with pytest.raises(StageError, match="incomplete stage folder"):
        run_stage(MinLength(), [half], tmp_path / "next")
    with pytest.raises(StageError, match="not found"):
        run_stage(MinLength(), [tmp_path / "missing.parquet"], tmp_path / "next")


def test_truncated_parquet_names_the_file(tmp_path):
    path = tmp_path / "in.parquet"
    write_documents(path, _docs(5))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(StageError, match="in.parquet"):
        run_stage(MinLength(), [path], tmp_path / "out")


def test_stage_folder_counts_must_reconcile(tmp_path):
    with pytest.raises(Exception):
        with StageFolder(tmp_path / "s", "bad", {}) as folder:
            folder.counts.docs_in = 3  # a stage that lost documents cannot commit
    assert not (tmp_path / "s").exists()


def test_manifest_is_json_with_relative_inputs(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    src = build / "in.parquet"
    write_documents(src, _docs(3))
    run_stage(MinLength(), [src], build / "stage")
    manifest = read_manifest(build / "stage")
    assert manifest["inputs"][0]["path"] == "in.parquet"
    json.dumps(manifest)


class HalveText(MinLength):
    name = "test_halve_text"

    def process(self, docs, part=0):
        for doc in docs:
            doc.text = doc.text[: len(doc.text) // 2]
            yield doc


def test_bytes_in_is_measured_before_the_stage_edits_text(tmp_path):
    docs = [Document(id=f"t/{i}", text="abcd" * 10, source="cc") for i in range(3)]
    write_documents(tmp_path / "in.parquet", docs)
    manifest = run_stage(HalveText(), [tmp_path / "in.parquet"], tmp_path / "out")
    assert manifest["bytes_in"] == 3 * 40
    assert manifest["bytes_kept"] == 3 * 20


def test_extra_inputs_are_part_of_the_identity(tmp_path):
    from pipeline.stage import is_up_to_date

    side = tmp_path / "reference.txt"
    side.write_text("v1")

    class WithSideFile(MinLength):
        name = "test_with_side_file"

        def extra_inputs(self):
            return [side]

    write_documents(tmp_path / "in.parquet", _docs(3))
    manifest = run_stage(WithSideFile(), [tmp_path / "in.parquet"], tmp_path / "out")
    assert any(entry["path"].endswith("reference.txt") for entry in manifest["inputs"])
    assert is_up_to_date(WithSideFile(), [tmp_path / "in.parquet"], tmp_path / "out")
    side.write_text("v2")
    assert not is_up_to_date(WithSideFile(), [tmp_path / "in.parquet"], tmp_path / "out")


def test_a_killed_runs_leftovers_are_removed_and_a_live_runs_are_not(tmp_path):
    import os
    import socket
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid whose process is gone, as after kill -9
    dead = tmp_path / f".s.tmp-{finished.pid}"
    (dead / "kept").mkdir(parents=True)
    old = tmp_path / f".s.old-{finished.pid}"
    old.mkdir()
    live = tmp_path / f".s.tmp-{os.getppid()}"  # our parent is alive: its folder stays
    live.mkdir()
    other = tmp_path / f".t.tmp-{finished.pid}"  # another stage's leftover is not this stage's to remove
    other.mkdir()
    here = tmp_path / f".s.tmp-{finished.pid}@{socket.gethostname()}"  # today's names carry the host
    here.mkdir()
    elsewhere = tmp_path / f".s.tmp-{finished.pid}@another-host"  # its pid says nothing on this host
    elsewhere.mkdir()
    with StageFolder(tmp_path / "s", "s", {}) as folder:
        with folder.part(0, {}) as part:
            part.write(Document(id="a", text="x", source="cc"))
    assert not dead.exists() and not old.exists() and not here.exists()
    assert live.exists() and other.exists() and elsewhere.exists() and (tmp_path / "s" / "manifest.json").exists()
