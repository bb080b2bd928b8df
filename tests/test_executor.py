"""Part jobs on a real cluster (issue 13): a Dask LocalCluster of 2 worker processes on 127.0.0.1
runs a stage's parts, each in a worker that rebuilds the stage from the job; the stage folder is
byte for byte the local one, timing.json says which workers wrote which parts, and a worker killed
with SIGKILL in the middle of a part costs a retry, not the stage."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.documents import Document, read_timing
from pipeline.samples import write_samples
from pipeline.stage import Stage, StageConfig, get_stage, run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dask():
    from distributed import LocalCluster

    from pipeline.executor import DaskExecutor

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with DaskExecutor(cluster.scheduler_address) as executor:
            yield cluster, executor


@pytest.fixture(scope="module")
def cc_inputs(tmp_path_factory) -> list[Path]:
    samples = tmp_path_factory.mktemp("samples")
    write_samples(samples, seed=5, scale=0.05)
    files = sorted((samples / "cc").glob("*.warc.wet.gz"))
    assert len(files) >= 2
    return files


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "timing.json"}


def test_parts_run_on_the_cluster_workers_and_write_the_local_bytes(dask, cc_inputs, tmp_path):
    cluster, executor = dask
    for name, inputs in (("cc_ingest", cc_inputs), ("cc_langid", [tmp_path / "local-cc_ingest"])):
        run_stage(get_stage(name)(), inputs, tmp_path / f"local-{name}", workers=1)
        run_stage(get_stage(name)(), inputs, tmp_path / f"dask-{name}", executor=executor)
        assert _folder_bytes(tmp_path / f"local-{name}") == _folder_bytes(tmp_path / f"dask-{name}")
        placed = read_timing(tmp_path / f"dask-{name}")["part_workers"]
        assert sum(placed.values()) == len(cc_inputs)
        assert all(not who.startswith(f"{os.getpid()}@") for who in placed)  # not this process


def test_the_commit_reads_no_part_in_this_process(dask, cc_inputs, tmp_path, monkeypatch):
    """The workers describe (sha256, rows) the parts they write, and an upstream part's digest is
    the one its committed manifest records: a stage run from here never reads a Parquet part's
    bytes again in this process (at scale, a dump's text twice per stage in one process)."""
    import pipeline.documents as documents

    _, executor = dask
    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "cc_ingest", executor=executor)
    hashed: list[str] = []
    real = documents.sha256_file
    monkeypatch.setattr(documents, "sha256_file", lambda path, *a: hashed.append(str(path)) or real(path, *a))
    run_stage(get_stage("cc_langid")(), [tmp_path / "cc_ingest"], tmp_path / "cc_langid", executor=executor)
    assert not [path for path in hashed if path.endswith(".parquet")], hashed
    run_stage(get_stage("cc_langid")(), [tmp_path / "cc_ingest"], tmp_path / "local", workers=1)
    assert _folder_bytes(tmp_path / "local") == _folder_bytes(tmp_path / "cc_langid")


def test_a_whole_stage_runs_as_one_job(dask, samples, tmp_path):
    """run_stage_job: a stage as one cluster job (for a stage class that cannot split its parts)."""
    from pipeline.stage import run_stage_job

    _, executor = dask
    run_stage(get_stage("github_ingest")(), [samples / "github"], tmp_path / "local")
    manifest = executor.call(run_stage_job, "github_ingest", {}, {}, [str(samples / "github")], str(tmp_path / "dask"))
    assert manifest["docs_in"] > 0
    assert _folder_bytes(tmp_path / "local") == _folder_bytes(tmp_path / "dask")


@pytest.mark.parametrize("name", ["cc_line_dedup", "cc_doc_dedup"])
def test_a_dedup_runs_every_pass_on_the_workers_with_the_local_bytes(dask, cc_inputs, tmp_path, name):
    """The hashing, reduce and filter passes are all cluster jobs, exchanging files in the stage's
    artifacts folder; the folder is the local one byte for byte (whatever the partition count)."""
    _, executor = dask
    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "ingest")
    run_stage(get_stage(name)(), [tmp_path / "ingest"], tmp_path / "local", workers=2)
    on_dask = get_stage(name)()
    on_dask.partitions = 5
    run_stage(on_dask, [tmp_path / "ingest"], tmp_path / "dask", executor=executor)
    assert _folder_bytes(tmp_path / "local") == _folder_bytes(tmp_path / "dask")
    timing = read_timing(tmp_path / "dask")
    # pass 1 per part, pass 2 per partition (and doc dedup's kept-id pass per part)
    assert sum(timing["pass_workers"].values()) >= len(cc_inputs) + 5
    assert all(not who.startswith(f"{os.getpid()}@") for who in timing["pass_workers"] | timing["part_workers"])
    assert not (tmp_path / "dask" / "artifacts").exists()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("all-samples")
    write_samples(folder, seed=5, scale=0.05)
    return folder


# Each source's chain: (stage, input) with "<stage>" meaning that stage's output folder.
SOURCE_CHAINS = {
    "books": [("books_ingest", "books"), ("books_dedup", "<books_ingest>")],
    "wikipedia": [("wikipedia_ingest", "wikipedia"), ("wikipedia_clean", "<wikipedia_ingest>")],
    "github": [("github_ingest", "github"), ("github_filter", "<github_ingest>"), ("github_dedup", "<github_filter>")],
    "arxiv": [("arxiv_ingest", "arxiv"), ("arxiv_clean", "<arxiv_ingest>")],
    "stackexchange": [("stackexchange_ingest", "stackexchange")],
    "c4": [("c4_ingest", "c4"), ("c4_quality", "<c4_ingest>")],
}


@pytest.mark.parametrize("source", sorted(SOURCE_CHAINS))
def test_the_sources_stages_run_their_parts_on_the_workers(dask, samples, tmp_path, source):
    """Every stage writes its parts, and runs its prepare passes, on the cluster's workers: the
    local bytes."""
    _, executor = dask
    for name, given in SOURCE_CHAINS[source]:
        inputs = [tmp_path / f"local-{given[1:-1]}"] if given.startswith("<") else [samples / given]
        run_stage(get_stage(name)(), inputs, tmp_path / f"local-{name}", workers=1)
        run_stage(get_stage(name)(), inputs, tmp_path / f"dask-{name}", executor=executor)
        assert _folder_bytes(tmp_path / f"local-{name}") == _folder_bytes(tmp_path / f"dask-{name}"), name
        timing = read_timing(tmp_path / f"dask-{name}")
        assert timing["part_workers"], name
        assert not any(who.startswith(f"{os.getpid()}@") for who in timing["part_workers"] | timing.get("pass_workers", {}))


class SlowCopy(Stage):
    """A test stage: keeps every document, slowly, after leaving a marker naming its process."""

    name = "test_slow_copy"
    source = "cc"
    parallel_parts = True
    remote_parts = True

    class Config(StageConfig):
        markers: str
        seconds: float = 3.0

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        marker = Path(self.config.markers) / f"part-{part}-pid-{os.getpid()}"
        marker.touch()
        time.sleep(self.config.seconds)
        yield from docs


def _kill_the_first_worker_that_starts(markers: Path, killed: list[int]) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and not killed:
        for marker in markers.iterdir():
            pid = int(marker.name.rsplit("-", 1)[1])
            os.kill(pid, signal.SIGKILL)  # the cluster's worker process, in the middle of its part
            killed.append(pid)
            break
        time.sleep(0.05)


def _killed_mid_part_and_retried(executor, ingest: Path, tmp_path: Path, parts: int) -> None:
    """SlowCopy on the cluster while the first worker to start a part is killed with SIGKILL: the
    part is retried on a live worker and every part is the local bytes."""
    import threading

    markers = tmp_path / "markers"
    markers.mkdir()
    config = {"markers": str(markers), "seconds": 3.0}
    killed: list[int] = []
    killer = threading.Thread(target=_kill_the_first_worker_that_starts, args=(markers, killed))
    killer.start()
    run_stage(SlowCopy(config), [ingest], tmp_path / "on-cluster", executor=executor)
    killer.join()
    assert killed, "no part started"
    run_stage(SlowCopy(config | {"seconds": 0.0}), [ingest], tmp_path / "local")
    placed = read_timing(tmp_path / "on-cluster")["part_workers"]
    assert f"{killed[0]}@" not in " ".join(placed)  # every part was finally written by a live worker
    assert sum(placed.values()) == parts
    local, on_cluster = _folder_bytes(tmp_path / "local"), _folder_bytes(tmp_path / "on-cluster")
    # The config differs (seconds): so does the manifest; every part is the same bytes.
    assert {k: v for k, v in local.items() if k != "manifest.json"} == {k: v for k, v in on_cluster.items() if k != "manifest.json"}


def test_a_worker_killed_mid_part_is_retried_on_another_and_the_bytes_are_the_same(dask, cc_inputs, tmp_path):
    _, executor = dask
    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "ingest")
    _killed_mid_part_and_retried(executor, tmp_path / "ingest", tmp_path, len(cc_inputs))


def test_a_ray_worker_killed_mid_part_is_retried_and_the_bytes_are_the_same(cc_inputs, tmp_path, monkeypatch):
    """The same on a Ray cluster of 3 workers (`ray start --head --num-cpus 3` on 127.0.0.1; the build
    test in test_flows.py uses 2): Ray resubmits the task of a dead worker (max_retries), and the dedup
    passes run there as on Dask, with the local bytes."""
    from pipeline.executor import RayExecutor
    from tests.clusters import ray_head

    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "ingest")
    with ray_head(tmp_path / "ray-head.log", monkeypatch, cpus=3) as address, RayExecutor(address) as executor:
        _killed_mid_part_and_retried(executor, tmp_path / "ingest", tmp_path, len(cc_inputs))
        on_ray = get_stage("cc_line_dedup")()
        on_ray.partitions = 3
        run_stage(on_ray, [tmp_path / "ingest"], tmp_path / "dedup-ray", executor=executor)
    run_stage(get_stage("cc_line_dedup")(), [tmp_path / "ingest"], tmp_path / "dedup-local")
    assert _folder_bytes(tmp_path / "dedup-local") == _folder_bytes(tmp_path / "dedup-ray")
    assert sum(read_timing(tmp_path / "dedup-ray")["pass_workers"].values()) >= len(cc_inputs) + 3


def test_remote_inputs_are_copied_by_the_worker_that_reads_them_never_by_the_driver(s3_bucket, samples, tmp_path, monkeypatch):
    """Inputs on S3 (moto's server on 127.0.0.1): the driver only lists them; each part's worker
    copies its one object into its scratch folder, reads it and deletes it. The parts are the local
    build's bytes; the manifest names the URLs with the sha256 of what the workers read."""
    import fsspec
    from distributed import Client, LocalCluster

    from pipeline import storage
    from pipeline.executor import DaskExecutor

    fs, bucket = s3_bucket
    fs.put(str(samples / "cc"), f"{bucket}/raw/cc", recursive=True)
    fs.put(str(samples / "github"), f"{bucket}/raw/github", recursive=True)
    # The workers are other processes: they take the endpoint from the environment, as on a cluster.
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", fsspec.config.conf["s3"]["endpoint_url"])
    monkeypatch.setenv("LLAMA_RECIPE_SCRATCH", str(tmp_path / "scratch"))
    copies = len(storage.COPIES_MADE)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            DaskExecutor(cluster.scheduler_address) as executor, Client(cluster) as client:
        for name, raw in (("cc_ingest", "cc"), ("github_ingest", "github")):
            stage = get_stage(name)
            remote = run_stage(stage(), [f"s3://{bucket}/raw/{raw}"], tmp_path / f"s3-{name}", executor=executor)
            local = run_stage(stage(), [samples / raw], tmp_path / f"local-{name}")
            assert [i["sha256"] for i in remote["inputs"]] == [i["sha256"] for i in local["inputs"]]
            assert all(i["path"].startswith(f"s3://{bucket}/raw/{raw}/") for i in remote["inputs"])
            assert remote["outputs"] == local["outputs"] and remote["rejected_outputs"] == local["rejected_outputs"]
        copied = [url for urls in client.run(lambda: list(storage.COPIES_MADE)).values() for url in urls]
    assert len(storage.COPIES_MADE) == copies  # the driver copied nothing
    listed = [u.url for raw in ("cc", "github") for u in storage.list_remote(f"s3://{bucket}/raw/{raw}",
                                                                             get_stage(f"{raw}_ingest").raw_patterns)]
    assert sorted(copied) == sorted(listed)  # each object copied once, by a worker
    assert [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()] == []
