"""Token shards: the .bin/.idx format round trip, repeats, val split, manifest, reader windows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.documents import Document, StageError, StageFolder, kept_parts, read_documents, sha256_file
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.token_shards import TokenShards, TokenShardsConfig, write_token_shards
from pipeline.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

VOCABULARY = {
    "wikipedia": "the river city was founded in century by king and its population census of".split(),
    "github": "def return import class self if else for while print value list dict none".split(),
    "books": "she said he looked at the door her eyes night morning letter long away".split(),
}


def write_source(root: Path, source: str, n_docs: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with StageFolder(root / source, f"{source}_final", {}, source=source) as folder:
        with folder.part(0) as part:
            part.write(Document(id=f"{source}/empty", text="", source=source))  # tokenizes to nothing
            for i in range(n_docs):
                words = rng.choice(VOCABULARY[source], size=int(rng.integers(10, 60)))
                part.write(Document(id=f"{source}/{i}", text=f"{source} {i}: " + " ".join(words) + ".", source=source))
    return root / source


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    sources = {
        "wikipedia": write_source(root, "wikipedia", 200, seed=1),
        "github": write_source(root, "github", 600, seed=2),
        "books": write_source(root, "books", 300, seed=3),
    }
    # At this budget wikipedia is seen ~2.45 times, github ~0.6 times (Table 1's extremes).
    config = MixtureConfig(
        sources={
            "wikipedia": {"share": 0.4, "epochs": 2.45},
            "github": {"share": 0.3, "epochs": 0.64},
            "books": {"share": 0.3, "epochs": 2.23},
        },
        total_tokens="auto",
    )
    sample_mixture(sources, root / "mixture", config)
    train_tokenizer(root / "mixture", root / "tokenizer", TokenizerConfig(vocab_size=400))
    write_token_shards(
        root / "mixture", root / "tokenizer", root / "shards", TokenShardsConfig(shard_tokens=20_000, val_fraction=0.05)
    )
    return {"mixture": root / "mixture", "tokenizer": root / "tokenizer", "shards": root / "shards"}


def mixture_docs(mixture: Path) -> dict[str, Document]:
    return {d.text: d for p in kept_parts(mixture) for d in read_documents(p)}


def split_documents(shards: Path, split: str, bos: int, eos: int) -> list[np.ndarray]:
    """Every document of a split, read straight from the .bin/.idx files, checking BOS/EOS."""
    from pipeline.documents import read_manifest

    docs = []
    for entry in read_manifest(shards)["stats"]["shards"]:
        if entry["split"] != split:
            continue
        tokens = np.fromfile(shards / entry["path"], dtype="<u2")
        idx = np.fromfile(shards / entry["idx_path"], dtype="<i8")
        assert idx[0] == 0 and idx[-1] == len(tokens) == entry["tokens"] and len(idx) == entry["docs"] + 1
        assert sha256_file(shards / entry["path"]) == entry["sha256"]
        for start, stop in zip(idx[:-1], idx[1:]):
            doc = tokens[start:stop]
            assert doc[0] == bos and doc[-1] == eos and bos not in doc[1:-1] and eos not in doc[1:-1]
            docs.append(doc[1:-1])
    return docs


def test_bin_idx_round_trip_with_repeats_and_val_split(built):
    sp = load_tokenizer(built["tokenizer"])
    docs = mixture_docs(built["mixture"])
    train = Counter(sp.decode(d.tolist()) for d in split_documents(built["shards"], "train", sp.bos_id(), sp.eos_id()))
    val = Counter(sp.decode(d.tolist()) for d in split_documents(built["shards"], "val", sp.bos_id(), sp.eos_id()))
    assert val and train and not set(val) & set(train)
    assert all(count == 1 for count in val.values())
    for text, count in train.items():
        assert docs[text].columns["repeats"] == count  # a document with repeats r appears r times
    non_empty = {t for t in docs if t}
    assert set(train) | set(val) == non_empty


def test_manifest_reports_format_shares_epochs_and_reconciles(built):
    from pipeline.documents import read_manifest

    manifest = read_manifest(built["shards"])
    stats = manifest["stats"]
    assert manifest["kind"] == "token_shards"
    assert (stats["format"], stats["version"], stats["dtype"]) == ("llama-recipe-tokens", 1, "uint16")
    assert stats["vocab_size"] == load_tokenizer(built["tokenizer"]).get_piece_size()
    assert stats["tokenizer_sha256"] == sha256_file(built["tokenizer"] / "artifacts" / "tokenizer.model")
    assert len([s for s in stats["shards"] if s["split"] == "train"]) > 1  # shard_tokens forced a split
    assert sum(s["tokens"] for s in stats["shards"]) == stats["total_tokens"] == sum(stats["tokens_per_source"].values())
    assert stats["target_share"] == {"books": 0.3, "github": 0.3, "wikipedia": 0.4}
    # Realized shares are measured in real tokens (the mixture targeted byte estimates; issue 5).
    for source, share in stats["realized_share"].items():
        assert share == pytest.approx(stats["tokens_per_source"][source] / stats["total_tokens"], abs=1e-6)
    assert stats["split_tokens"]["val"] > 0 and sum(stats["split_tokens"].values()) == stats["total_tokens"]
    assert 2.0 < stats["epochs"]["wikipedia"] < 3.0 and 0.4 < stats["epochs"]["github"] < 0.9
    mixture = read_manifest(built["mixture"])
    assert manifest["docs_in"] == mixture["docs_kept"] == manifest["docs_kept"] + manifest["docs_rejected"]
    # The three empty documents (wikipedia/books repeat everything; github's may be unsampled).
    assert manifest["rejected_by_reason"]["empty_document"] == len(stats["empty_document_ids"]) >= 2
    assert not (built["shards"] / "scratch").exists() and not (built["shards"] / "artifacts").exists()


def test_reader_windows_are_contiguous_and_shifted(built):
    data = TokenShards(built["shards"], "train")
    everything = np.concatenate([np.fromfile(built["shards"] / s["path"], dtype="<u2") for s in data.shard_entries])
    assert data.num_tokens == len(everything) and (data.bos_id, data.eos_id) == (1, 2)
    boundary = len(data.shards[0])
    assert np.array_equal(data.tokens[boundary - 5 : boundary + 5], everything[boundary - 5 : boundary + 5])
    assert data.document_offsets()[-1] == data.num_tokens
    x, y = data.sample_batch(8, 32, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(everything, 33)
    for row in range(8):
        assert (windows == np.concatenate([x[row], y[row, -1:]])).all(axis=1).any()


def test_rank_slices_are_disjoint(built):
    data = TokenShards(built["shards"], "train")
    world = 3
    ranges = [data.rank_range(r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == data.num_tokens
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    everything = data.tokens[0 : data.num_tokens]
    for rank, (low, high) in enumerate(ranges):
        x, y = data.sample_batch(16, 16, np.random.default_rng(rank), rank=rank, world_size=world)
        owned = np.lib.stride_tricks.sliding_window_view(everything[low:high], 17)
        for row in range(16):
            assert (owned == np.concatenate([x[row], y[row, -1:]])).all(axis=1).any()
    with pytest.raises(ValueError, match="fewer than seq_len"):
        data.sample_batch(1, data.num_tokens, rank=0, world_size=2)


def test_no_val_split_and_bad_inputs_are_clear_errors(built, tmp_path):
    write_token_shards(built["mixture"], built["tokenizer"], tmp_path / "shards", TokenShardsConfig(val_fraction=0.0))
    with pytest.raises(StageError, match="no 'val' tokens"):
        TokenShards(tmp_path / "shards", "val")
    assert TokenShards(tmp_path / "shards").num_tokens > TokenShards(built["shards"]).num_tokens
    with pytest.raises(StageError, match="no 'repeats' column"):
        write_token_shards(built["mixture"].parent / "github", built["tokenizer"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
