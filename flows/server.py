"""The one Prefect server every command reports to, and its health.

The rule, in one place (`use_server`): the server named by PREFECT_API_URL (environment or Prefect
profile) if one is configured — and an error if it does not answer; else the local server on
127.0.0.1:4200, whatever home it was started from; else a new local server (SQLite) started in the
background from the given home. Prefect's ephemeral mode (a temporary server inside the process,
~20 s each, no scheduler, invisible in the UI) is used only when a command is given `--ephemeral`.

`health` reads what `llama-recipe doctor` prints: the server's version, database, services, the
errors its log gained since it started, and each deployment's next scheduled run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
# Telemetry off: the UI and server work offline and send nothing.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "true"}
LOG_NAME = "server.log"
# Written into the log before each start, so errors are counted from the running server's start.
START_MARK = "--- llama-recipe: prefect server start"


class ServerError(RuntimeError):
    """The configured Prefect server does not answer, or a local one could not start."""


def api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def configured_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile, else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "PREFECT_PROFILE" not in os.environ and not (Path.home() / ".prefect" / "profiles.toml").exists():
        return None  # no profile can name a server: skip importing Prefect
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def find_server(port: int = DEFAULT_PORT) -> str | None:
    """The API URL of the server to use, or None when none answers and none is configured."""
    configured = configured_url()
    if configured:
        if not is_healthy(configured, timeout=10.0):
            raise ServerError(f"PREFECT_API_URL={configured} does not answer (GET {configured}/health); start that "
                              "server, or unset PREFECT_API_URL to use a local one on 127.0.0.1")
        return configured
    local = api_url(DEFAULT_HOST, port)
    return local if is_healthy(local) else None


def start_server(home: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, wait_s: float = 90.0) -> str:
    """Start `prefect server start` in the background (its own session: it outlives the command, so
    the UI stays up to inspect the run) with its database and log in `home`; wait until it answers."""
    url = api_url(host, port)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / LOG_NAME, "ab")
    log.write(f"{START_MARK} on {host}:{port} at {datetime.now(timezone.utc).isoformat(timespec='seconds')} ---\n".encode())
    log.flush()
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
        start_new_session=True,
    )
    (home / "server.pid").write_text(str(process.pid))
    deadline = time.time() + wait_s
    while not is_healthy(url):
        if process.poll() is not None:
            raise ServerError(f"prefect server exited with {process.returncode}; see {home / LOG_NAME}")
        if time.time() > deadline:
            raise ServerError(f"prefect server did not answer at {url} within {wait_s:.0f} s; see {home / LOG_NAME}")
        time.sleep(0.5)
    return url


def point_prefect_at(url: str) -> None:
    """Make this process's Prefect (and every process it starts) report to `url`. Prefect reads its
    settings when it is imported: a command that imported it before choosing the server would
    otherwise keep the import-time settings and start an ephemeral server (issue 15)."""
    os.environ["PREFECT_API_URL"] = url
    os.environ.update(QUIET_ENV)
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


def use_server(home: Path, port: int = DEFAULT_PORT, on_start: Callable[[Path], None] | None = None) -> str:
    """The rule above: find the server that answers, else start one from `home` (calling
    `on_start(home)` first: it takes ~20 s); point Prefect at it."""
    url = find_server(port)
    if url is None:
        if on_start:
            on_start(home)
        url = start_server(home, port=port)
    point_prefect_at(url)
    return url


def ensure_server(home: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, wait_s: float = 90.0) -> str:
    """The server on host:port, started from `home` if it does not answer (tests, campaigns: a server
    of their own); unlike `use_server`, nothing in this process is pointed at it."""
    url = api_url(host, port)
    return url if is_healthy(url) else start_server(home, host, port, wait_s)


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


# ---- health ---------------------------------------------------------------------------------

_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")  # a Prefect log record's first line
_ERROR = re.compile(r"^(\d\d:\d\d:\d\d\.\d+ \| (ERROR|CRITICAL) |ERROR:|Traceback \(most recent call last\))")


# SQLite allows one writer at a time: under concurrent writes some of Prefect's services log "database
# is locked" as an ERROR (the task-run recorder, which retries the batch; a worker's heartbeat, which
# the next heartbeat repeats) although Prefect treats it as retryable and filters it out of its API and
# docket logs (server.log_retryable_errors). Such an entry is contention, not a failing service, unless
# it says events were dropped; every other error counts.
_DROPPED = re.compile(r"\((\d+) to retry, (\d+) dropped\)")


def is_retried_lock(entry: str) -> bool:
    """An error entry caused only by a SQLite lock that Prefect retries, with nothing dropped."""
    dropped = _DROPPED.search(entry.splitlines()[0])
    return "sqlite3.OperationalError: database is locked" in entry and not (dropped and int(dropped.group(2)))


def log_errors(log: Path, since: int = 0, retried_locks: bool = False) -> list[str]:
    """Each ERROR/CRITICAL record or traceback a server log gained after byte offset `since`, with
    the lines that belong to it (a traceback's frames), in order; without `retried_locks`, those that
    only report a retried SQLite lock (is_retried_lock) are left out."""
    if not log.exists():
        return []
    with open(log, "rb") as handle:
        handle.seek(since)
        lines = handle.read().decode("utf-8", "replace").splitlines()
    errors: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if _ERROR.match(line) and not (current is not None and line.startswith("Traceback")):
            current = [line]
            errors.append(current)
        elif current is not None and not _RECORD.match(line) and not line.startswith(START_MARK):
            current.append(line)
        else:
            current = None
    entries = ["\n".join(entry) for entry in errors]
    return entries if retried_locks else [e for e in entries if not is_retried_lock(e)]


def last_start_offset(log: Path) -> int:
    """Byte offset of the running server's start mark in its log (0 when there is none)."""
    if not log.exists():
        return 0
    data = log.read_bytes()
    at = data.rfind(START_MARK.encode())
    return max(at, 0)


def call_api(url: str, path: str, body: dict | None = None, timeout: float = 15.0, method: str | None = None):
    """One request to a Prefect server's REST API: GET, or POST with a JSON body; the JSON answer
    (None for an empty one, as DELETE gives)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"content-type": "application/json"},
                                     method=method or ("GET" if body is None else "POST"))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = response.read()
    return json.loads(answer) if answer else None


@dataclass
class DeploymentHealth:
    name: str
    paused: bool
    schedules: list[str]
    next_run: str | None
    last_run: str | None  # "<state> at <time>"
    problem: str | None = None


@dataclass
class ServerHealth:
    url: str
    answers: bool
    version: str | None = None
    home: str | None = None
    database: str | None = None
    services: dict[str, bool] = field(default_factory=dict)
    log: str | None = None
    errors: list[str] = field(default_factory=list)
    retried_locks: int = 0
    deployments: list[DeploymentHealth] = field(default_factory=list)
    late_runs: int = 0

    @property
    def ok(self) -> bool:
        return self.answers and not self.errors and not any(d.problem for d in self.deployments)

    def render(self, errors_shown: int = 3) -> str:
        if not self.answers:
            return f"server: {self.url} does not answer (start one with `llama-recipe ui`)"
        lines = [f"server:    {self.url}  (UI {self.url.removesuffix('/api')})  prefect {self.version}",
                 f"home:      {self.home}",
                 f"database:  {self.database}"]
        on = [name for name, enabled in self.services.items() if enabled]
        off = [name for name, enabled in self.services.items() if not enabled]
        lines.append(f"services:  {', '.join(on)}" + (f"  (disabled: {', '.join(off)})" if off else ""))
        if self.log is None:
            lines.append("log:       not started by llama-recipe: its errors are in the console that started it")
        else:
            lines.append(f"log:       {self.log}: {len(self.errors)} error(s) since the server started")
            if self.retried_locks:
                lines.append(f"           and {self.retried_locks} SQLite lock(s) ('database is locked', retried, nothing "
                             "lost): many concurrent writers; PostgreSQL (`make postgres`) has none")
            for entry in self.errors[-errors_shown:]:
                head = entry.splitlines()
                lines.append("  ! " + head[0][:200] + (f"\n    ... {head[-1][:200]}" if len(head) > 1 else ""))
        lines.append(f"late runs: {self.late_runs}")
        if not self.deployments:
            lines.append("deployments: none (`llama-recipe serve` or `prefect deploy` registers one)")
        for d in self.deployments:
            state = "paused" if d.paused else "active"
            lines.append(f"deployment {d.name}  [{state}]  {'; '.join(d.schedules) or 'no schedule'}")
            lines.append(f"  next run: {d.next_run or '-'}   last run: {d.last_run or '-'}")
            if d.problem:
                lines.append(f"  ! {d.problem}")
        lines.append("healthy" if self.ok else "NOT healthy: see the lines marked !")
        return "\n".join(lines)


def _schedule_text(schedule: dict) -> str:
    spec = schedule.get("schedule") or {}
    if "cron" in spec:
        return f"cron '{spec['cron']}' {spec.get('timezone') or 'UTC'}"
    if "interval" in spec:
        return f"every {spec['interval']:g} s"
    if "rrule" in spec:
        return f"rrule {spec['rrule']}"
    return "schedule"


def health(url: str, scheduler_grace_s: float = 90.0) -> ServerHealth:
    """What the server says of itself, its log's errors since it started, and each deployment's
    schedule with its next run. A deployment with an active schedule, registered more than
    `scheduler_grace_s` ago, and no future scheduled run means the scheduler is not working."""
    report = ServerHealth(url=url, answers=is_healthy(url, timeout=10.0))
    if not report.answers:
        return report
    report.version = call_api(url, "/admin/version")
    settings = call_api(url, "/admin/settings")
    report.home = settings.get("home")
    database = Path(report.home or "") / "prefect.db"
    report.database = (f"SQLite {database}" if report.home and database.exists()
                       else "set by PREFECT_SERVER_DATABASE_CONNECTION_URL (the server does not show it)")
    for name, service in sorted(settings["server"]["services"].items()):
        if isinstance(service, dict) and "enabled" in service:
            report.services[name] = bool(service["enabled"])
    log = Path(report.home or "") / LOG_NAME
    if report.home and log.exists():
        report.log = str(log)
        everything = log_errors(log, last_start_offset(log), retried_locks=True)
        report.errors = [e for e in everything if not is_retried_lock(e)]
        report.retried_locks = len(everything) - len(report.errors)
    report.late_runs = len(call_api(url, "/flow_runs/filter", {"flow_runs": {"state": {"name": {"any_": ["Late"]}}},
                                                           "limit": 200}))
    now = datetime.now(timezone.utc)
    for deployment in call_api(url, "/deployments/filter", {"limit": 200}):
        flow = call_api(url, f"/flows/{deployment['flow_id']}")
        runs = {"deployment_id": {"any_": [deployment["id"]]}}
        upcoming = call_api(url, "/flow_runs/filter", {"flow_runs": runs | {"state": {"type": {"any_": ["SCHEDULED"]}}},
                                                   "sort": "EXPECTED_START_TIME_ASC", "limit": 1})
        finished = call_api(url, "/flow_runs/filter", {"flow_runs": runs | {"state": {"type": {"not_any_": ["SCHEDULED"]}}},
                                                   "sort": "START_TIME_DESC", "limit": 1})
        active = [s for s in deployment.get("schedules", []) if s.get("active", True)]
        item = DeploymentHealth(
            name=f"{flow['name']}/{deployment['name']}",
            paused=bool(deployment.get("paused")),
            schedules=[_schedule_text(s) for s in active],
            next_run=upcoming[0]["expected_start_time"] if upcoming else None,
            last_run=(f"{finished[0]['state_name']} at {finished[0].get('start_time') or finished[0]['expected_start_time']}"
                      if finished else None),
        )
        updated = datetime.fromisoformat(deployment["updated"].replace("Z", "+00:00"))
        if active and not item.paused and not upcoming and (now - updated).total_seconds() > scheduler_grace_s:
            item.problem = "an active schedule but no scheduled run: the server's scheduler is not creating runs (see its log)"
        elif active and not item.paused and deployment.get("status") == "NOT_READY":
            # The server's foreman marks a deployment NOT_READY when nothing has polled it for a minute.
            item.problem = (f"nothing is running its builds (last polled {deployment.get('last_polled') or 'never'}): "
                            "start `llama-recipe serve` again, or a worker on its work pool; until then its runs go Late")
        report.deployments.append(item)
    return report
