"""The llama-recipe command: listing, single-stage runs, model info, spec validation."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.documents import Document, read_manifest, write_documents
from pipeline.spec import SPEC_DIR, load_spec
from pipeline.documents import StageError

runner = CliRunner()


def test_stages_lists_one_stage_per_line():
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.strip().splitlines()]
    for expected in ("cc_ingest", "cc_line_dedup", "cc_langid", "cc_perplexity", "cc_wikiref", "c4_quality",
                     "github_filter", "wikipedia_clean", "books_dedup", "arxiv_clean", "stackexchange_ingest"):
        assert expected in names
    assert len(names) == len(set(names))


def test_model_info_7b_counts_parameters_exactly():
    result = runner.invoke(app, ["model-info", "7B"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"] == 6738415616


def test_run_stage_outside_a_flow(tmp_path):
    english = "The quick brown fox jumps over the lazy dog near the river bank every single morning. " * 4
    french = "Le renard brun rapide saute par-dessus le chien paresseux au bord de la rivière chaque matin. " * 4
    write_documents(tmp_path / "in.parquet", [Document("cc/1", english, "cc"), Document("cc/2", french, "cc")])
    result = runner.invoke(
        app, ["run-stage", "cc_langid", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert (manifest["docs_kept"], manifest["docs_rejected"]) == (1, 1)
    assert manifest["rejected_by_reason"] == {"non_english": 1}


def test_run_stage_partitions_change_the_memory_split_not_the_bytes(tmp_path):
    """--partitions: a partitioned dedup's hash partitions (less memory per reduce job)."""
    page = "A line that two pages share word for word, long enough to count as a line.\nAnd one of its own {}."
    docs = [Document(f"cc/{i}", page.format("abcdefg"[i % 7] * 3), "cc") for i in range(40)]
    write_documents(tmp_path / "in.parquet", docs)
    folders = {}
    for partitions in ("1", "7", None):
        out = tmp_path / f"out-{partitions}"
        args = ["run-stage", "cc_doc_dedup", "--input", str(tmp_path / "in.parquet"), "--output", str(out)]
        result = runner.invoke(app, args + (["--partitions", partitions] if partitions else []))
        assert result.exit_code == 0, result.output
        folders[partitions] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "timing.json"}
    assert folders["1"] == folders["7"] == folders[None]
    assert read_manifest(tmp_path / "out-7")["rejected_by_reason"] == {"duplicate_document": 33}
    result = runner.invoke(app, ["run-stage", "cc_doc_dedup", "--input", str(tmp_path / "in.parquet"),
                                 "--output", str(tmp_path / "bad"), "--partitions", "0"])
    assert result.exit_code == 2 and "partitions" in result.output


def test_run_stage_missing_input_names_the_file(tmp_path):
    missing = tmp_path / "nope.warc.wet.gz"
    result = runner.invoke(app, ["run-stage", "cc_ingest", "--input", str(missing), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "nope.warc.wet.gz" in result.output


def test_shipped_specs_load():
    for name in ("demo", "llama1"):
        spec = load_spec(name)
        assert spec.source_order().index("wikipedia") < spec.source_order().index("cc")
        assert abs(sum(s.share for s in spec.mixture.sources.values()) - 1) < 1e-9


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda raw: raw["sources"]["cc"]["stages"].update({"cc_langidd": {}}), "unknown stage"),
        (lambda raw: raw["sources"]["cc"]["stages"]["cc_langid"].update({"treshold": 0.4}), "cc_langid"),
        (lambda raw: raw["sources"].update({"reddit": raw["sources"]["c4"]}), "unknown source"),
    ],
)
def test_bad_spec_fails_at_load_with_a_clear_message(tmp_path, edit, message):
    raw = yaml.safe_load((SPEC_DIR / "demo.yaml").read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(StageError, match=message):
        load_spec(path)


def test_samples_command_writes_every_source(tmp_path):
    result = runner.invoke(app, ["samples", "--out", str(tmp_path / "s"), "--seed", "2", "--scale", "0.05"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "SAMPLES.json").read_text())
    assert set(manifest["sources"]) == {"cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange"}
    for info in manifest["sources"].values():
        assert info["files"] and all((tmp_path / "s" / f).stat().st_size > 0 for f in info["files"])


def test_rerun_refuses_a_folder_that_is_not_a_build_and_an_unknown_stage(tmp_path):
    result = runner.invoke(app, ["rerun", "cc_langid", "--build", str(tmp_path)])
    assert result.exit_code == 2 and "BUILD.json" in result.output
    (tmp_path / "BUILD.json").write_text(json.dumps({"spec": "demo", "inputs": str(tmp_path)}))
    result = runner.invoke(app, ["rerun", "cc_langdi", "--build", str(tmp_path)])
    assert result.exit_code == 2 and "no stage cc_langdi" in result.output


def test_build_runs_on_one_cluster_dask_or_ray_not_both(tmp_path):
    from pipeline.executor import executor_for

    result = runner.invoke(app, ["build", "--spec", "demo", "--out", str(tmp_path / "build"),
                                 "--dask", "tcp://127.0.0.1:8786", "--ray", "auto"])
    assert result.exit_code == 2 and "--dask and --ray are mutually exclusive" in result.output
    assert not (tmp_path / "build").exists()
    with pytest.raises(ValueError, match="a Dask address and a Ray address"):
        executor_for(dask_address="tcp://127.0.0.1:8786", ray_address="auto")


def test_stages_marks_the_stages_whose_parts_run_in_parallel():
    result = runner.invoke(app, ["stages"])
    lines = {line.split()[0]: line for line in result.output.strip().splitlines()}
    assert "parts||" in lines["cc_langid"] and "parts||" in lines["cc_line_dedup"]
    # Every stage of the recipe (issue 13); test modules may have registered stages of their own.
    recipe = [name for source in load_spec(SPEC_DIR / "demo.yaml").sources.values() for name in source.stages]
    assert len(recipe) == 18 and all("parts||" in lines[name] and "cluster" in lines[name] for name in recipe)
    assert "cluster" in lines["cc_perplexity"] and "cluster" in lines["cc_line_dedup"]


def test_publish_uploads_a_build_and_refuses_a_folder_that_is_not_one(tmp_path, s3_bucket):
    from tests.test_storage import small_build

    fs, bucket = s3_bucket
    refused = runner.invoke(app, ["publish", str(tmp_path), f"s3://{bucket}/b"])
    assert refused.exit_code == 2 and "no BUILD.json" in refused.output
    build = small_build(tmp_path)
    first = runner.invoke(app, ["publish", str(build), f"s3://{bucket}/b"])
    assert first.exit_code == 0, first.output
    assert "2 folders uploaded, 0 unchanged" in first.output
    assert fs.exists(f"{bucket}/b/stages/c4_quality/manifest.json") and fs.exists(f"{bucket}/b/BUILD.json")
    again = runner.invoke(app, ["publish", str(build), f"s3://{bucket}/b"])
    assert "0 folders uploaded, 2 unchanged" in again.output


def test_calibrate_perplexity_writes_fixed_cutoffs_into_the_spec_keeping_its_comments(tmp_path):
    """The first build of a spec without cutoffs stops at cc_perplexity; calibrate-perplexity on that
    build computes cc_net's cutoffs (percentiles of its model on the pages before the stage) and
    writes them into the spec, which then loads with `cutoffs: fixed` and the numbers."""
    import pyarrow as pa
    from pydoc_data.topics import topics

    from tests.test_commoncrawl import HELD_TOPICS, cc_doc, fake_stage, gibberish, wikipedia_stand_in

    build = tmp_path / "build"
    wikipedia_stand_in(build / "stages" / "wikipedia_clean")
    pages = [cc_doc(f"p{i}", topics[t], language="en") for i, t in enumerate(HELD_TOPICS)]
    fake_stage(build / "stages" / "cc_langid", "cc_langid", pages + [cc_doc("n", gibberish(1), language="en")],
               {"language": pa.string()})
    spec = tmp_path / "llama1.yaml"
    spec.write_text((SPEC_DIR / "llama1.yaml").read_text().replace("sp_vocab_size: 65536", "sp_vocab_size: 2000"))
    result = runner.invoke(app, ["calibrate-perplexity", "--build", str(build), "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    config = load_spec(spec).sources["cc"].stages["cc_perplexity"]
    assert config["cutoffs"] == "fixed" and 0 < config["head_cutoff"] < config["tail_cutoff"]
    assert len(config["calibrated_model"]) == 64
    assert f"head < {config['head_cutoff']}" in result.output
    text = spec.read_text()
    assert "# cc_net's SentencePiece size on Wikipedia" in text and "calibrate-perplexity --build BUILD" in text
    missing = runner.invoke(app, ["calibrate-perplexity", "--build", str(tmp_path / "nowhere"), "--spec", str(spec)])
    assert missing.exit_code == 2 and "not a complete stage folder" in missing.output
