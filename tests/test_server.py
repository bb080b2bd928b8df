"""The one-server rule (flows/server.py) and the server log's error scan that `doctor` and the
suite's log check share; then the CLI's build and rerun reporting to the running server."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest

from flows import server
from flows.server import ServerError, call_api, find_server, last_start_offset, log_errors, point_prefect_at
from tests.conftest import small_demo_spec

LOG = """\
12:00:00.001 | INFO    | uvicorn.error - Application startup complete.
12:00:01.002 | ERROR   | docket.dependencies - schedule_deployments()
Traceback (most recent call last):
  File ".../scheduler.py", line 273, in schedule_deployments
sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement
12:00:02.003 | INFO    | prefect.server - fine again
12:00:02.500 | WARNING | prefect.server - a warning is not an error
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: a bare traceback
ERROR:    Exception in ASGI application
12:00:03.004 | INFO    | prefect.server - done
"""


def test_log_errors_groups_each_error_with_its_traceback(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(LOG)
    errors = log_errors(log)
    assert len(errors) == 3
    assert errors[0].splitlines()[0].endswith("schedule_deployments()")
    assert errors[0].splitlines()[-1].startswith("sqlalchemy.exc.InvalidRequestError")
    assert errors[1].startswith("Traceback") and errors[1].endswith("ValueError: a bare traceback")
    assert errors[2] == "ERROR:    Exception in ASGI application"
    # Only what the log gained after an offset, e.g. since the running server's start mark.
    log.write_text(LOG + f"{server.START_MARK} on 127.0.0.1:4200 at now ---\n12:01:00.000 | INFO    | ok\n")
    assert log_errors(log, last_start_offset(log)) == []
    assert log_errors(tmp_path / "missing.log") == [] and last_start_offset(tmp_path / "missing.log") == 0


RETRIED = """\
14:36:35.177 | ERROR   | prefect.server.services.task_run_recorder - Error flushing 1 events (1 to retry, 0 dropped)
Traceback (most recent call last):
sqlite3.OperationalError: database is locked
14:36:35.300 | ERROR   | prefect.server.services.task_run_recorder - Error flushing 3 events (2 to retry, 1 dropped)
Traceback (most recent call last):
sqlite3.OperationalError: database is locked
14:51:05.027 | ERROR   | prefect.server.utilities.worker_channel - Worker channel heartbeat persistence failed
Traceback (most recent call last):
sqlite3.OperationalError: database is locked
14:51:06.000 | ERROR   | prefect.server - something else
Traceback (most recent call last):
sqlite3.OperationalError: no such table: flow_run
14:36:36.000 | INFO    | prefect.server - fine
"""


def test_a_retried_sqlite_lock_is_not_an_error_but_a_dropped_event_is(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(RETRIED)
    errors = log_errors(log)
    assert len(errors) == 2 and "1 dropped" in errors[0]  # something was lost: that is an error
    assert "no such table" in errors[1]  # another database error is one too
    everything = log_errors(log, retried_locks=True)
    assert len(everything) == 4 and server.is_retried_lock(everything[0]) and server.is_retried_lock(everything[2])


@pytest.fixture()
def answering_server():
    """A real HTTP server on 127.0.0.1 that answers GET /api/health like Prefect's."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/api"
    finally:
        httpd.shutdown()


def test_a_configured_server_is_used_and_one_that_does_not_answer_is_an_error(monkeypatch, answering_server):
    monkeypatch.setenv("PREFECT_API_URL", answering_server)
    assert find_server() == answering_server
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the discard port: nothing answers
    with pytest.raises(ServerError, match="does not answer"):
        find_server()


def test_without_configuration_the_local_server_on_its_port_is_used(monkeypatch, answering_server):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server, "configured_url", lambda: None)  # no profile on this machine may name one
    port = int(answering_server.rsplit(":", 1)[1].split("/")[0])
    assert find_server(port) == answering_server
    assert find_server(9) is None  # none answers: the caller starts one


def test_pointing_prefect_at_a_server_after_prefect_was_imported():
    """Issue 15's rerun: flows.corpus (and so Prefect's settings) was imported before the server was
    chosen, so its flows went to a temporary ephemeral server."""
    import prefect.context  # noqa: F401  (imported, settings read)
    from prefect.settings import PREFECT_API_URL

    previous = os.environ.get("PREFECT_API_URL")
    try:
        point_prefect_at("http://127.0.0.1:4999/api")
        assert PREFECT_API_URL.value() == "http://127.0.0.1:4999/api"
    finally:
        # Directly, not with monkeypatch: its undo would put back the value point_prefect_at set
        # (monkeypatch restores what it saw), and later tests' subprocesses would report there.
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        prefect.context.refresh_global_settings_context()


@pytest.mark.slow
def test_build_and_rerun_report_to_the_running_server(prefect_server, tmp_path):
    from pipeline.samples import write_samples

    write_samples(tmp_path / "samples", seed=4, scale=0.05)
    spec = small_demo_spec(tmp_path, "server-test")
    env = os.environ | {"PREFECT_API_URL": prefect_server}

    def flow_runs() -> list[dict]:
        # Runs a command started (other tests' deployments may hold many scheduled runs meanwhile).
        return call_api(prefect_server, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"is_null_": True}},
                                                              "limit": 200, "sort": "START_TIME_DESC"})

    before = {r["id"] for r in flow_runs()}
    for command in (["build", "--spec", str(spec), "--inputs", str(tmp_path / "samples"), "--out", str(tmp_path / "build")],
                    ["rerun", "cc_wikiref", "--build", str(tmp_path / "build")]):
        done = subprocess.run([sys.executable, "-m", "flows.cli", *command], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "temporary server" not in output.lower() and f"prefect: {prefect_server}" in output
    new = [r for r in flow_runs() if r["id"] not in before]
    builds = [r for r in new if r["name"].startswith("build-corpus-")]
    assert len(builds) == 2 and all(r["state_type"] == "COMPLETED" for r in new)
    # The rerun's cc_wikiref task run (in the source-cc subflow) is on this server, not elsewhere.
    tasks = call_api(prefect_server, "/task_runs/filter",
                     {"task_runs": {"flow_run_id": {"any_": [r["id"] for r in new]}, "name": {"any_": ["cc_wikiref"]}},
                      "limit": 10})
    assert len(tasks) == 2 and {t["state_type"] for t in tasks} == {"COMPLETED"}
    assert not (tmp_path / "runs" / "prefect").exists()  # no second server was started
