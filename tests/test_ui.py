"""The Prefect UI, in a real browser: a tiny build run against a real local `prefect server start`,
then Debian's chromium (driven headless by playwright) opens the finished run and must show every
stage's task run and its table artifact, without a request leaving 127.0.0.1.

Skips, saying why, where chromium is not installed (`make setup` installs it with apt-get).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from flows.server import call_api
from pipeline.spec import load_spec
from tests.conftest import SERVER_LOGS, free_port, small_demo_spec

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="module")
def finished_build(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; make setup does it as root)")
    from flows.server import ensure_server, stop_server
    from pipeline.samples import write_samples

    root = tmp_path_factory.mktemp("ui")
    home = root / "prefect"
    url = ensure_server(home, port=free_port())
    SERVER_LOGS.append(home / "server.log")  # its errors fail the test too (tests/conftest.py)
    try:
        write_samples(root / "samples", seed=2, scale=0.05)
        spec = small_demo_spec(root, "ui-test")
        env = os.environ | {"PREFECT_API_URL": url}
        done = subprocess.run([sys.executable, "-m", "flows.cli", "build", "--spec", str(spec), "--inputs",
                               str(root / "samples"), "--out", str(root / "build")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield url, load_spec(spec)
    finally:
        stop_server(home)


def test_the_ui_shows_every_stage_task_run_and_its_table(finished_build):
    from playwright.sync_api import sync_playwright

    api, spec = finished_build
    ui = api.removesuffix("/api")
    runs = {run["name"]: run["id"] for run in call_api(api, "/flow_runs/filter", {"limit": 50})}
    build_run = next(run_id for name, run_id in runs.items() if name.startswith("build-corpus-"))
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda request: requests.append(request.url))
        # The build's own steps: their artifacts (the UI 3.8 lists no task runs of a flow run that
        # also has subflow runs; its graph shows them, see docs/prefect-ui-build-corpus.png).
        page.goto(f"{ui}/runs/flow-run/{build_run}")
        page.get_by_text("Artifacts", exact=True).first.click()
        for key in ("tokenizer", "mixture", "mixture-chart"):
            page.get_by_text(key, exact=True).first.wait_for(timeout=20_000)
        for source, source_spec in spec.sources.items():
            page.goto(f"{ui}/runs/flow-run/{runs[f'source-{source}']}")
            page.get_by_text("Task Runs", exact=True).first.click()
            for stage in source_spec.stages:  # every stage's task run, by its name
                page.get_by_text(stage, exact=True).first.wait_for(timeout=20_000)
            page.get_by_text("Artifacts", exact=True).first.click()
            for stage in source_spec.stages:  # and its table and samples artifacts
                page.get_by_text(stage.replace("_", "-"), exact=True).first.wait_for(timeout=20_000)
                page.get_by_text(stage.replace("_", "-") + "-samples", exact=True).first.wait_for(timeout=20_000)
        browser.close()
    outside = sorted({u for u in requests if not u.startswith((ui, "blob:", "data:"))})  # blob/data: in the page
    assert not outside, f"the UI sent requests outside the local server: {outside[:5]}"
