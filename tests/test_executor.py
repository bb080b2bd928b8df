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


def test_a_stage_whose_parts_cannot_leave_runs_whole_as_one_job(dask, cc_inputs, tmp_path):
    from pipeline.stage import run_stage_job

    _, executor = dask
    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "ingest")
    assert not get_stage("cc_line_dedup").remote_parts
    run_stage(get_stage("cc_line_dedup")(), [tmp_path / "ingest"], tmp_path / "local")
    manifest = executor.call(run_stage_job, "cc_line_dedup", {}, {}, [str(tmp_path / "ingest")], str(tmp_path / "dask"))
    assert manifest["docs_in"] > 0
    assert _folder_bytes(tmp_path / "local") == _folder_bytes(tmp_path / "dask")


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


def test_a_worker_killed_mid_part_is_retried_on_another_and_the_bytes_are_the_same(dask, cc_inputs, tmp_path):
    import threading

    _, executor = dask
    run_stage(get_stage("cc_ingest")(), cc_inputs, tmp_path / "ingest")
    markers = tmp_path / "markers"
    markers.mkdir()
    config = {"markers": str(markers), "seconds": 3.0}
    killed: list[int] = []

    def kill_the_first_worker_that_starts() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for marker in markers.iterdir():
                pid = int(marker.name.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)  # the Dask worker process, in the middle of its part
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker_that_starts)
    killer.start()
    run_stage(SlowCopy(config), [tmp_path / "ingest"], tmp_path / "on-dask", executor=executor)
    killer.join()
    assert killed, "no part started"
    run_stage(SlowCopy(config | {"seconds": 0.0}), [tmp_path / "ingest"], tmp_path / "local")
    placed = read_timing(tmp_path / "on-dask")["part_workers"]
    assert f"{killed[0]}@" not in " ".join(placed)  # every part was finally written by a live worker
    assert sum(placed.values()) == len(cc_inputs)
    local, on_dask = _folder_bytes(tmp_path / "local"), _folder_bytes(tmp_path / "on-dask")
    # The config differs (seconds): so does the manifest; every part is the same bytes.
    assert {k: v for k, v in local.items() if k != "manifest.json"} == {k: v for k, v in on_dask.items() if k != "manifest.json"}
