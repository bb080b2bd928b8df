"""Remote storage through fsspec (pipeline/storage.py) against a real S3 API: moto's S3 server on
127.0.0.1, spoken to by s3fs exactly as AWS or MinIO would be."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.documents import INPUTS_READ, RemoteFile, StageError, dependency_digest, read_manifest
from pipeline.sources.c4 import C4Ingest, C4Quality
from pipeline.stage import is_up_to_date, run_stage
from pipeline.storage import fetch_folder, is_remote, join, list_remote, publish


def c4_lines(n: int, seed: int) -> bytes:
    rows = [{"text": f"Document {seed}-{i}. " + "This is a plain English sentence about gardens and rain. " * 4,
             "url": f"https://example.com/{seed}/{i}", "timestamp": "2019-04-20T10:00:00Z"} for i in range(n)]
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0)


@pytest.fixture()
def raw_on_s3(s3_bucket):
    fs, bucket = s3_bucket
    for index in range(2):
        fs.pipe_file(f"{bucket}/raw/c4/c4-train.0000{index}-of-01024.json.gz", c4_lines(5, index))
    fs.pipe_file(f"{bucket}/raw/c4/README.txt", b"not an input")
    return fs, bucket


def test_urls_and_paths_are_told_apart_and_joined():
    assert is_remote("s3://b/k") and is_remote("https://host/x.wet.gz")
    assert not is_remote("/data/x") and not is_remote("file:///data/x") and not is_remote("rel/x")
    assert join("s3://b/raw/", "c4/*.json.gz") == "s3://b/raw/c4/*.json.gz"
    assert join("/data", "c4/*.json.gz") == "/data/c4/*.json.gz"
    assert join("/data", "s3://other/x") == "s3://other/x"


def test_remote_inputs_are_listed_never_downloaded_by_the_planner(raw_on_s3, tmp_path):
    fs, bucket = raw_on_s3
    copies = len(storage.COPIES_MADE)
    by_glob = list_remote(f"s3://{bucket}/raw/c4/*.json.gz")
    assert [f.url for f in by_glob] == [f"s3://{bucket}/raw/c4/c4-train.0000{i}-of-01024.json.gz" for i in range(2)]
    assert [f.size for f in by_glob] == [len(c4_lines(5, i)) for i in range(2)]
    # A folder is searched with the reader's patterns, as a local folder would be.
    assert list_remote(f"s3://{bucket}/raw/c4", C4Ingest.raw_patterns) == by_glob
    # An object rewritten in place is another version: another digest, so another stage identity.
    fs.pipe_file(f"{bucket}/raw/c4/c4-train.00001-of-01024.json.gz", c4_lines(7, 1))
    again = list_remote(f"s3://{bucket}/raw/c4", C4Ingest.raw_patterns)
    assert again[0] == by_glob[0] and again[1].digest != by_glob[1].digest and again[1].url == by_glob[1].url
    assert len(storage.COPIES_MADE) == copies  # listing read no object
    with pytest.raises(StageError, match="no file matches"):
        list_remote(f"s3://{bucket}/raw/c4/*.wet.gz")
    with pytest.raises(StageError, match="not found"):
        list_remote(f"s3://{bucket}/raw/missing.json.gz")


def test_a_stage_on_remote_inputs_writes_the_local_bytes_and_records_urls_versions_and_sha256(raw_on_s3, tmp_path, monkeypatch):
    fs, bucket = raw_on_s3
    scratch = tmp_path / "scratch"
    monkeypatch.setenv("LLAMA_RECIPE_SCRATCH", str(scratch))
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for index in range(2):
        (local_dir / f"c4-train.0000{index}-of-01024.json.gz").write_bytes(c4_lines(5, index))
    build = tmp_path / "build"
    copies = len(storage.COPIES_MADE)
    urls = [f"s3://{bucket}/raw/c4/*.json.gz"]
    remote = run_stage(C4Ingest(), urls, build / "stages" / "c4_ingest")
    local = run_stage(C4Ingest(), sorted(local_dir.iterdir()), tmp_path / "local-build" / "stages" / "c4_ingest")
    assert storage.COPIES_MADE[copies:] == [f"s3://{bucket}/raw/c4/c4-train.0000{i}-of-01024.json.gz" for i in range(2)]
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # each copy deleted once read
    assert not (build / "stages" / "c4_ingest" / INPUTS_READ).exists()
    assert [i["path"] for i in remote["inputs"]] == [f"s3://{bucket}/raw/c4/c4-train.0000{i}-of-01024.json.gz" for i in range(2)]
    assert all(i["version"]["size"] == str(i["bytes"]) and i["digest"] for i in remote["inputs"])
    # What the workers read is the local files' bytes: same sha256, same parts, and the same digest
    # for the stages downstream (where the inputs lay is not what they contained).
    assert [(i["sha256"], i["bytes"]) for i in remote["inputs"]] == [(i["sha256"], i["bytes"]) for i in local["inputs"]]
    assert remote["outputs"] == local["outputs"]
    assert dependency_digest(build / "stages" / "c4_ingest" / "manifest.json") == \
        dependency_digest(tmp_path / "local-build" / "stages" / "c4_ingest" / "manifest.json")
    # The identity takes URL and version, known without reading: up to date until an object changes.
    assert is_up_to_date(C4Ingest(), urls, build / "stages" / "c4_ingest")
    assert len(storage.COPIES_MADE) == copies + 2
    fs.pipe_file(f"{bucket}/raw/c4/c4-train.00001-of-01024.json.gz", c4_lines(7, 1))
    assert not is_up_to_date(C4Ingest(), urls, build / "stages" / "c4_ingest")


def test_a_remote_object_cut_short_is_a_clear_error_and_leaves_no_copy(raw_on_s3, tmp_path, monkeypatch):
    fs, bucket = raw_on_s3
    monkeypatch.setenv("LLAMA_RECIPE_SCRATCH", str(tmp_path / "scratch"))
    [listed] = list_remote(f"s3://{bucket}/raw/c4/c4-train.00000-of-01024.json.gz")
    fs.pipe_file(f"{bucket}/raw/c4/c4-train.00000-of-01024.json.gz", c4_lines(2, 0))  # changed after listing
    with pytest.raises(StageError, match=r"c4-train.00000-of-01024.json.gz: read \d+ bytes, the store listed"):
        with storage.local_input(listed):
            pass
    assert [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()] == []
    gone = RemoteFile(f"s3://{bucket}/raw/c4/gone.json.gz", (("size", "10"),))
    with pytest.raises(StageError, match="gone.json.gz"):
        with storage.local_input(gone):
            pass


def small_build(root: Path, threshold_words: int = 3) -> Path:
    """A build folder with two committed stage folders and a BUILD.json."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "c4-train.00000-of-01024.json.gz").write_bytes(c4_lines(6, 0))
    build = root / "build"
    run_stage(C4Ingest(), [raw], build / "stages" / "c4_ingest")
    run_stage(C4Quality({"min_words_per_line": threshold_words}), [build / "stages" / "c4_ingest"], build / "stages" / "c4_quality")
    (build / "BUILD.json").write_text(json.dumps({"spec": "demo", "inputs": str(raw)}) + "\n")
    return build


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def remote_files(fs, root: str) -> dict[str, bytes]:
    return {p[len(root) + 1:]: fs.cat_file(p) for p in sorted(fs.find(root))}


def test_publish_uploads_committed_folders_then_only_what_changed(s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    build = small_build(tmp_path)
    leftover = build / "stages" / ".c4_quality.tmp-999999"  # a crashed run's leftover: not published
    leftover.mkdir()
    (leftover / "manifest.json").write_text("{}")
    url = f"s3://{bucket}/builds/one"
    first = publish(build, url)
    assert first["uploaded"] == ["stages/c4_ingest", "stages/c4_quality"] and first["unchanged"] == []
    expected = {k: v for k, v in local_files(build).items() if ".tmp-" not in k}
    assert remote_files(fs, f"{bucket}/builds/one") == expected
    assert publish(build, url) == {"uploaded": [], "unchanged": ["stages/c4_ingest", "stages/c4_quality"], "files": 0, "bytes": 0}
    # A rerun of one stage with another config: only that folder is uploaded again.
    run_stage(C4Quality({"min_words_per_line": 30}), [build / "stages" / "c4_ingest"], build / "stages" / "c4_quality")
    second = publish(build, url)
    assert second["uploaded"] == ["stages/c4_quality"] and second["unchanged"] == ["stages/c4_ingest"]
    assert remote_files(fs, f"{bucket}/builds/one/stages/c4_quality") == local_files(build / "stages" / "c4_quality")


def test_fetch_folder_checks_the_manifest_and_refuses_incomplete_or_corrupt_copies(s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    build = small_build(tmp_path)
    url = f"s3://{bucket}/builds/two"
    publish(build, url)
    copy = fetch_folder(f"{url}/stages/c4_quality", tmp_path / "copy")
    assert local_files(copy) == local_files(build / "stages" / "c4_quality")
    assert read_manifest(copy) == read_manifest(build / "stages" / "c4_quality")
    part = read_manifest(copy)["outputs"][0]["path"]
    fs.pipe_file(f"{bucket}/builds/two/stages/c4_quality/{part}", b"garbage")
    with pytest.raises(StageError, match="checksum"):
        fetch_folder(f"{url}/stages/c4_quality", tmp_path / "copy2")
    assert not (tmp_path / "copy2" / "manifest.json").exists()  # never looks complete
    fs.rm_file(f"{bucket}/builds/two/stages/c4_ingest/manifest.json")
    with pytest.raises(StageError, match="no manifest.json"):
        fetch_folder(f"{url}/stages/c4_ingest", tmp_path / "copy3")


def test_publish_to_a_shared_filesystem_path_creates_its_folders(tmp_path):
    build = small_build(tmp_path)
    for target in (tmp_path / "nfs" / "builds", f"file://{tmp_path}/nfs2/builds"):
        assert publish(build, str(target))["uploaded"] == ["stages/c4_ingest", "stages/c4_quality"]
        published = Path(str(target).removeprefix("file://"))
        assert local_files(published) == local_files(build)
        copy = fetch_folder(str(target) + "/stages/c4_quality", tmp_path / f"copy-{published.parent.name}")
        assert local_files(copy) == local_files(build / "stages" / "c4_quality")


def test_unusable_urls_give_one_clear_error(s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    with pytest.raises(StageError, match=r"nosuch://b/x: Protocol not known"):
        list_remote("nosuch://b/x")
    with pytest.raises(StageError, match=r"gs://b/x: .*gcsfs"):  # gcsfs is not installed here
        list_remote("gs://b/x")
    with pytest.raises(StageError, match=r"s3://no-such-bucket-here/raw/\*\.json\.gz"):
        list_remote("s3://no-such-bucket-here/raw/*.json.gz")
    with pytest.raises(StageError, match=r"s3://no-such-bucket-here/raw/\*\.json\.gz"):  # as a stage's input
        run_stage(C4Ingest(), ["s3://no-such-bucket-here/raw/*.json.gz"], tmp_path / "c4_ingest")
    with pytest.raises(StageError, match="gcsfs"):
        publish(small_build(tmp_path), "gs://b/builds")


def test_where_the_inputs_lay_does_not_change_the_digest_downstream_stages_hash(tmp_path):
    from pipeline.documents import dependency_digest, sha256_file

    first, moved = small_build(tmp_path / "a"), small_build(tmp_path / "b")  # same bytes, other raw folder
    manifests = [b / "stages" / "c4_ingest" / "manifest.json" for b in (first, moved)]
    assert sha256_file(manifests[0]) != sha256_file(manifests[1])  # the paths are recorded
    assert dependency_digest(manifests[0]) == dependency_digest(manifests[1])
    other = tmp_path / "c" / "raw"
    other.mkdir(parents=True)
    (other / "c4-train.00000-of-01024.json.gz").write_bytes(c4_lines(7, 0))
    changed = run_stage(C4Ingest(), [other], tmp_path / "c" / "build" / "stages" / "c4_ingest")
    assert changed["identity"] != read_manifest(first / "stages" / "c4_ingest")["identity"]
    assert dependency_digest(tmp_path / "c" / "build" / "stages" / "c4_ingest" / "manifest.json") != dependency_digest(manifests[0])
