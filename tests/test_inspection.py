"""What a stage removed and changed (issue 16, pipeline/inspection.py): seeded samples of rejected
documents per reason, before/after diffs of edited documents, the `llama-recipe inspect` command,
and its static HTML page rendered in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.documents import read_documents, read_manifest
from pipeline.inspection import PREVIEW_CHARS, stage_samples, to_html, to_markdown
from pipeline.samples import write_samples
from pipeline.stage import get_stage, run_stage

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    write_samples(root / "samples", seed=3, scale=0.05)
    stages = root / "build" / "stages"
    for name, given in (("cc_ingest", root / "samples" / "cc"), ("cc_line_dedup", stages / "cc_ingest"),
                        ("c4_ingest", root / "samples" / "c4"), ("c4_quality", stages / "c4_ingest")):
        run_stage(get_stage(name)(), [given], stages / name)
    return root / "build"


def _all_rows(folder: Path, key: str) -> dict[str, str]:
    manifest = read_manifest(folder)
    return {d.id: d.text for entry in manifest[key] for d in read_documents(folder / entry["path"])}


def test_rejected_samples_per_reason_are_seeded_prefixes_of_the_real_documents(build):
    folder = build / "stages" / "c4_quality"
    manifest = read_manifest(folder)
    samples = stage_samples(folder, n=2)
    assert set(samples.rejected) == set(manifest["rejected_by_reason"])  # every reason (all parts read)
    rejected = {d.id: d for entry in manifest["rejected_outputs"] for d in read_documents(folder / entry["path"])}
    for reason, found in samples.rejected.items():
        assert 1 <= len(found) <= 2
        for sample in found:
            doc = rejected[sample.id]
            assert doc.reason.split(":", 1)[0] == reason and sample.reason == doc.reason
            assert sample.text == doc.text[:PREVIEW_CHARS] and sample.chars == len(doc.text)
    assert stage_samples(folder, n=2).rejected == samples.rejected  # same seed, same samples
    other = stage_samples(folder, n=2, seed=1).rejected
    assert any([s.id for s in other[r]] != [s.id for s in samples.rejected[r]] for r in samples.rejected)
    only = stage_samples(folder, n=50, reason="curly_bracket")
    assert list(only.rejected) == ["curly_bracket"]
    assert len(only.rejected["curly_bracket"]) == min(50, manifest["rejected_by_reason"]["curly_bracket"])


def test_edited_documents_show_what_the_stage_took_out(build):
    folder = build / "stages" / "cc_line_dedup"
    samples = stage_samples(folder, n=3)
    before, after = _all_rows(build / "stages" / "cc_ingest", "outputs"), _all_rows(folder, "outputs")
    assert len(samples.edits) == 3
    for edit in samples.edits:
        assert before[edit.id] != after[edit.id] and edit.chars_after == len(after[edit.id])
        removed = [line[1:] for line in edit.diff if line.startswith("-") and not line.startswith("---")]
        assert removed and all(line in before[edit.id].split("\n") for line in removed)
    # A page the dedup emptied is shown as it was before the stage.
    [emptied] = stage_samples(folder, n=1).rejected.values()
    assert emptied[0].chars == 0 and emptied[0].before and emptied[0].before == before[emptied[0].id][:PREVIEW_CHARS]
    markdown = to_markdown(samples)
    assert "#### edited (before/after)" in markdown and "```diff" in markdown
    # c4_ingest (a reader) edits nothing it could be compared with: no diff section.
    assert stage_samples(build / "stages" / "c4_ingest").edits == []


def test_the_inspect_command_prints_the_samples_and_refuses_an_unknown_reason(build, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "flows.cli", "inspect", *args], cwd=ROOT,
                                       capture_output=True, text=True, timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    done = run(str(build), "c4_quality", "--reason", "lorem_ipsum", "-n", "2", "--kept", "--html", str(tmp_path / "page.html"))
    assert done.returncode == 0, done.stderr
    expected = stage_samples(build / "stages" / "c4_quality", n=2, reason="lorem_ipsum", kept=True)
    assert "lorem_ipsum" in done.stdout and all(s.id in done.stdout for s in expected.rejected["lorem_ipsum"])
    assert "kept" in done.stdout and (tmp_path / "page.html").read_text() == to_html(expected)
    refused = run(str(build), "c4_quality", "--reason", "no_such_reason")
    assert refused.returncode == 2 and "curly_bracket" in refused.stderr  # names the reasons there are
    missing = run(str(build), "no_such_stage")
    assert missing.returncode == 2 and "no complete stage folder" in missing.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it as root)")
def test_the_html_page_renders_the_reasons_samples_and_diffs_in_chromium(build, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.test_ui import CHROMIUM_ARGS

    page_file = tmp_path / "cc_line_dedup.html"
    samples = stage_samples(build / "stages" / "cc_line_dedup", n=2, kept=True)
    page_file.write_text(to_html(samples), encoding="utf-8")
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_file.as_uri())
        assert page.locator("h1").inner_text() == "cc_line_dedup"
        reasons = page.locator("#reasons tr td:first-child").all_inner_texts()
        assert reasons == list(samples.rejected)
        assert page.locator("section.reason article.sample").count() == sum(len(v) for v in samples.rejected.values())
        assert page.locator("#kept article").count() == 2
        diffs = page.locator("pre.diff")
        assert diffs.count() == len(samples.edits) == 2 and diffs.first.locator("span.del").count() >= 1
        assert page.locator("span.del").first.evaluate("e => getComputedStyle(e).color") == "rgb(170, 0, 0)"
        browser.close()
    assert requests == [page_file.as_uri()]  # the page loads nothing else
