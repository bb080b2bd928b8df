"""The reliability campaign in its reduced form (the full one is `python scripts/reliability.py`,
whose table is docs/RELIABILITY.md): the quick bad-input cases (one or more per input kind), a
read-only / full / size-limited output folder, and kill -9 at two points of a real corpus build
followed by a rerun that must give the same bytes and pass `llama-recipe verify`."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reliability", ROOT / "scripts" / "reliability.py")
reliability = importlib.util.module_from_spec(_spec)
sys.modules["reliability"] = reliability
_spec.loader.exec_module(reliability)


@pytest.fixture(scope="module")
def secret():
    folder = Path(tempfile.mkdtemp(prefix="reliability-secret-"))  # outside every case folder
    path = folder / "secret.txt"
    path.write_text("TOPSECRET\n")
    yield path
    shutil.rmtree(folder)


QUICK = [case for case in reliability.build_cases(Path("/nonexistent/secret.txt")) if case.quick]


def test_quick_set_covers_every_input_kind():
    every = {case.kind for case in reliability.build_cases(Path("/x"))}
    assert {case.kind for case in QUICK} == every


def test_bad_inputs(secret, tmp_path):
    """Every quick case, two at a time (each runs in its own child process)."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [c for c in reliability.build_cases(secret) if c.quick]  # with the real secret's path
    strace = shutil.which("strace") is not None
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda c: reliability.run_case(c, tmp_path, secret, 120, strace), cases))
    failed = [v for v in verdicts if v["status"] != "ok"]
    assert not failed, "\n".join(f"{v['case']}: {v['status']} {v.get('detail')}" for v in failed)
    for case, verdict in zip(cases, verdicts):
        assert verdict["peak_rss_mb"] <= case.rss_mb
        assert verdict["docs_in"] == verdict["kept"] + verdict["rejected"] and verdict["rows_match"]
        if case.secret and strace:
            assert verdict["secret_touched"] is False and verdict["outside"] == [], verdict


def test_disk_full_and_read_only_give_a_clear_message(tmp_path):
    rows = reliability.disk_and_permission_checks(tmp_path)
    ran = [r for r in rows if r["rc"] != "-"]
    assert any("RLIMIT_FSIZE" in r["case"] for r in ran)  # needs no privilege: always runs
    expected = {"read-only": "Read-only file system", "disk full": "No space left on device", "RLIMIT_FSIZE": "File too large"}
    for row in ran:
        word = next(v for k, v in expected.items() if k in row["case"])
        assert row["rc"] == 2 and row["message"].startswith("error: c4_ingest: cannot write"), row
        assert word in row["message"] and not row["traceback"] and not row["complete_folder_left"], row


SMALL_SPEC = """
name: small
description: Four sources of the demo, for the kill test.
workers: 2
sources:
  c4:
    inputs: ["c4/*.json.gz"]
    stages: {c4_ingest: {}, c4_quality: {min_words_per_line: 3, min_num_sentences: 5}}
  github:
    inputs: ["github/*.jsonl.gz"]
    stages: {github_ingest: {}, github_filter: {}, github_dedup: {}}
  books:
    inputs: ["books/gutenberg/*.txt", "books/books3/*.jsonl.zst"]
    stages: {books_ingest: {}, books_dedup: {}}
  stackexchange:
    inputs: ["stackexchange/*/Posts.xml"]
    stages: {stackexchange_ingest: {}}
mixture:
  total_tokens: auto
  val_fraction: 0.05
  sources:
    c4: {share: 0.5, epochs: 1.06}
    github: {share: 0.2, epochs: 0.64}
    books: {share: 0.2, epochs: 2.23}
    stackexchange: {share: 0.1, epochs: 1.03}
tokenizer: {vocab_size: 2000, train_sample_bytes: 2000000}
token_shards: {shard_tokens: 20000, num_workers: 2}
"""


@pytest.mark.slow
def test_kill_and_rerun_gives_the_same_bytes(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL_SPEC)
    result = reliability.kill_campaign(tmp_path / "kills", kills=2, spec=str(spec), points=[0.4, 0.75],
                                       log=lambda _: None, check_determinism=False)
    for row in result["rows"]:
        assert row["half_stage_at_kill"] == [], row  # no incomplete folder under a final name, ever
        assert row["rerun_rc"] == 0, row
        assert row["same_set"] and row["differ"] == [] and row["shards_differ"] == [] and row["shards"] > 0, row
        assert row["bytes_differ"] == [], f"manifests differ (wall times?): {row['bytes_differ']}"
        assert row["verify"] == "ok", row
    assert any(not row["finished_before_kill"] for row in result["rows"]), "no kill landed inside the build"


# ---- a stage killed in the middle resumes: its finished parts are adopted, not written again -----

from pipeline.documents import Document  # noqa: E402
from pipeline.stage import Stage, StageConfig  # noqa: E402


class SlowParts(Stage):
    """A test stage: keeps every document, leaving a marker "<part>-<pid>" per part it writes and
    sleeping $SLOW_PARTS_SECONDS (not in the identity: the killed run and its rerun are the same)."""

    name = "test_slow_parts"
    source = "cc"
    parallel_parts = True
    remote_parts = True

    class Config(StageConfig):
        markers: str

    def process(self, docs, part: int = 0):
        import os
        import time

        Path(self.config.markers, f"{part}-{os.getpid()}").touch()
        time.sleep(float(os.environ.get("SLOW_PARTS_SECONDS", "0")))
        yield from docs


def run_slow_parts(inputs: list[str], output: str, markers: str) -> None:
    from pipeline.stage import run_stage

    run_stage(SlowParts({"markers": markers}), inputs, output, workers=2)


def test_a_stage_killed_mid_way_resumes_with_only_its_missing_parts(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from pipeline.documents import read_timing, write_documents
    from pipeline.stage import run_stage

    inputs = []
    for part in range(8):
        path = tmp_path / "in" / f"part-{part}.parquet"
        path.parent.mkdir(exist_ok=True)
        write_documents(path, [Document(id=f"d{part}-{i}", text=f"text {part} {i}", source="cc") for i in range(5)])
        inputs.append(str(path))
    markers, output = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    code = f"from tests.test_reliability import run_slow_parts; run_slow_parts({inputs!r}, {str(output)!r}, {str(markers)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=os.environ | {"SLOW_PARTS_SECONDS": "1.5"},
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.glob(".out.tmp-*/.parts-done/*.pkl"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage's process and its forked workers
    proc.wait()
    done = {int(p.stem) for p in tmp_path.glob(".out.tmp-*/.parts-done/*.pkl")}
    assert 3 <= len(done) < 8 and not output.exists()

    manifest = run_stage(SlowParts({"markers": str(markers)}), inputs, output, workers=2)
    # The parts marked done before the kill were written once (by the killed run); the others again.
    written: dict[int, int] = {}
    for marker in markers.iterdir():
        part = int(marker.name.split("-")[0])
        written[part] = written.get(part, 0) + 1
    assert set(written) == set(range(8)) and all(written[part] == 1 for part in done), (written, done)
    assert read_timing(output)["parts_resumed"] == len(done)
    assert manifest["docs_in"] == 40 == manifest["docs_kept"]
    assert not list(tmp_path.glob(".out.*"))  # the adopted folder became the output
    assert not (output / ".parts-done").exists() and not (output / ".identity").exists()
    (tmp_path / "markers-2").mkdir()
    fresh = run_stage(SlowParts({"markers": str(tmp_path / "markers-2")}), inputs, tmp_path / "fresh")
    parts = lambda folder: {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}
    assert parts(output) == parts(tmp_path / "fresh") and manifest["outputs"] == fresh["outputs"]
