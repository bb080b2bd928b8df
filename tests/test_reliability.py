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
