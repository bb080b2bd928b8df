"""Shared test settings: where the real-data samples live (../shared/realdata beside the repo)."""

import os
from pathlib import Path

# setuptools first: it puts its own distutils in place while that is still possible. Imported later
# (torch.compile's inductor imports it) after something in the suite had loaded the stdlib's distutils,
# its check failed ("AssertionError: .../distutils/core.py") in the full suite, not alone.
import setuptools  # noqa: F401, E402

# The Prefect test harness's server would otherwise send analytics (a DNS lookup of Prefect's
# telemetry host; the CLI's server has them off too, flows/server.py).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("LLAMA_RECIPE_REALDATA", REPO.parent / "shared" / "realdata"))


import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture()
def s3_bucket(monkeypatch):
    """A real S3 API on 127.0.0.1 (moto's server) with one empty bucket; fsspec's configuration
    points s3:// at it, as FSSPEC_S3_ENDPOINT_URL would for MinIO. Yields (filesystem, bucket)."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"corpus-{uuid.uuid4().hex[:12]}"  # moto's store outlives a server within one process
    fs.mkdir(bucket)
    try:
        yield fs, bucket
    finally:
        server.stop()


# ---- the suite's Prefect server ---------------------------------------------------------------

# Logs of the real Prefect servers the tests started; every test fails that leaves an ERROR record or
# a traceback in one of them (issue 18: a broken server service must never hide behind a green suite).
SERVER_LOGS: list[Path] = []
MAX_SQLITE_LOCKS_PER_TEST = 10


def small_demo_spec(folder: Path, name: str) -> Path:
    """The demo spec (its sources and stages) under another name, with a small vocabulary: a build of
    `write_samples(..., scale=0.05)` in seconds. Written to folder/<name>.yaml."""
    import yaml

    from pipeline.spec import SPEC_DIR

    raw = yaml.safe_load((SPEC_DIR / "demo.yaml").read_text())
    raw["name"] = name
    raw["tokenizer"]["vocab_size"] = 2000
    spec = Path(folder) / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server start` (SQLite, every service: scheduler, late runs, ...) on
    127.0.0.1 for the flow tests, started as the CLI starts it; this process and every process it
    starts report to it. Yields the API URL."""
    from flows.server import LOG_NAME, point_prefect_at, start_server, stop_server

    home = tmp_path_factory.mktemp("prefect-server")
    url = start_server(home, port=free_port(), wait_s=180)
    SERVER_LOGS.append(home / LOG_NAME)
    previous = os.environ.get("PREFECT_API_URL")
    point_prefect_at(url)
    try:
        yield url
    finally:
        # Send what this process still queues for the server (logs, events) before it stops.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        import prefect.context

        prefect.context.refresh_global_settings_context()
        stop_server(home)


@pytest.fixture(autouse=True)
def server_log_stays_clean():
    """Fail the test during which a watched server log gained an ERROR record or a traceback."""
    from flows.server import is_retried_lock, log_errors

    before = {log: (log.stat().st_size if log.exists() else 0) for log in SERVER_LOGS}
    yield
    for log in SERVER_LOGS:
        everything = log_errors(log, before.get(log, 0), retried_locks=True)
        errors = [e for e in everything if not is_retried_lock(e)]
        # A few SQLite locks under concurrent writes are contention Prefect retries; a database locked
        # test after test would be a service that cannot write: fail on more than a handful per test.
        if len(everything) - len(errors) > MAX_SQLITE_LOCKS_PER_TEST:
            errors = everything
        if errors:
            pytest.fail(f"the Prefect server log {log} gained {len(errors)} error(s) during this test; the first:\n"
                        + errors[0][:3000], pytrace=False)
