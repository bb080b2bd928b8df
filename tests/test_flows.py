"""End to end through Prefect: samples → every stage → tokenizer → mixture → shards → torchrun training.

The suite's real Prefect server (tests/conftest.py: `prefect server start`, every service running)
serves the whole module; a test fails if that server's log gains an error while it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.documents import is_complete, read_manifest, read_timing
from pipeline.spec import SPEC_DIR, load_spec

pytestmark = pytest.mark.slow


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
def recipe_run(prefect_server, tiny_spec, tmp_path_factory):
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
    # Exact token targets: every source's training tokens are its Table 1 share of the total.
    for source, realized in stats["realized_share"].items():
        target = stats["target_share"][source]
        assert abs(realized - target) / target < 0.005, (source, target, realized)
    from flows.summary import mixture_table

    table = "\n".join(mixture_table(out / "build"))
    assert "target tok" in table and "wikipedia" in table and "Table 1" in table


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


def test_stages_publish_tables_progress_and_charts(recipe_run):
    from prefect.client.orchestration import get_client

    async def artifacts() -> dict[str, set[str]]:
        async with get_client() as client:
            kinds: dict[str, set[str]] = {}
            offset = 0
            while found := await client.read_artifacts(limit=200, offset=offset):
                for artifact in found:
                    kinds.setdefault(artifact.type, set()).add(artifact.key)
                offset += len(found)
            return kinds

    kinds = asyncio.run(artifacts())
    assert {"cc-langid", "cc-perplexity", "c4-quality", "mixture"} <= kinds["table"]
    assert {"cc-langid-progress", "books-dedup-progress", "mixture-progress", "token-shards-progress"} <= kinds["progress"]
    assert {"cc-langid-chart", "cc-perplexity-chart", "mixture-chart"} <= kinds["markdown"]
    # What each stage removed and changed (issue 16): a samples artifact per stage task run.
    assert {"cc-line-dedup-samples", "c4-quality-samples", "books-dedup-samples", "github-filter-samples"} <= kinds["markdown"]


def test_ablate_reports_every_variant_and_identical_variants_train_identically(recipe_run, tiny_spec, tmp_path):
    """`ablate` at a tiny size: the base spec and a variant that changes nothing (a config key set to
    its value), 2 seeds each, a few steps. The variant's build reuses every stage of the base's
    (the same files), both train with one tokenizer on one reference set, so the same seed gives the
    same losses; the report has every variant, seed and metric, in markdown and in the UI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ablate import BASE, ablate, seed_build

    out, _ = recipe_run
    work = tmp_path / "ablation"
    seed_build(out / "build", work / "builds" / BASE)  # the recipe's build is the base build, reused
    variants = {"same": {"set": {"cc_langid": {"threshold": 0.5}}, "drop": []}}
    train = {"steps": 4, "log_every": 2, "eval_every": 2, "ckpt_every": 4, "seq_len": 64, "batch_size": 4, "warmup_steps": 1}
    sources = list(load_spec(tiny_spec).mixture.sources)  # a tiny build holds few held-out documents: all sources'
    report = ablate(str(tiny_spec), str(out / "samples"), str(work), variants, [0, 1], "cpu", train, sources)

    assert list(report["variants"]) == [BASE, "same"]
    for variant in report["variants"].values():
        assert variant["seeds"] == [0, 1] and set(variant["runs"]) == {"0", "1"}
        reference = variant["metrics"]["val_loss_reference"]
        assert reference["n"] == 2 and reference["std"] > 0  # two seeds, two different models
    base, same = report["variants"][BASE], report["variants"]["same"]
    assert same["runs"] == base["runs"] and same["metrics"] == base["metrics"]  # bit for bit, seed by seed
    # The variant's build is the base's: every stage folder reused (hard links to the same files).
    base_stages = work / "builds" / BASE / "stages"
    for folder in base_stages.iterdir():
        if not folder.name.startswith("."):
            same_manifest = work / "builds" / "same" / "stages" / folder.name / "manifest.json"
            assert same_manifest.stat().st_ino == (folder / "manifest.json").stat().st_ino, folder.name
    markdown = (work / "ablation.md").read_text()
    assert "| base | 2 |" in markdown and "| same | 2 |" in markdown and "no measurable difference" in markdown
    assert json.loads((work / "ablation.json").read_text())["variants"] == report["variants"]
    reference_stats = read_manifest(work / "reference")["stats"]
    assert reference_stats["shards"][0]["split"] == "val" and reference_stats["shards"][0]["docs"] > 0

    async def keys() -> set[str]:
        async with get_client() as client:
            # The suite's server holds hundreds of other tests' artifacts: ask for these keys.
            wanted = ArtifactFilter(key=ArtifactFilterKey(any_=["ablation", "ablation-report"]))
            return {a.key for a in await client.read_artifacts(artifact_filter=wanted)}

    assert {"ablation", "ablation-report"} <= asyncio.run(keys())


# The tests below rebuild parts of the recipe's build: keep them last in this module.


def _stage_folders(build: Path) -> dict[str, Path]:
    folders = {p.name: p for p in (build / "stages").iterdir() if p.is_dir() and not p.name.startswith(".")}
    return folders | {"tokenizer": build / "tokenizer", "mixture": build / "mixture", "token_shards": build / "tokens"}


def _snapshot(build: Path) -> dict[str, tuple[int, bytes]]:
    """Per step: the inode of its manifest (a recomputed folder is a new one) and the manifest bytes."""
    return {name: ((f / "manifest.json").stat().st_ino, (f / "manifest.json").read_bytes())
            for name, f in _stage_folders(build).items()}


def test_rerun_recomputes_the_stage_and_only_what_is_downstream(recipe_run, tiny_spec):
    from flows.corpus import build_corpus

    out, _ = recipe_run
    build = out / "build"
    before = _snapshot(build)
    build_corpus(str(tiny_spec), str(out / "samples"), str(build), rerun=["wikipedia_clean"])
    after = _snapshot(build)
    recomputed = {name for name in before if after[name][0] != before[name][0]}
    assert recomputed == {"wikipedia_clean", "cc_perplexity", "cc_wikiref", "tokenizer", "mixture", "token_shards"}
    # Deterministic: recomputed from the same inputs, every manifest has the same bytes.
    assert {name: m for name, (_, m) in after.items()} == {name: m for name, (_, m) in before.items()}


def test_a_config_change_recomputes_that_stage_and_its_downstream(recipe_run, tiny_spec, tmp_path):
    from flows.corpus import build_corpus

    out, _ = recipe_run
    build = out / "build"
    raw = yaml.safe_load(tiny_spec.read_text())
    raw["sources"]["c4"]["stages"]["c4_quality"]["min_num_sentences"] = 6
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = _snapshot(build)
    build_corpus(str(changed), str(out / "samples"), str(build))
    after = _snapshot(build)
    recomputed = {name for name in before if after[name][0] != before[name][0]}
    assert recomputed == {"c4_quality", "tokenizer", "mixture", "token_shards"}
    assert after["c4_quality"][1] != before["c4_quality"][1]
    # Back to the original spec: the same bytes as before the change.
    build_corpus(str(tiny_spec), str(out / "samples"), str(build))
    assert {name: m for name, (_, m) in _snapshot(build).items()} == {name: m for name, (_, m) in before.items()}


def test_serve_registers_a_scheduled_deployment(prefect_server, tiny_spec, tmp_path):
    import os
    import subprocess
    import sys
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--spec", str(tiny_spec), "--inputs", str(tmp_path),
         "--out", str(tmp_path / "build"), "--cron", "0 3 * * 0", "--name", "weekly-test"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )

    async def deployment():
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name("build-corpus/weekly-test")
            except Exception:  # not registered yet
                return None

    try:
        deadline, found = time.time() + 120, None
        while found is None and time.time() < deadline and serving.poll() is None:
            found = asyncio.run(deployment())
            time.sleep(1)
        assert found is not None, serving.stdout.read().decode() if serving.poll() is not None else "not registered"
        crons = [s.schedule.cron for s in found.schedules]
        assert crons == ["0 3 * * 0"]
        assert found.parameters["build_dir"] == str((tmp_path / "build").resolve())
    finally:
        serving.terminate()
        serving.wait(timeout=30)
        # Leave the suite's server as found: a deployment nothing serves any more is what `doctor`
        # reports as unhealthy (the foreman marks it NOT_READY a minute later), and later tests ask it.

        async def delete() -> None:
            async with get_client() as client:
                if (registered := await deployment()) is not None:
                    await client.delete_deployment(registered.id)

        asyncio.run(delete())


def _build_files(build: Path) -> dict[str, bytes]:
    """Every manifest, Parquet part and token shard of a build (not timing.json, nor BUILD.json)."""
    wanted = [p for p in build.rglob("*") if p.is_file() and (p.suffix in (".parquet", ".bin", ".idx", ".src")
                                                               or p.name == "manifest.json")]
    return {str(p.relative_to(build)): p.read_bytes() for p in wanted if not any(s.startswith(".") for s in p.parts)}


def test_a_build_on_a_two_worker_dask_cluster_from_s3_writes_the_local_bytes_and_publishes_them(
        recipe_run, tiny_spec, tmp_path, monkeypatch, s3_bucket):
    """The scale-out case end to end: inputs on S3 (moto's server on 127.0.0.1), every stage's parts on
    a 2-worker Dask cluster whose workers copy the objects they read, the build published to S3. The
    parts, shards and every manifest downstream of the readers are the local build's bytes; the
    readers' manifests differ only in naming the inputs' URLs and versions; the published tree is the
    build."""
    from distributed import LocalCluster

    import fsspec

    from flows.corpus import build_corpus
    from pipeline.storage import fetch_folder

    import threading

    import flows.corpus as corpus

    out, _ = recipe_run
    fs, bucket = s3_bucket
    fs.put(str(out / "samples"), f"{bucket}/raw", recursive=True)
    # The workers are other processes: they take the store's endpoint from the environment.
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", fsspec.config.conf["s3"]["endpoint_url"])
    # On a cluster the independent sources are in flight at the same time: every source but cc
    # (which needs wikipedia's output) waits here until all the others have been started, so a
    # one-after-the-other scheduler would break the barrier. (The tiny spec's subflows last well
    # under a second each, too short to assert overlap from their recorded start and end times.)
    independent = [name for name in load_spec(tiny_spec).sources if name != "cc"]
    all_started = threading.Barrier(len(independent), timeout=120)
    real_subflow = corpus.build_source

    def subflow_once_all_started(source, *args, **kwargs):
        if source in independent:
            all_started.wait()
        return real_subflow(source, *args, **kwargs)

    monkeypatch.setattr(corpus, "build_source", subflow_once_all_started)
    started = datetime.now(timezone.utc)
    url = f"s3://{bucket}/builds/tiny"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        # The spec's 2 processes per stage: the parts go to the cluster as jobs, and a stage that runs
        # whole on a Dask worker (a daemon process, which may not fork) gets one process there.
        result = build_corpus(str(tiny_spec), f"s3://{bucket}/raw", str(tmp_path / "build"),
                              dask_address=cluster.scheduler_address, publish_url=url)
    assert result["published"] == url
    local, on_dask = _build_files(out / "build"), _build_files(tmp_path / "build")
    assert set(local) == set(on_dask) and len(local) > 50
    differing = sorted(n for n in local if local[n] != on_dask[n])
    assert differing and all(n.endswith("_ingest/manifest.json") for n in differing), differing
    for name in differing:
        ours, theirs = json.loads(on_dask[name]), json.loads(local[name])
        assert all(i["path"].startswith(f"s3://{bucket}/raw/") for i in ours["inputs"]), name
        assert [i["sha256"] for i in ours["inputs"]] == [i["sha256"] for i in theirs["inputs"]]
        assert {k: v for k, v in ours.items() if k not in ("inputs", "identity")} == \
            {k: v for k, v in theirs.items() if k not in ("inputs", "identity")}, name
    _assert_parts_ran_on_the_cluster(tmp_path / "build", tiny_spec)
    assert not all_started.broken
    # The mixture's and the token shards' passes ran in the cluster's workers too, not in this process.
    for step in ("mixture", "tokens"):
        placed = read_timing(tmp_path / "build" / step)
        who = placed.get("part_workers", {}) | placed.get("pass_workers", {})
        assert who and not any(w.startswith(f"{os.getpid()}@") for w in who), (step, placed)
    runs = _source_runs_since(started)
    assert len(runs) == 7
    # ... and a source still waits for the one whose output it reads: wikipedia before cc.
    times = {name: (start, end) for name, start, end in runs}
    assert times["source-wikipedia"][1] <= times["source-cc"][0]
    # Published: the build's tree; what `pretrain --tokens s3://...` fetches is its token shards.
    published = {p[len(f"{bucket}/builds/tiny/"):]: fs.cat_file(p) for p in fs.find(f"{bucket}/builds/tiny")}
    assert {n: published[n] for n in on_dask} == on_dask
    tokens = fetch_folder(f"{url}/tokens", tmp_path / "fetched-tokens")
    assert _build_files(tokens) == _build_files(tmp_path / "build" / "tokens")


def _assert_parts_ran_on_the_cluster(build: Path, spec_path: Path) -> None:
    """Every stage whose parts can leave this machine had each part written by a cluster worker."""
    from pipeline.stage import get_stage

    spec = load_spec(spec_path)
    stages = [name for source in spec.sources.values() for name in source.stages]
    remote = [name for name in stages if get_stage(name).parallel_parts and get_stage(name).remote_parts]
    assert set(stages) == set(remote)
    for name in remote:
        folder = build / "stages" / name
        timing = read_timing(folder)
        placed = timing["part_workers"]
        assert sum(placed.values()) == len(read_manifest(folder)["outputs"]), (name, placed)
        # the parts and the prepare passes (dedup hashing and reduces, books' sketches) ran there
        assert not any(who.startswith(f"{os.getpid()}@") for who in placed | timing.get("pass_workers", {})), (name, timing)
    assert read_timing(build / "stages" / "cc_line_dedup")["pass_workers"]


def _source_runs_since(started) -> list[tuple[str, object, object]]:
    """(name, start, end) of the source subflow runs that started after `started`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    async def read() -> list[tuple[str, object, object]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
            return sorted((r.name, r.start_time, r.end_time) for r in runs if r.name.startswith("source-"))

    return asyncio.run(read())


def test_a_build_on_a_two_cpu_ray_cluster_writes_the_same_bytes(recipe_run, tiny_spec, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    from flows.corpus import build_corpus
    from tests.clusters import ray_head

    out, _ = recipe_run
    # The stage tasks run in this process and report to Prefect here (checked below); the cluster's
    # workers run plain part jobs and are not given PREFECT_API_URL.
    with ray_head(tmp_path / "ray-head.log", monkeypatch) as address:
        started = datetime.now(timezone.utc)
        # The spec's 2 processes per stage: Ray's workers are ordinary processes, which may fork.
        build_corpus(str(tiny_spec), str(out / "samples"), str(tmp_path / "build"), ray_address=address)
    local, on_ray = _build_files(out / "build"), _build_files(tmp_path / "build")
    assert set(local) == set(on_ray) and len(local) > 50
    assert [name for name in local if local[name] != on_ray[name]] == []
    _assert_parts_ran_on_the_cluster(tmp_path / "build", tiny_spec)
    # All seven source subflows ran. (That they run side by side is checked on Dask: with subflows this
    # short, a write waiting on the SQLite server's lock, up to its 60 s busy timeout, can delay a
    # subflow's creation until the others are done, as seen once in CI; the bytes do not depend on it.)
    assert len(_source_runs_since(started)) == 7

    stages = [name for source in load_spec(tiny_spec).sources.values() for name in source.stages]

    async def reported() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(any_=stages), start_time=TaskRunFilterStartTime(after_=started)))
            return sorted(r.name for r in runs if r.state and r.state.is_completed())

    # Each stage's task run reached this test's Prefect server.
    assert asyncio.run(reported()) == sorted(stages)
