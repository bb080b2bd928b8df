"""End to end through Prefect: samples → every stage → mixture → tokenizer → shards → torchrun training.

One Prefect test harness (its ephemeral server starts once, ~20 s) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.documents import is_complete, read_manifest
from pipeline.spec import SPEC_DIR, load_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    """The demo spec with a shorter training run."""
    raw = yaml.safe_load((SPEC_DIR / "demo.yaml").read_text())
    raw["name"] = "flow-test"
    raw["train"].update({"steps": 30, "log_every": 5, "eval_every": 15, "ckpt_every": 30, "seq_len": 64, "batch_size": 4})
    raw["tokenizer"]["vocab_size"] = 2000
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def recipe_run(prefect_harness, tiny_spec, tmp_path_factory):
    from flows.recipe import recipe
    from pipeline.samples import write_samples

    out = tmp_path_factory.mktemp("run")
    write_samples(out / "samples", seed=1, scale=0.05)
    state = recipe(str(tiny_spec), str(out / "samples"), str(out), return_state=True)
    assert state.is_completed(), state
    return out, state


def test_every_stage_folder_is_complete_and_reconciles(recipe_run, tiny_spec):
    out, _ = recipe_run
    spec = load_spec(tiny_spec)
    for source, source_spec in spec.sources.items():
        for name in source_spec.stages:
            folder = out / "build" / "stages" / name
            assert is_complete(folder), name
            m = read_manifest(folder)
            assert m["docs_in"] == m["docs_kept"] + m["docs_rejected"], name
            assert m["docs_in"] > 0, name
    # Chained stages: what one stage keeps is what the next one reads.
    cc = list(spec.sources["cc"].stages)
    for upstream, downstream in zip(cc, cc[1:]):
        assert read_manifest(out / "build" / "stages" / upstream)["docs_kept"] == read_manifest(out / "build" / "stages" / downstream)["docs_in"]


def test_filters_catch_what_the_samples_plant(recipe_run):
    out, _ = recipe_run
    langid = read_manifest(out / "build" / "stages" / "cc_langid")
    assert langid["rejected_by_reason"].get("non_english", 0) > 0
    github = read_manifest(out / "build" / "stages" / "github_filter")
    assert any(reason == "license" for reason in github["rejected_by_reason"])
    perplexity = read_manifest(out / "build" / "stages" / "cc_perplexity")
    assert perplexity["stats"]  # cutoffs of our own KenLM model are recorded


def test_token_shards_follow_the_mixture(recipe_run):
    out, _ = recipe_run
    stats = read_manifest(out / "build" / "tokens")["stats"]
    assert set(stats["tokens_per_source"]) == {"cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange"}
    shard = next(s for s in stats["shards"] if s["split"] == "train")
    tokens = np.fromfile(out / "build" / "tokens" / shard["path"], dtype="<u2")
    assert len(tokens) == shard["tokens"] and tokens.max() < stats["vocab_size"]
    assert tokens[0] == stats["bos_id"]


def test_training_loss_falls(recipe_run):
    out, _ = recipe_run
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["last_loss"] < summary["first_loss"]
    assert (out / "train" / "metrics.jsonl").read_text().count("\n") >= 3


def test_prefect_shows_one_task_run_per_stage(recipe_run, tiny_spec):
    from prefect.client.orchestration import get_client

    _, state = recipe_run
    spec = load_spec(tiny_spec)
    expected = {name for s in spec.sources.values() for name in s.stages} | {"mixture", "tokenizer", "token-shards"}

    async def task_run_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(limit=200)
            # Only the recipe's own runs (a later test builds again).
            return [r.name for r in runs if r.state and r.state.is_completed() and r.start_time <= state.timestamp]

    names = asyncio.run(task_run_names())
    for stage in expected:
        assert names.count(stage) == 1, (stage, names)
    assert any(n.startswith("torchrun-") for n in names)


def test_second_build_reuses_unchanged_stages(recipe_run, tiny_spec):
    from flows.corpus import build_corpus

    out, _ = recipe_run
    before = {p.name: (p / "manifest.json").read_text() for p in (out / "build" / "stages").iterdir()}
    build_corpus(str(tiny_spec), str(out / "samples"), str(out / "build"))
    after = {p.name: (p / "manifest.json").read_text() for p in (out / "build" / "stages").iterdir()}
    assert before == after
