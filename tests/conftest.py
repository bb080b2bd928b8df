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
