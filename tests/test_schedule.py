"""Scheduled corpus builds fire (issue 18): a schedule registered as a user registers it produces a
flow run, the serving process (or a work-pool worker) picks it up, and the build completes with its
stage task runs — asserted through the server's API, on the suite's real `prefect server start`
(scheduler included). `llama-recipe doctor` then reports the deployment's next run and no errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.server import call_api
from pipeline.spec import load_spec
from tests.conftest import REPO, small_demo_spec

pytestmark = pytest.mark.slow

RUN_WITHIN_S = 300  # from registration to a completed scheduled build (measured: ~40 s here)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny spec (the demo's sources and stages, a small vocabulary) and its sample inputs."""
    from pipeline.samples import write_samples

    root = tmp_path_factory.mktemp("scheduled")
    write_samples(root / "samples", seed=3, scale=0.05)
    return small_demo_spec(root, "scheduled-test"), root / "samples"


def _deployment(url: str, name: str) -> dict | None:
    try:
        return call_api(url, f"/deployments/name/{name}")
    except OSError:  # 404 until it is registered
        return None


def _wait_for_completed_scheduled_run(url: str, deployment_name: str, process: subprocess.Popen) -> dict:
    """The first flow run of the deployment that the scheduler created and that completed."""
    deadline = time.time() + RUN_WITHIN_S
    while time.time() < deadline:
        assert process.poll() is None, f"the serving process exited: {process.stdout.read()[-3000:]}"
        deployment = _deployment(url, deployment_name)
        if deployment:
            runs = call_api(url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}},
                                                       "sort": "EXPECTED_START_TIME_ASC", "limit": 50})
            failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, f"a scheduled run failed: {failed[0]['state']}"
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            if done:
                return done[0]
        time.sleep(2)
    raise AssertionError(f"no scheduled run of {deployment_name} completed within {RUN_WITHIN_S} s")


def _stage_task_runs(url: str, flow_run: dict) -> dict[str, str]:
    """Task run name -> state of a build run and its subflow runs (one per source)."""
    subflows = call_api(url, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run["id"]]}},
                                                   "limit": 50})
    ids = [flow_run["id"]] + [r["id"] for r in subflows]
    tasks = call_api(url, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": ids}}, "limit": 200})
    return {t["name"]: t["state_type"] for t in tasks}


def _assert_a_whole_build(url: str, run: dict, spec: Path, build: Path) -> None:
    assert run["auto_scheduled"], "the run was not created by the server's scheduler"
    tasks = _stage_task_runs(url, run)
    stages = {name for source in load_spec(spec).sources.values() for name in source.stages}
    assert stages <= set(tasks), f"missing stage task runs: {sorted(stages - set(tasks))}"
    assert {tasks[name] for name in stages} == {"COMPLETED"}
    assert (build / "tokens").is_dir() and any((build / "tokens").rglob("*.bin"))


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _delete_deployment(url: str, name: str) -> None:
    """Delete a test's deployment and with it its scheduled runs, which would otherwise turn Late one
    by one for the rest of the session (each a write that competes for the SQLite database)."""
    deployment = _deployment(url, name)
    if deployment:
        call_api(url, f"/deployments/{deployment['id']}", method="DELETE")
        left = call_api(url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                                 "state": {"type": {"any_": ["SCHEDULED"]}}}})
        for run in left:
            call_api(url, f"/flow_runs/{run['id']}", method="DELETE")


def test_a_served_schedule_fires_and_the_build_completes(prefect_server, small_build, tmp_path):
    spec, samples = small_build
    build = tmp_path / "build"
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--spec", str(spec), "--inputs", str(samples), "--out", str(build),
         "--interval", "20", "--name", "every-20s"],
        env=os.environ | {"PREFECT_API_URL": prefect_server}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        run = _wait_for_completed_scheduled_run(prefect_server, "build-corpus/every-20s", serving)
        _assert_a_whole_build(prefect_server, run, spec, build)
        # doctor: the deployment, its next scheduled run, a healthy server (exit status 0).
        doctor = subprocess.run([sys.executable, "-m", "flows.cli", "doctor"], capture_output=True, text=True,
                                env=os.environ | {"PREFECT_API_URL": prefect_server}, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        report = doctor.stdout
        assert "prefect 3.8.8" in report and "scheduler" in report and "0 error(s) since the server started" in report
        line = report.index("deployment build-corpus/every-20s  [active]  every 20 s")
        next_run = report[line:].splitlines()[1]
        # The latest run: the completed one, or (a build longer than the 20 s interval on a loaded
        # machine) the next one the schedule already started.
        assert next_run.strip().startswith("next run: 20")
        assert re.search(r"last run: (Completed|Pending|Submitting|Running) at 20", next_run), next_run
    finally:
        _stop(serving)
        _delete_deployment(prefect_server, "build-corpus/every-20s")


def test_the_prefect_yaml_deployment_runs_on_a_process_work_pool(prefect_server, small_build, tmp_path):
    """prefect.yaml as README tells a user to deploy it (a process work pool, `prefect deploy`, a
    worker), with the schedule and parameters overridden for a test-sized build."""
    spec, samples = small_build
    build = tmp_path / "build"
    env = os.environ | {"PREFECT_API_URL": prefect_server, "LLAMA_RECIPE_ROOT": str(REPO)}
    prefect = [sys.executable, "-m", "prefect"]

    def run(*args: str) -> None:
        done = subprocess.run(prefect + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    pool = "llama-recipe-test"
    run("work-pool", "create", pool, "--type", "process", "--overwrite")
    params = {"spec_path": str(spec), "inputs_dir": str(samples), "build_dir": str(build)}
    run("--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"), "--name", "weekly-corpus-build",
        "--pool", pool, "--interval", "20", "--params", json.dumps(params))
    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", pool], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_ = _wait_for_completed_scheduled_run(prefect_server, "build-corpus/weekly-corpus-build", worker)
        _assert_a_whole_build(prefect_server, run_, spec, build)
    finally:
        _stop(worker)
        _delete_deployment(prefect_server, "build-corpus/weekly-corpus-build")
