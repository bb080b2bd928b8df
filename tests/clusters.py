"""Real local clusters for tests: a Ray head started with `ray start` on 127.0.0.1 (Dask's
LocalCluster needs no helper)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(log: Path, monkeypatch, cpus: int = 2) -> Iterator[str]:
    """A Ray cluster of one node with `cpus` CPUs on 127.0.0.1; yields its address.

    Ray otherwise gives its node the machine's interface address (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    makes it take the loopback, as on a laptop; Ray reads it at import, hence the setattr for this
    process), and its dashboard process asks cloud metadata endpoints (169.254.169.254,
    metadata.google.internal) who hosts it and tells usage-stats.ray.io that usage stats are off: a
    proxy on a closed local port answers all of them (no DNS lookup either). The cluster is not given
    PREFECT_API_URL: its workers run plain part jobs and never talk to Prefect."""
    import ray._private.ray_constants as ray_constants

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "http_proxy": dead_proxy, "https_proxy": dead_proxy, "no_proxy": "127.0.0.1,localhost"}
    ray_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths under it must fit 107 bytes
    port = free_port()
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
               "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", ray_dir,
               "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port())]
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init sets its own in this process
    with log.open("wb") as log_file:
        head = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text() and head.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert "Ray runtime started" in log.read_text() and head.poll() is None, log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            head.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)  # anything of its process group still there
            shutil.rmtree(ray_dir, ignore_errors=True)
            signal.signal(signal.SIGTERM, sigterm)
