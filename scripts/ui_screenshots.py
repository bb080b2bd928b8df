"""Screenshots of the Prefect UI for docs/: the newest corpus build, its CommonCrawl subflow, and the
perplexity and mixture charts. Run after `make demo` while its server is up:

    .venv/bin/python scripts/ui_screenshots.py [--api http://127.0.0.1:4200/api] [--out docs]

Uses Debian's chromium through playwright (as tests/test_ui.py does), headless and offline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import urllib.request
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://127.0.0.1:4200/api")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    ui = args.api.removesuffix("/api")
    runs = post(f"{args.api}/flow_runs/filter", {"limit": 200, "sort": "START_TIME_DESC"})
    build = next(r for r in runs if r["name"].startswith("build-corpus-") and r["state_type"] == "COMPLETED")
    cc = next(r for r in runs if r["name"] == "source-cc" and r["parent_task_run_id"] and r["start_time"] >= build["start_time"])
    artifacts = {a["key"]: a["id"] for a in post(f"{args.api}/artifacts/filter", {"limit": 200, "sort": "CREATED_DESC"})
                 if a["key"]}
    shots = [
        ("prefect-ui-build-corpus.png", f"{ui}/runs/flow-run/{build['id']}", None),
        ("prefect-ui-source-cc.png", f"{ui}/runs/flow-run/{cc['id']}", "Artifacts"),
        ("prefect-ui-perplexity-chart.png", f"{ui}/artifacts/artifact/{artifacts['cc-perplexity-chart']}", None),
        ("prefect-ui-mixture-chart.png", f"{ui}/artifacts/artifact/{artifacts['mixture-chart']}", None),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, url, tab in shots:
            page.goto(url)
            page.wait_for_timeout(4000)
            if tab:
                page.get_by_text(tab, exact=True).first.click()
                page.wait_for_timeout(3000)
            page.screenshot(path=str(args.out / name))
            print(f"wrote {args.out / name}  ({url})")
        browser.close()


if __name__ == "__main__":
    main()
