"""Remote storage through fsspec (pipeline/storage.py) against a real S3 API: moto's S3 server on
127.0.0.1, spoken to by s3fs exactly as AWS or MinIO would be."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.documents import REMOTE_INPUTS, StageError, display_url, read_manifest
from pipeline.sources.c4 import C4Ingest, C4Quality
from pipeline.stage import run_stage
from pipeline.storage import cache_path, fetch_folder, fetch_inputs, is_remote, join, publish


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
    cached = cache_path("s3://b/raw/c4/x.json.gz", Path("/build") / REMOTE_INPUTS)
    assert cached == Path("/build/remote-inputs/s3/b/raw/c4/x.json.gz")
    assert display_url(cached) == "s3://b/raw/c4/x.json.gz"
    assert display_url(Path("/data/c4/x.json.gz")) is None


def test_fetch_expands_globs_and_folders_and_downloads_each_version_once(raw_on_s3, tmp_path):
    fs, bucket = raw_on_s3
    cache = tmp_path / REMOTE_INPUTS
    messages: list[str] = []
    by_glob = fetch_inputs([f"s3://{bucket}/raw/c4/*.json.gz", str(tmp_path / "local.json.gz")], cache, progress=messages.append)
    assert [Path(p).name for p in by_glob] == ["c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz", "local.json.gz"]
    assert Path(by_glob[0]).read_bytes() == c4_lines(5, 0) and len(messages) == 2
    # A folder is searched with the reader's patterns, as a local folder would be.
    by_folder = fetch_inputs([f"s3://{bucket}/raw/c4"], cache, C4Ingest.raw_patterns, progress=messages.append)
    assert by_folder == by_glob[:2] and len(messages) == 2  # same versions: nothing downloaded again
    # A changed object is downloaded again.
    fs.pipe_file(f"{bucket}/raw/c4/c4-train.00001-of-01024.json.gz", c4_lines(7, 1))
    fetch_inputs([f"s3://{bucket}/raw/c4"], cache, C4Ingest.raw_patterns, progress=messages.append)
    assert len(messages) == 3 and Path(by_glob[1]).read_bytes() == c4_lines(7, 1)
    assert not [p for p in cache.rglob(".*part*")]  # no partial download left
    with pytest.raises(StageError, match="no file matches"):
        fetch_inputs([f"s3://{bucket}/raw/c4/*.wet.gz"], cache)
    with pytest.raises(StageError, match="not found"):
        fetch_inputs([f"s3://{bucket}/raw/missing.json.gz"], cache)


def test_a_stage_on_fetched_inputs_writes_the_local_bytes_and_records_the_urls(raw_on_s3, tmp_path):
    fs, bucket = raw_on_s3
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for index in range(2):
        (local_dir / f"c4-train.0000{index}-of-01024.json.gz").write_bytes(c4_lines(5, index))
    build = tmp_path / "build"
    fetched = fetch_inputs([f"s3://{bucket}/raw/c4/*.json.gz"], build / REMOTE_INPUTS)
    remote = run_stage(C4Ingest(), fetched, build / "stages" / "c4_ingest")
    local = run_stage(C4Ingest(), sorted(local_dir.iterdir()), tmp_path / "local-build" / "stages" / "c4_ingest")
    assert [i["path"] for i in remote["inputs"]] == [f"s3://{bucket}/raw/c4/c4-train.0000{i}-of-01024.json.gz" for i in range(2)]
    assert [i["sha256"] for i in remote["inputs"]] == [i["sha256"] for i in local["inputs"]]
    assert remote["identity"] == local["identity"] and remote["outputs"] == local["outputs"]


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
        fetch_inputs(["nosuch://b/x"], tmp_path)
    with pytest.raises(StageError, match=r"gs://b/x: .*gcsfs"):  # gcsfs is not installed here
        fetch_inputs(["gs://b/x"], tmp_path)
    with pytest.raises(StageError, match=r"s3://no-such-bucket-here/raw/\*\.json\.gz"):
        fetch_inputs(["s3://no-such-bucket-here/raw/*.json.gz"], tmp_path)
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
