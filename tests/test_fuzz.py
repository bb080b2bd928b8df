"""The fuzzing campaign in its reduced, seeded form (the full one, 2,000 inputs per reader seed, is
`python scripts/fuzz.py` and its table is in docs/RELIABILITY.md): every reader and the cleaners
after it on mutated real samples — no crash, no hang, and every stage folder's ledger reconciles."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REALDATA, REPO

_spec = importlib.util.spec_from_file_location("fuzz", REPO / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz"] = fuzz
_spec.loader.exec_module(fuzz)

pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no real samples at {REALDATA} (../shared/realdata)")


def test_the_same_seed_gives_the_same_inputs():
    target = fuzz.targets(REALDATA)[2]
    assert fuzz.fuzz_input(target, 7, 3) == fuzz.fuzz_input(target, 7, 3)
    assert fuzz.fuzz_input(target, 7, 3) != fuzz.fuzz_input(target, 7, 4)


def test_every_reader_is_fuzzed():
    from pipeline.stage import load_stages

    readers = {name for name, cls in load_stages().items() if cls.reads == "raw"}
    assert {t.reader for t in fuzz.targets(REALDATA)} == readers


def test_no_reader_or_cleaner_crashes_or_hangs_on_mutated_real_samples(tmp_path):
    rows = fuzz.campaign(inputs=25, seed=2026, timeout=60, work=tmp_path)  # scripts/fuzz.py runs 2,000 per reader
    assert sum(r["inputs"] for r in rows) >= 190
    bad = [e for r in rows for e in r["examples"]]
    assert not bad, "\n".join(bad)
    for row in rows:
        assert row["crashes"] == row["hangs"] == row["fails"] == 0
        assert row["docs_in"] == row["kept"] + row["rejected"]
