"""The trainer's token stream (model/data.py TokenStream): packing, disjoint ranks, epochs, and a
position that resumes at exactly the next token, also with another world size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import TokenDataError, TokenShards, TokenStream
from tests.test_train import counting_docs

BOS, EOS = 1, 2


def write_shards(root: Path, docs: list[list[int]], shard_docs: int) -> Path:
    """Train tokens in pipeline/token_shards.py's format, `shard_docs` documents per shard."""
    shards = []
    for number, first in enumerate(range(0, len(docs), shard_docs)):
        seqs = [np.array([BOS, *doc, EOS], dtype="<u2") for doc in docs[first : first + shard_docs]]
        flat = np.concatenate(seqs)
        (root / "train").mkdir(parents=True, exist_ok=True)
        flat.tofile(root / "train" / f"shard-{number:05d}.bin")
        np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype("<i8").tofile(root / "train" / f"shard-{number:05d}.idx")
        shards.append({"split": "train", "path": f"train/shard-{number:05d}.bin", "idx_path": f"train/shard-{number:05d}.idx", "tokens": len(flat), "docs": len(seqs)})
    stats = {"format": "llama-recipe-tokens", "version": 1, "dtype": "uint16", "vocab_size": 64, "bos_id": BOS, "eos_id": EOS, "shards": shards}
    (root / "manifest.json").write_text(json.dumps({"stage": "token_shards", "stats": stats}))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> TokenShards:
    # 60 documents of 23-39 tokens in 4 shards: 1,8xx tokens, 58 sequences of 32 + 1.
    rng = np.random.default_rng(0)
    docs = [doc[: int(rng.integers(21, 38))] for doc in counting_docs(60, 40)]
    return TokenShards(write_shards(tmp_path_factory.mktemp("stream"), docs, shard_docs=15))


def flat(shards: TokenShards) -> np.ndarray:
    return np.concatenate([np.asarray(t) for t in shards.splits["train"]]).astype(np.int64)


def read(stream: TokenStream, batches: int, batch_size: int) -> list[torch.Tensor]:
    rows = []
    for _ in range(batches):
        x, y = stream.batch(batch_size)
        rows.append(torch.cat([x, y[:, -1:]], dim=1))  # the full seq_len + 1 window
    return rows


def global_order(shards, seq_len, world, batch_size, steps, state=None):
    """The windows all ranks read, in global order (rank 0's batch, rank 1's, ... each step)."""
    streams = [TokenStream(shards, seq_len, rank, world, seed=5) for rank in range(world)]
    if state is not None:
        for s in streams:
            s.load_state_dict(state)
    rows = []
    for _ in range(steps):
        for s in streams:
            rows += read(s, 1, batch_size)
    states = [s.state_dict() for s in streams]
    assert all(st == states[0] for st in states)  # every rank holds the same global position
    return torch.cat(rows), states[0]


def test_sequences_are_packed_windows_of_the_concatenated_shards(shards):
    tokens = flat(shards)
    stream = TokenStream(shards, seq_len=32)
    assert stream.num_sequences == (len(tokens) - 1) // 32 and len(shards.splits["train"]) == 4
    windows = torch.cat(read(stream, stream.num_sequences // 4, 4))
    for number, window in enumerate(windows):  # epoch 0 in written order, across shard boundaries
        assert (window.numpy() == tokens[number * 32 : number * 32 + 33]).all()


def test_ranks_read_disjoint_sequences_of_each_step(shards):
    rows, _ = global_order(shards, 32, world=3, batch_size=2, steps=4)
    single, _ = global_order(shards, 32, world=1, batch_size=6, steps=4)
    assert torch.equal(rows, single)  # 3 ranks x 2 = 1 rank x 6: the same global stream, split
    assert len({tuple(r.tolist()) for r in rows}) == len(rows)


def test_a_stream_stopped_mid_shard_resumes_at_exactly_the_next_token(shards):
    uninterrupted = torch.cat(read(TokenStream(shards, 32, seed=5), 40, 3))  # 120 sequences: two epochs and more

    first = TokenStream(shards, 32, seed=5)
    head = torch.cat(read(first, 7, 3))
    state = json.loads(json.dumps(first.state_dict()))  # as it goes through meta.json
    assert state["consumed_sequences"] == 21 and state["epoch"] == 0
    assert state["shard"] == 1 and state["offset"] > 0  # stopped in the middle of the second shard
    assert state["offset"] == 21 * 32 - len(shards.splits["train"][0])
    resumed = TokenStream(shards, 32, seed=5)
    resumed.load_state_dict(state)
    tail = torch.cat(read(resumed, 33, 3))
    assert torch.equal(torch.cat([head, tail]), uninterrupted)  # bit for bit, across the epoch ends

    later = TokenStream(shards, 32, seed=5)  # a position saved in a later epoch resumes too
    read(later, 25, 3)
    state = later.state_dict()
    assert state["epoch"] == 1 and state["rng"]["epoch_permutation"] != [1, 0]
    again = TokenStream(shards, 32, seed=5)
    again.load_state_dict(state)
    assert torch.equal(torch.cat(read(again, 15, 3)), uninterrupted[75:])


def test_a_resumed_run_with_another_world_size_continues_the_global_stream(shards):
    reference, _ = global_order(shards, 32, world=1, batch_size=1, steps=100)
    before, state = global_order(shards, 32, world=2, batch_size=2, steps=7)  # 28 sequences
    after, end = global_order(shards, 32, world=3, batch_size=3, steps=7, state=state)  # 63 more
    assert torch.equal(torch.cat([before, after]), reference[: 28 + 63])  # nothing skipped, nothing twice
    assert end["consumed_sequences"] == 28 + 63


def test_later_epochs_reorder_the_same_sequences_by_seed(shards):
    stream = TokenStream(shards, 32, seed=5)
    n = stream.num_sequences
    epochs = torch.cat(read(stream, 3 * n, 1))
    first, second, third = epochs[:n], epochs[n : 2 * n], epochs[2 * n :]
    as_set = lambda rows: sorted(tuple(r.tolist()) for r in rows)
    assert as_set(second) == as_set(first) == as_set(third)  # every sequence once per epoch
    assert not torch.equal(second, first) and not torch.equal(third, second)
    other = TokenStream(shards, 32, seed=6)
    assert torch.equal(torch.cat(read(other, n, 1)), first)  # epoch 0: the written order
    assert not torch.equal(torch.cat(read(other, n, 1)), second)


def test_a_state_from_other_data_or_seq_len_is_refused(shards, tmp_path):
    state = TokenStream(shards, 32, seed=5).state_dict()
    with pytest.raises(TokenDataError, match="seq_len 32"):
        TokenStream(shards, 16, seed=5).load_state_dict(state)
    with pytest.raises(TokenDataError, match="seed 5"):
        TokenStream(shards, 32, seed=6).load_state_dict(state)
    other = TokenShards(write_shards(tmp_path, counting_docs(60, 30), shard_docs=15))
    with pytest.raises(TokenDataError, match="data"):
        TokenStream(other, 32, seed=5).load_state_dict(state)
