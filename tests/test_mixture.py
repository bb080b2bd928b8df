"""The mixture sampler: Table 1 config, exact token targets in real tokens, repetition, export."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import zstandard
from pydantic import ValidationError

from pipeline.documents import Document, StageError, StageFolder, kept_parts, read_documents, read_manifest, rejected_parts
from pipeline.mixture import (
    TABLE1,
    MixtureConfig,
    SourceShare,
    export_jsonl_zst,
    plan_copies,
    sample_key,
    sample_mixture,
    split_targets,
)
from pipeline.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

WORDS = "the of and model data token language corpus train web page code paper text 1999 2023".split()


def write_source(root: Path, source: str, n_docs: int, seed: int = 0, parts: int = 1, long_every: int = 0) -> Path:
    """A hand-made final stage folder for one source: n_docs documents of varied length (every
    `long_every`-th one 20x longer, so whole-document sampling alone could not hit a target)."""
    rng = np.random.default_rng(seed)
    out = root / source
    with StageFolder(out, f"{source}_final", {}, source=source) as folder:
        per_part = -(-n_docs // parts)
        for p in range(parts):
            with folder.part(p) as part:
                for i in range(p * per_part, min(n_docs, (p + 1) * per_part)):
                    size = int(rng.integers(20, 120)) * (20 if long_every and i % long_every == 0 else 1)
                    words = rng.choice(WORDS, size=size)
                    text = f"{source} doc {i}: " + " ".join(words)
                    part.write(Document(id=f"{source}/{i}", text=text, source=source, meta={"url": f"https://x/{i}"}))
    return out


def all_docs(folder: Path) -> dict[str, Document]:
    return {d.id: d for p in kept_parts(folder) + rejected_parts(folder) for d in read_documents(p)}


def realized_tokens(docs: dict[str, Document], source: str) -> int:
    return sum(
        d.columns["repeats"] * d.columns["tokens"] + d.columns["partial_tokens"]
        for d in docs.values()
        if d.source == source and d.reason is None
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "wikipedia": write_source(root, "wikipedia", 300, seed=1, parts=2),
        "github": write_source(root, "github", 1150, seed=2, long_every=50),
        "cc": write_source(root, "cc", 6000, seed=3, parts=3),
    }


@pytest.fixture(scope="module")
def tokenizer(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    train_tokenizer(sources, out, TokenizerConfig(vocab_size=300), {"cc": 0.91, "wikipedia": 0.045, "github": 0.045})
    return out


def trainable_tokens(sources: dict[str, Path], tokenizer: Path, source: str, val_fraction: float = 0.0) -> int:
    sp = load_tokenizer(tokenizer)
    return sum(len(sp.encode(d.text)) + 2 for p in kept_parts(sources[source]) for d in read_documents(p))


def three_source_config(sources, tokenizer, **kwargs) -> MixtureConfig:
    """cc/wikipedia/github with the budget at which wikipedia is seen exactly 2.45 times."""
    shares = {"cc": SourceShare(share=0.91, epochs=1.0), "wikipedia": TABLE1["wikipedia"], "github": TABLE1["github"]}
    total = round(trainable_tokens(sources, tokenizer, "wikipedia") * 2.45 / 0.045)
    return MixtureConfig(sources=shares, total_tokens=kwargs.pop("total_tokens", total), val_fraction=kwargs.pop("val_fraction", 0.0), **kwargs)


# -- config


def test_table1_defaults_sum_to_one_and_match_paper():
    config = MixtureConfig()
    assert set(config.sources) == {"cc", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange"}
    assert abs(sum(s.share for s in config.sources.values()) - 1.0) < 1e-9
    assert config.sources["wikipedia"].epochs == 2.45 and config.sources["github"].epochs == 0.64
    assert config.total_tokens == "auto"


def test_shares_not_summing_to_one_are_rejected():
    shares = {name: {"share": spec.share, "epochs": spec.epochs} for name, spec in TABLE1.items()}
    shares["cc"]["share"] -= 0.1  # sum 0.9
    with pytest.raises(ValidationError, match="sum to 1"):
        MixtureConfig(sources=shares)


def test_unknown_source_and_bad_numbers_are_rejected():
    with pytest.raises(ValidationError, match="unknown source.*reddit"):
        MixtureConfig(sources={"cc": {"share": 0.5, "epochs": 1}, "reddit": {"share": 0.5, "epochs": 1}})
    with pytest.raises(ValidationError, match="epochs must be > 0"):
        MixtureConfig(sources={"cc": {"share": 1.0, "epochs": 0}})
    with pytest.raises(ValidationError, match="share must be in"):
        MixtureConfig(sources={"cc": {"share": 1.5, "epochs": 1}, "c4": {"share": -0.5, "epochs": 1}})
    with pytest.raises(ValidationError, match="val_fraction"):
        MixtureConfig(val_fraction=1.0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        MixtureConfig(bytes_per_token=4)


# -- the plan, on token counts


def random_keys(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


@pytest.mark.parametrize("epochs", [0.3, 0.64, 1.0, 1.06, 2.45, 3.7])
def test_plan_meets_the_target_to_the_token(epochs):
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 5000, size=400)
    tokens[::37] *= 40  # a few very long documents (books)
    target = round(epochs * tokens.sum())
    repeats, partial = plan_copies(tokens, target, random_keys(1, len(tokens)))
    assert (repeats * tokens).sum() + partial.sum() == target
    whole = int(np.floor(epochs))
    assert set(np.unique(repeats)) <= {whole, whole + 1}
    assert (partial > 0).sum() <= 1 and (partial < tokens).all()
    if (partial > 0).any():  # the cut copy is of a document not already taken in the fractional pass
        assert repeats[partial > 0][0] == whole
    # the fractional pass draws whole documents: tokens of extra copies + cut copy = the fraction
    assert ((repeats - whole) * tokens).sum() + partial.sum() == target - whole * tokens.sum()


def test_plan_is_deterministic_per_key_and_skips_empty_documents():
    tokens = np.array([0, 10, 20, 0, 30, 40])
    a = plan_copies(tokens, 135, random_keys(3, 6))
    b = plan_copies(tokens, 135, random_keys(3, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (a[0][tokens == 0] == 0).all() and (a[1][tokens == 0] == 0).all()
    assert (a[0] * tokens).sum() + a[1].sum() == 135
    seen = {tuple(plan_copies(tokens, 55, random_keys(s, 6))[0]) for s in range(20)}
    assert len(seen) > 1  # the keys decide which documents fill the fraction
    # documents are drawn in key order: the smallest keys are taken whole first
    keys = np.array([5, 1, 4, 9, 2, 3], dtype=np.uint64)
    repeats, partial = plan_copies(tokens, 55, keys)  # key order: 10 (1), 30 (2), 40 (3) cut at 15
    assert repeats.tolist() == [0, 1, 0, 0, 1, 0] and partial.tolist() == [0, 0, 0, 0, 0, 15]


def test_targets_sum_exactly_to_the_budget():
    shares = {name: spec.share for name, spec in TABLE1.items()}
    for total in (1, 999, 1_000_003, 1_400_000_000_000):
        targets = split_targets(total, shares)
        assert sum(targets.values()) == total
        assert all(abs(targets[n] - shares[n] * total) < 1 for n in shares)


# -- the stage


def test_realized_tokens_equal_targets_and_wikipedia_repeats_245_times(sources, tokenizer, tmp_path):
    config = three_source_config(sources, tokenizer)
    manifest = sample_mixture(sources, tokenizer, tmp_path / "mixture", config)
    stats = manifest["stats"]["sources"]
    docs = all_docs(tmp_path / "mixture")

    sp = load_tokenizer(tokenizer)
    for doc in list(docs.values())[::97]:  # the counts are real tokens: BOS + ids + EOS
        assert doc.columns["tokens"] == len(sp.encode(doc.text)) + 2
    assert manifest["stats"]["realized_tokens"] == config.total_tokens
    for name in ("wikipedia", "github", "cc"):
        target = stats[name]["target_tokens"]
        assert realized_tokens(docs, name) == stats[name]["realized_tokens"] == target
        assert abs(stats[name]["realized_share"] - config.sources[name].share) / config.sources[name].share < 0.005

    wiki = [d for d in docs.values() if d.source == "wikipedia"]
    assert stats["wikipedia"]["epochs"] == pytest.approx(2.45, rel=1e-4)
    assert {d.columns["repeats"] for d in wiki} == {2, 3} and sum(d.columns["partial_tokens"] > 0 for d in wiki) <= 1
    wiki_tokens = sum(d.columns["tokens"] for d in wiki)
    extra = sum(d.columns["tokens"] for d in wiki if d.columns["repeats"] == 3)
    assert extra / wiki_tokens == pytest.approx(0.45, abs=0.01)  # the third pass covers 45% of the tokens

    github = [d for d in docs.values() if d.source == "github"]
    assert {d.columns["repeats"] for d in github} == {0, 1} and 0.3 < stats["github"]["epochs"] < 0.9
    not_sampled = [d for d in github if d.columns["repeats"] == 0 and d.columns["partial_tokens"] == 0]
    assert len(not_sampled) == stats["github"]["docs_not_sampled"] > 0
    cc_passes = stats["cc"]["whole_passes"]
    assert cc_passes >= 1 and {d.columns["repeats"] for d in docs.values() if d.source == "cc"} == {cc_passes, cc_passes + 1}

    assert manifest["docs_in"] == 300 + 1150 + 6000 == manifest["docs_kept"] + manifest["docs_rejected"]
    assert manifest["rejected_by_reason"] == {"not_sampled": len(not_sampled)}
    assert all(d.reason == "not_sampled" for d in not_sampled)
    assert all(d.columns["split"] == "train" for d in docs.values())
    assert manifest["stats"]["warnings"] == []


def test_held_out_documents_are_never_trained_on(sources, tokenizer, tmp_path):
    config = three_source_config(sources, tokenizer, val_fraction=0.05)
    manifest = sample_mixture(sources, tokenizer, tmp_path / "mixture", config)
    docs = all_docs(tmp_path / "mixture")
    val = [d for d in docs.values() if d.columns["split"] == "val"]
    assert 0.03 * len(docs) < len(val) < 0.07 * len(docs)
    assert all(d.reason is None and d.columns["repeats"] == 0 == d.columns["partial_tokens"] for d in val)
    stats = manifest["stats"]["sources"]
    for name in ("wikipedia", "github", "cc"):
        assert realized_tokens(docs, name) == stats[name]["target_tokens"]
        held = [d for d in val if d.source == name]
        assert stats[name]["val_docs"] == len(held) and stats[name]["val_tokens"] == sum(d.columns["tokens"] for d in held)


@pytest.mark.parametrize("val_fraction", [0.0, 0.05])
def test_the_parallel_plan_is_the_one_process_plan(sources, tokenizer, tmp_path, val_fraction):
    """The passes over parts (2 forked workers) place every copy where plan_copies, given every
    document's tokens and sampling key in one process, places it; the bytes equal one worker's."""
    config = three_source_config(sources, tokenizer, val_fraction=val_fraction, seed=3)
    calls = []
    manifest = sample_mixture(sources, tokenizer, tmp_path / "two", config, workers=2, progress=lambda *a: calls.append(a))
    parts = sum(len(kept_parts(folder)) for folder in sources.values())
    assert calls == [("mixture", done, 2 * parts) for done in range(1, 2 * parts + 1)]  # count, then write
    docs = [d for p in kept_parts(tmp_path / "two") + rejected_parts(tmp_path / "two") for d in read_documents(p)]
    for name in config.sources:
        mine = sorted((d for d in docs if d.source == name), key=lambda d: int(d.id.split("/")[1]))
        trainable = np.array([0 if d.columns["split"] == "val" else d.columns["tokens"] for d in mine])
        keys = np.array([sample_key(3, name, d.id) for d in mine], dtype=np.uint64)
        repeats, partial = plan_copies(trainable, manifest["stats"]["sources"][name]["target_tokens"], keys)
        assert [d.columns["repeats"] for d in mine] == repeats.tolist()
        assert [d.columns["partial_tokens"] for d in mine] == partial.tolist()
    sample_mixture(sources, tokenizer, tmp_path / "one", config, workers=1)
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "timing.json"}


def test_sampling_is_deterministic_per_seed(sources, tokenizer, tmp_path):
    plan = lambda folder: {i: (d.columns["repeats"], d.columns["partial_tokens"]) for i, d in all_docs(folder).items()}
    sample_mixture(sources, tokenizer, tmp_path / "a", three_source_config(sources, tokenizer, seed=7))
    sample_mixture(sources, tokenizer, tmp_path / "b", three_source_config(sources, tokenizer, seed=7))
    assert plan(tmp_path / "a") == plan(tmp_path / "b")
    sample_mixture(sources, tokenizer, tmp_path / "c", three_source_config(sources, tokenizer, seed=8))
    assert plan(tmp_path / "a") != plan(tmp_path / "c")


def test_auto_budget_keeps_every_source_within_its_table1_epochs(sources, tokenizer, tmp_path):
    config = three_source_config(sources, tokenizer, total_tokens="auto")
    manifest = sample_mixture(sources, tokenizer, tmp_path / "mixture", config)
    stats = manifest["stats"]["sources"]
    assert manifest["stats"]["total_tokens_mode"] == "auto"
    for name, spec in config.sources.items():
        assert stats[name]["epochs"] <= spec.epochs * (1 + 1e-6)
    assert any(stats[name]["epochs"] == pytest.approx(spec.epochs, rel=1e-4) for name, spec in config.sources.items())


def test_too_many_epochs_is_warned_in_log_and_manifest(sources, tokenizer, tmp_path, caplog):
    config = three_source_config(sources, tokenizer)
    oversized = config.model_copy(update={"total_tokens": config.total_tokens * 2})  # wiki needs 4.9 epochs
    with caplog.at_level(logging.WARNING, logger="pipeline.mixture"):
        manifest = sample_mixture(sources, tokenizer, tmp_path / "mixture", oversized)
    warnings = manifest["stats"]["warnings"]
    over = {name for name, s in manifest["stats"]["sources"].items() if s["epochs"] > 3.0}
    assert "wikipedia" in over and {w.split(":")[0] for w in warnings} == over
    assert any(w.startswith("wikipedia: needs 4.9") for w in warnings)
    assert "wikipedia: needs" in caplog.text
    docs = all_docs(tmp_path / "mixture")
    assert {d.columns["repeats"] for d in docs.values() if d.source == "wikipedia"} == {4, 5}


def test_missing_source_folder_and_missing_tokenizer_are_clear_errors(sources, tokenizer, tmp_path):
    config = three_source_config(sources, tokenizer)
    with pytest.raises(StageError, match="no folder for github"):
        sample_mixture({"cc": sources["cc"], "wikipedia": sources["wikipedia"]}, tokenizer, tmp_path / "m", config)
    with pytest.raises(StageError, match="tokenizer model not found"):
        sample_mixture(sources, tmp_path / "nope.model", tmp_path / "m", config)
    assert not (tmp_path / "m").exists()


# -- export


@pytest.fixture(scope="module")
def mixture(sources, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixture") / "mixture"
    sample_mixture(sources, tokenizer, out, three_source_config(sources, tokenizer, val_fraction=0.02))
    return out


def test_export_writes_jsonl_zst_with_text_and_meta(mixture, tmp_path):
    written = export_jsonl_zst(mixture, tmp_path / "export", docs_per_file=500)
    kept = {d.id: d for p in kept_parts(mixture) for d in read_documents(p)}
    lines = {}
    for path in sorted((tmp_path / "export").rglob("*.jsonl.zst")):
        with zstandard.ZstdDecompressor().stream_reader(open(path, "rb")) as raw:
            for line in io.TextIOWrapper(raw, encoding="utf-8"):
                record = json.loads(line)
                assert set(record) == {"text", "meta"}
                assert path.parent.name == record["meta"]["source"]
                lines[record["meta"]["id"]] = record
    assert set(lines) == set(kept)  # every kept document once, the not-sampled ones not at all
    for doc_id, record in lines.items():
        doc = kept[doc_id]
        assert record["text"] == doc.text and record["meta"]["url"] == doc.meta["url"]
        assert record["meta"]["repeats"] == doc.columns["repeats"] and record["meta"]["split"] == doc.columns["split"]
    assert sum(s["docs"] for s in written.values()) == len(kept)
    assert len(written["cc"]["files"]) == -(-written["cc"]["docs"] // 500) > 1
    assert json.loads((tmp_path / "export" / "export.json").read_text())["sources"] == written


def test_parquet_and_jsonl_zst_load_with_hf_datasets(mixture, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parts = [str(p) for p in kept_parts(mixture)]
    table = datasets.load_dataset("parquet", data_files=parts, split="train", cache_dir=str(tmp_path / "cache"))
    kept = [d for p in kept_parts(mixture) for d in read_documents(p)]
    assert table.num_rows == len(kept)
    assert {"id", "text", "source", "meta", "tokens", "repeats", "partial_tokens", "split"} <= set(table.column_names)
    assert sorted(table["id"]) == sorted(d.id for d in kept)
    assert sum(table["repeats"]) == sum(d.columns["repeats"] for d in kept)

    export_jsonl_zst(mixture, tmp_path / "export")
    files = sorted(str(p) for p in (tmp_path / "export").rglob("*.jsonl.zst"))
    lines = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert lines.num_rows == len(kept) and set(lines.column_names) == {"text", "meta"}
    assert sorted(m["id"] for m in lines["meta"]) == sorted(d.id for d in kept)


def test_an_unchanged_mixture_is_reused_and_a_changed_one_rewritten(sources, tokenizer, tmp_path):
    out = tmp_path / "mixture"
    first = sample_mixture(sources, tokenizer, out, three_source_config(sources, tokenizer, seed=7))
    inode = (out / "manifest.json").stat().st_ino
    again = sample_mixture(sources, tokenizer, out, three_source_config(sources, tokenizer, seed=7))
    assert again == first and (out / "manifest.json").stat().st_ino == inode  # same inputs and config: kept
    sample_mixture(sources, tokenizer, out, three_source_config(sources, tokenizer, seed=7), reuse=False)
    assert (out / "manifest.json").stat().st_ino != inode  # reuse=False: written again...
    assert read_manifest(out) == first  # ...to the same bytes
    changed = sample_mixture(sources, tokenizer, out, three_source_config(sources, tokenizer, seed=8))
    assert changed["identity"] != first["identity"]
