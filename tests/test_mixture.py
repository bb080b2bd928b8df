"""The mixture sampler: Table 1 config validation, repetition, sub-sampling, reconciliation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.documents import Document, StageError, StageFolder, kept_parts, read_documents, rejected_parts
from pipeline.mixture import TABLE1, MixtureConfig, SourceShare, sample_mixture

WORDS = "the of and model data token language corpus train web page code paper text".split()


def write_source(root: Path, source: str, n_docs: int, seed: int = 0, parts: int = 1) -> Path:
    """A hand-made final stage folder for one source: n_docs documents of varied length."""
    rng = np.random.default_rng(seed)
    out = root / source
    with StageFolder(out, f"{source}_final", {}, source=source) as folder:
        per_part = -(-n_docs // parts)
        for p in range(parts):
            with folder.part(p) as part:
                for i in range(p * per_part, min(n_docs, (p + 1) * per_part)):
                    words = rng.choice(WORDS, size=int(rng.integers(20, 120)))
                    part.write(Document(id=f"{source}/{i}", text=f"{source} doc {i}: " + " ".join(words), source=source))
    return out


def source_bytes(folder: Path) -> int:
    return sum(len(d.text.encode()) for p in kept_parts(folder) for d in read_documents(p))


def repeats_by_id(folder: Path) -> dict[str, int]:
    parts = kept_parts(folder) + rejected_parts(folder)
    return {d.id: d.columns["repeats"] for p in parts for d in read_documents(p)}


def three_source_config(sources: dict[str, Path], **kwargs) -> MixtureConfig:
    """cc/wikipedia/github with Table 1's wiki and github epochs reached exactly at the budget."""
    shares = {"cc": SourceShare(share=0.91, epochs=1.0), "wikipedia": TABLE1["wikipedia"], "github": TABLE1["github"]}
    total = int(source_bytes(sources["wikipedia"]) / 4.0 * 2.45 / 0.045)
    return MixtureConfig(sources=shares, total_tokens=kwargs.pop("total_tokens", total), **kwargs)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    # At the wiki-derived budget (54.4x wiki), github needs ~0.64 epochs and cc ~2.5.
    return {
        "wikipedia": write_source(root, "wikipedia", 300, seed=1, parts=2),
        "github": write_source(root, "github", 1150, seed=2),
        "cc": write_source(root, "cc", 6000, seed=3, parts=3),
    }


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
    with pytest.raises(ValidationError, match="Extra inputs"):
        MixtureConfig(total_token=5)


# -- sampling


def test_repetition_subsampling_and_reconciliation(sources, tmp_path):
    config = three_source_config(sources)
    manifest = sample_mixture(sources, tmp_path / "mixture", config)
    stats = manifest["stats"]["sources"]
    repeats = repeats_by_id(tmp_path / "mixture")

    wiki = [r for i, r in repeats.items() if i.startswith("wikipedia/")]
    assert len(wiki) == 300 and set(wiki) == {2, 3}
    assert stats["wikipedia"]["epochs"] == pytest.approx(2.45, rel=1e-6)
    for name in ("wikipedia", "github", "cc"):
        target, realized = stats[name]["target_share"], stats[name]["realized_share_est"]
        assert abs(realized - target) / target < 0.005, (name, target, realized)

    github = [r for i, r in repeats.items() if i.startswith("github/")]
    assert set(github) == {0, 1} and 0.55 < stats["github"]["epochs"] < 0.75
    assert github.count(0) == stats["github"]["docs_not_sampled"] > 0
    assert set(r for i, r in repeats.items() if i.startswith("cc/")) == {2, 3}

    total_docs = 300 + 1150 + 6000
    assert manifest["docs_in"] == total_docs == manifest["docs_kept"] + manifest["docs_rejected"]
    assert manifest["rejected_by_reason"] == {"not_sampled": github.count(0)}
    rejected = [d for p in rejected_parts(tmp_path / "mixture") for d in read_documents(p)]
    assert all(d.reason == "not_sampled" and d.columns["repeats"] == 0 for d in rejected)
    kept = [d for p in kept_parts(tmp_path / "mixture") for d in read_documents(p)]
    assert all(d.columns["repeats"] >= 1 and d.id.startswith(d.source + "/") for d in kept)
    assert manifest["stats"]["warnings"] == []


def test_sampling_is_deterministic_per_seed(sources, tmp_path):
    config = three_source_config(sources, seed=7)
    sample_mixture(sources, tmp_path / "a", config)
    sample_mixture(sources, tmp_path / "b", config)
    assert repeats_by_id(tmp_path / "a") == repeats_by_id(tmp_path / "b")
    sample_mixture(sources, tmp_path / "c", three_source_config(sources, seed=8))
    assert repeats_by_id(tmp_path / "a") != repeats_by_id(tmp_path / "c")


def test_auto_budget_keeps_every_source_within_its_table1_epochs(sources, tmp_path):
    config = three_source_config(sources, total_tokens="auto")
    manifest = sample_mixture(sources, tmp_path / "mixture", config)
    stats = manifest["stats"]["sources"]
    assert manifest["stats"]["total_tokens_mode"] == "auto"
    for name, spec in config.sources.items():
        assert stats[name]["epochs"] <= spec.epochs * (1 + 1e-6)
    assert any(stats[name]["epochs"] == pytest.approx(spec.epochs, rel=1e-4) for name, spec in config.sources.items())


def test_too_many_epochs_is_warned_in_log_and_manifest(sources, tmp_path, caplog):
    config = three_source_config(sources)
    oversized = config.model_copy(update={"total_tokens": config.total_tokens * 2})  # wiki needs 4.9 epochs
    with caplog.at_level(logging.WARNING, logger="pipeline.mixture"):
        manifest = sample_mixture(sources, tmp_path / "mixture", oversized)
    warnings = manifest["stats"]["warnings"]
    over = {name for name, s in manifest["stats"]["sources"].items() if s["epochs"] > 3.0}
    assert over == {"wikipedia", "cc"} and {w.split(":")[0] for w in warnings} == over
    assert any(w.startswith("wikipedia: needs 4.9") for w in warnings)
    assert "wikipedia: needs" in caplog.text
    repeats = repeats_by_id(tmp_path / "mixture")
    assert {repeats[f"wikipedia/{i}"] for i in range(300)} == {4, 5}


def test_missing_source_folder_is_a_clear_error(sources, tmp_path):
    config = three_source_config(sources)
    with pytest.raises(StageError, match="no folder for github"):
        sample_mixture({"cc": sources["cc"], "wikipedia": sources["wikipedia"]}, tmp_path / "m", config)
    assert not (tmp_path / "m").exists()
