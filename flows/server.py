"""The embedded default: one local Prefect server (SQLite) on 127.0.0.1, started once and reused.

Prefect's ephemeral mode starts a temporary server inside every process (about 20 s each, and no
scheduler), so the CLI points every run at one `prefect server start` instead, which it starts in the
background when none answers. Its home (SQLite database, logs) lives in the runs folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
# Telemetry off: the UI and server work offline and send nothing.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "true"}


def api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def ensure_server(home: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, wait_s: float = 90.0,
                  use_it: bool = True) -> str:
    """Return the API URL of a healthy local server, starting one in the background if needed.
    With `use_it`, sets PREFECT_API_URL for this process (and so for the flows it runs) and an
    already configured PREFECT_API_URL is taken as the server to use."""
    url = (os.environ.get("PREFECT_API_URL") if use_it else None) or api_url(host, port)
    if not is_healthy(url):
        url = api_url(host, port)
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "server.log", "ab")
        # The UI asks the server where the API is; the server answers 127.0.0.1:4200 unless told
        # (measured with Prefect 3.8), so a server on another port would show another server's runs.
        env = os.environ | QUIET_ENV | {"PREFECT_HOME": str(home.resolve()), "PREFECT_UI_API_URL": url}
        env.pop("PREFECT_API_URL", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # outlives the CLI: the UI stays up to inspect the run
        )
        (home / "server.pid").write_text(str(process.pid))
        deadline = time.time() + wait_s
        while not is_healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}; see {home / 'server.log'}")
            if time.time() > deadline:
                raise RuntimeError(f"prefect server did not answer at {url} within {wait_s:.0f} s; see {home / 'server.log'}")
            time.sleep(0.5)
    if use_it:
        os.environ["PREFECT_API_URL"] = url
        os.environ.update(QUIET_ENV)
    return url


def stop_server(home: Path) -> bool:
    pid_file = home / "server.pid"
    if not pid_file.exists():
        return False
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    except (ProcessLookupError, ValueError, PermissionError):
        pass
    pid_file.unlink()
    return True
