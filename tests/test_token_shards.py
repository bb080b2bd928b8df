"""Token shards: the .bin/.idx format, exact per-source tokens, cut copies, shuffling, the reader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.documents import Document, StageError, StageFolder, kept_parts, read_documents, read_manifest, sha256_file
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.token_shards import TokenShards, TokenShardsConfig, pack_documents, write_token_shards
from pipeline.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

VOCABULARY = {
    "wikipedia": "the river city was founded in century by king and its population census of".split(),
    "github": "def return import class self if else for while print value list dict none".split(),
    "books": "she said he looked at the door her eyes night morning letter long away".split(),
}
SHARES = {"wikipedia": {"share": 0.4, "epochs": 2.45}, "github": {"share": 0.3, "epochs": 0.64}, "books": {"share": 0.3, "epochs": 2.23}}


def write_source(root: Path, source: str, n_docs: int, seed: int, long_docs: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with StageFolder(root / source, f"{source}_final", {}, source=source) as folder:
        with folder.part(0) as part:
            part.write(Document(id=f"{source}/empty", text="", source=source))  # tokenizes to nothing
            for i in range(n_docs):
                size = int(rng.integers(10, 60)) * (30 if i < long_docs else 1)
                words = rng.choice(VOCABULARY[source], size=size)
                part.write(Document(id=f"{source}/{i}", text=f"{source} {i}: " + " ".join(words) + ".", source=source))
    return root / source


def build(root: Path, seed: int = 0, **shard_config) -> dict[str, Path]:
    sources = {
        "wikipedia": write_source(root, "wikipedia", 200, seed=1),
        "github": write_source(root, "github", 600, seed=2),
        "books": write_source(root, "books", 40, seed=3, long_docs=40),  # few, long documents
    }
    train_tokenizer(sources, root / "tokenizer", TokenizerConfig(vocab_size=400), {s: v["share"] for s, v in SHARES.items()})
    sample_mixture(sources, root / "tokenizer", root / "mixture", MixtureConfig(sources=SHARES, val_fraction=0.05))
    config = TokenShardsConfig(shard_tokens=20_000, seed=seed, **shard_config)
    write_token_shards(root / "mixture", root / "tokenizer", root / "shards", config)
    return {"mixture": root / "mixture", "tokenizer": root / "tokenizer", "shards": root / "shards"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("shards"))


def mixture_docs(mixture: Path) -> dict[str, Document]:
    return {d.text: d for p in kept_parts(mixture) for d in read_documents(p)}


def split_copies(shards: Path, split: str) -> list[np.ndarray]:
    """Every copy of a split, read straight from the .bin/.idx files (checksums checked)."""
    copies = []
    for entry in read_manifest(shards)["stats"]["shards"]:
        if entry["split"] != split:
            continue
        tokens = np.fromfile(shards / entry["path"], dtype="<u2")
        idx = np.fromfile(shards / entry["idx_path"], dtype="<i8")
        assert idx[0] == 0 and idx[-1] == len(tokens) == entry["tokens"] and len(idx) == entry["docs"] + 1
        assert sha256_file(shards / entry["path"]) == entry["sha256"]
        assert sha256_file(shards / entry["idx_path"]) == entry["idx_sha256"]
        copies += [tokens[start:stop] for start, stop in zip(idx[:-1], idx[1:])]
    return copies


def test_pack_documents_frames_each_document_with_bos_and_eos():
    packed, lengths = pack_documents([[5, 6], [], [7]], bos=1, eos=2)
    assert packed.dtype == np.dtype("<u2") and packed.tolist() == [1, 5, 6, 2, 1, 2, 1, 7, 2]
    assert lengths.tolist() == [4, 2, 3]


def test_copies_follow_the_plan_with_one_cut_copy_per_source(built):
    sp = load_tokenizer(built["tokenizer"])
    bos, eos = sp.bos_id(), sp.eos_id()
    docs = mixture_docs(built["mixture"])
    whole, cut = Counter(), {}
    for copy in split_copies(built["shards"], "train"):
        assert copy[0] == bos and bos not in copy[1:] and eos not in copy[1:-1]
        if copy[-1] == eos:
            whole[sp.decode(copy[1:-1].tolist())] += 1
        else:  # a cut copy: the first tokens of a document
            doc = next(d for d in docs.values() if d.columns["partial_tokens"] == len(copy) and sp.encode(d.text)[: len(copy) - 1] == copy[1:].tolist())
            assert doc.source not in cut
            cut[doc.source] = doc
    val = Counter(sp.decode(c[1:-1].tolist()) for c in split_copies(built["shards"], "val"))
    assert val and not set(val) & set(whole) and all(n == 1 for n in val.values())
    for text, doc in docs.items():
        if doc.columns["split"] == "val":
            assert val[text] == 1
        else:
            assert whole[text] == doc.columns["repeats"]  # a document with repeats r appears r times whole
    assert set(cut) <= set(SHARES) and len(cut) >= 1
    assert {d.id for d in cut.values()} == {d.id for d in docs.values() if d.columns["partial_tokens"] > 0}


def test_tokens_per_source_equal_the_targets(built):
    manifest = read_manifest(built["shards"])
    stats = manifest["stats"]
    mixture = read_manifest(built["mixture"])["stats"]["sources"]
    assert manifest["kind"] == "token_shards"
    assert (stats["format"], stats["version"], stats["dtype"]) == ("llama-recipe-tokens", 2, "uint16")
    assert stats["vocab_size"] == load_tokenizer(built["tokenizer"]).get_piece_size()
    assert stats["tokenizer_sha256"] == sha256_file(built["tokenizer"] / "artifacts" / "tokenizer.model")
    assert len([s for s in stats["shards"] if s["split"] == "train"]) > 1  # shard_tokens forced a split
    assert sum(s["tokens"] for s in stats["shards"]) == stats["total_tokens"] == sum(stats["split_tokens"].values())
    assert stats["split_tokens"]["train"] == sum(stats["tokens_per_source"].values())
    for source, spec in SHARES.items():
        assert stats["tokens_per_source"][source] == stats["target_tokens"][source] == mixture[source]["target_tokens"]
        assert abs(stats["realized_share"][source] - spec["share"]) / spec["share"] < 0.005
    assert stats["epochs"]["wikipedia"] == pytest.approx(2.45, rel=1e-3)  # auto budget: wikipedia binds
    assert stats["epochs"]["books"] < 2.23 and stats["epochs"]["github"] < 0.64
    assert stats["split_tokens"]["val"] == sum(stats["val_tokens_per_source"].values()) > 0
    mixture_manifest = read_manifest(built["mixture"])
    assert manifest["docs_in"] == mixture_manifest["docs_kept"] == manifest["docs_kept"]
    assert mixture_manifest["rejected_by_reason"]["empty_document"] == 3
    assert not (built["shards"] / "scratch").exists() and not (built["shards"] / "artifacts").exists()


def test_the_stream_interleaves_sources_and_is_deterministic_per_seed(built, tmp_path):
    sp = load_tokenizer(built["tokenizer"])
    source_of = lambda copy: next(s for s in SHARES if sp.decode(copy[1:12].tolist()).startswith(s + " "))
    sources = [source_of(c) for c in split_copies(built["shards"], "train")[:60]]
    runs = sum(a != b for a, b in zip(sources, sources[1:]))
    assert set(sources) == set(SHARES) and runs > 20  # not source by source
    again = build(tmp_path / "again")
    shard_bytes = lambda root: [(root / s["path"]).read_bytes() for s in read_manifest(root)["stats"]["shards"]]
    assert shard_bytes(again["shards"]) == shard_bytes(built["shards"])
    write_token_shards(built["mixture"], built["tokenizer"], tmp_path / "seed1", TokenShardsConfig(shard_tokens=20_000, seed=1))
    assert shard_bytes(tmp_path / "seed1") != shard_bytes(built["shards"])
    assert read_manifest(tmp_path / "seed1")["stats"]["tokens_per_source"] == read_manifest(built["shards"])["stats"]["tokens_per_source"]


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
    with pytest.raises(StageError, match="no 'test' tokens"):
        TokenShards(built["shards"], "test")


def test_bad_inputs_are_clear_errors(built, tmp_path):
    with pytest.raises(StageError, match="no 'tokens' column"):
        write_token_shards(built["mixture"].parent / "github", built["tokenizer"], tmp_path / "bad")
    other = tmp_path / "other"
    train_tokenizer({"github": built["mixture"].parent / "github"}, other, TokenizerConfig(vocab_size=300))
    with pytest.raises(StageError, match="another tokenizer"):
        write_token_shards(built["mixture"], other, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_two_workers_write_the_same_shards_from_one_tokenization(built, tmp_path):
    """Two forked workers write the shards (several key ranges per split) to the bytes one wrote,
    and nothing is encoded again: the copies are the mixture's token files' slices."""
    calls = []
    write_token_shards(built["mixture"], built["tokenizer"], tmp_path / "two", TokenShardsConfig(shard_tokens=20_000, seed=0),
                       workers=2, progress=lambda *a: calls.append(a))
    assert calls and calls[-1][1] == calls[-1][2] and [c[1] for c in calls] == list(range(1, calls[-1][2] + 1))
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                          if p.is_file() and p.suffix != ".json"}
    assert files(tmp_path / "two") == files(built["shards"])
    manifest = lambda root: {k: v for k, v in read_manifest(root).items() if k != "inputs"}  # inputs: paths relative to it
    assert manifest(tmp_path / "two") == manifest(built["shards"])
    assert len(read_manifest(built["shards"])["stats"]["shards"]) > 2
    mixture_tokens = sorted((built["mixture"] / "artifacts" / "tokens").glob("part-*.bin"))
    assert mixture_tokens and [p["path"] for p in read_manifest(built["mixture"])["artifacts"]] == [
        str(p.relative_to(built["mixture"])) for p in mixture_tokens]


def test_val_shards_name_each_documents_source_for_the_per_source_loss(built):
    """Version 2: every val shard has a .src file (one source number per document, checksummed in
    the manifest); the trainer's reader cuts each source's held-out tokens out of the val split."""
    from model.data import TokenShards as TrainerShards

    shards = built["shards"]
    stats = read_manifest(shards)["stats"]
    assert stats["version"] == 2 and stats["sources"][:1] == ["cc"]
    tokens_by_source: Counter[str] = Counter()
    for entry in (e for e in stats["shards"] if e["split"] == "val"):
        assert sha256_file(shards / entry["src_path"]) == entry["src_sha256"]
        idx = np.fromfile(shards / entry["idx_path"], dtype="<i8")
        codes = np.fromfile(shards / entry["src_path"], dtype="u1")
        assert len(codes) == entry["docs"] == len(idx) - 1
        for code, start, stop in zip(codes, idx[:-1], idx[1:]):
            tokens_by_source[stats["sources"][code]] += int(stop - start)
    assert {s: n for s, n in tokens_by_source.items()} == {s: n for s, n in stats["val_tokens_per_source"].items() if n}
    reader = TrainerShards(shards)
    assert reader.val_sources() == [s for s in stats["sources"] if tokens_by_source[s]]
    for source in reader.val_sources():
        shares = [reader.source_segments(source, rank, 2) for rank in range(2)]
        assert sum(len(seg) for share in shares for seg in share) == tokens_by_source[source]
