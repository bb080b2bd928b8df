"""The trainer (model/train.py), its token-shard reader (model/data.py) and checkpoints, ending with a
2-process torchrun run (FSDP2 over gloo on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import latest_checkpoint, load_model_state
from model.data import RandomWindows, TokenDataError, TokenShards, eval_batches
from model.llama import ModelArgs, Transformer
from model.train import lr_at, param_groups

REPO = Path(__file__).resolve().parents[1]
BOS, EOS = 1, 2


def write_token_shards(root: Path, docs: dict[str, list[list[int]]], vocab_size: int = 64) -> Path:
    """Token shards in pipeline/token_shards.py's format: one shard per split."""
    shards = []
    for split, split_docs in docs.items():
        seqs = [np.array([BOS, *doc, EOS], dtype="<u2") for doc in split_docs]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype="<u2")
        starts = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype("<i8")
        (root / split).mkdir(parents=True, exist_ok=True)
        flat.tofile(root / split / "shard-00000.bin")
        starts.tofile(root / split / "shard-00000.idx")
        shards.append(
            {
                "split": split,
                "path": f"{split}/shard-00000.bin",
                "idx_path": f"{split}/shard-00000.idx",
                "tokens": int(len(flat)),
                "docs": len(split_docs),
                "sha256": "",
            }
        )
    stats = {
        "format": "llama-recipe-tokens",
        "version": 1,
        "dtype": "uint16",
        "vocab_size": vocab_size,
        "bos_id": BOS,
        "eos_id": EOS,
        "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps({"stage": "token_shards", "stats": stats}))
    return root


def counting_docs(n: int, length: int, vocab_size: int = 64, seed: int = 0) -> list[list[int]]:
    """Documents that count upward (mod the vocab) from a random start: learnable after one token."""
    rng = np.random.default_rng(seed)
    span = vocab_size - 3
    starts = rng.integers(span, size=n)
    return [[3 + (int(start) + i) % span for i in range(length)] for start in starts]


# ---------------------------------------------------------------------------------------------
# Recipe


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    peak, warmup, total = 3e-4, 100, 1100
    assert lr_at(0, peak, warmup, total) == 0.0
    assert lr_at(50, peak, warmup, total) == pytest.approx(peak / 2)
    assert lr_at(warmup, peak, warmup, total) == pytest.approx(peak)
    assert lr_at(600, peak, warmup, total) == pytest.approx(0.55 * peak)  # halfway down the cosine
    assert lr_at(total, peak, warmup, total) == pytest.approx(0.1 * peak)
    assert lr_at(total + 50, peak, warmup, total) == pytest.approx(0.1 * peak)
    decay = [lr_at(s, peak, warmup, total) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_weight_decay_skips_1d_params_only():
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=2, vocab_size=40, max_seq_len=16))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n in names.values() if n.endswith("norm.weight")}
    assert {id(model.tok_embeddings.weight), id(model.output.weight)} <= {id(p) for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------
# Token shards


def test_ranks_read_disjoint_slices_and_windows_stay_inside(tmp_path):
    shards = TokenShards(write_token_shards(tmp_path, {"train": counting_docs(30, 20), "val": counting_docs(5, 20)}))
    assert shards.vocab_size == 64 and shards.num_tokens("train") == 30 * 22
    flat = np.concatenate(shards.splits["train"])
    seen = np.zeros(len(flat), dtype=int)
    for rank in range(3):
        for seg in shards.rank_segments("train", rank, 3):
            seen[seg.start : seg.end] += 1
    assert (seen == 1).all()  # each token belongs to exactly one rank

    seg = shards.rank_segments("train", 1, 2)[0]
    windows = RandomWindows([seg], seq_len=16, seed=7, rank=1)
    x, y = windows.batch(32)
    assert x.shape == y.shape == (32, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    own = flat[seg.start : seg.end]
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        window = np.concatenate([row_x, row_y[-1:]])
        hits = [s for s in range(len(own) - 16) if (own[s : s + 17] == window).all()]
        assert hits, "window is not a contiguous run of this rank's tokens"
    again = RandomWindows([seg], seq_len=16, seed=7, rank=1).batch(32)[0]
    other_seed = RandomWindows([seg], seq_len=16, seed=8, rank=1).batch(32)[0]
    assert torch.equal(x, again) and not torch.equal(x, other_seed)

    val = eval_batches(shards.rank_segments("val", 0, 1), seq_len=16, batch_size=4, num_batches=3)
    assert len(val) == 3 and val[0][0].shape == (4, 16)


def test_invalid_token_dirs_are_clear_errors(tmp_path):
    with pytest.raises(TokenDataError, match="does not exist"):
        TokenShards(tmp_path / "missing")
    with pytest.raises(TokenDataError, match="manifest.json: missing"):
        TokenShards(tmp_path)
    root = write_token_shards(tmp_path / "ok", {"train": counting_docs(3, 10)})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stats"]["format"] = "something-else"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenDataError, match="format"):
        TokenShards(root)
    root = write_token_shards(tmp_path / "short", {"train": counting_docs(3, 10)})
    with open(root / "train" / "shard-00000.bin", "ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(TokenDataError, match="manifest says"):
        TokenShards(root)
    with pytest.raises(TokenDataError, match="no run of 65 tokens"):
        RandomWindows(TokenShards(write_token_shards(tmp_path / "few", {"train": counting_docs(2, 10)})).rank_segments("train", 0, 1), 64, 0, 0)


def run_subprocess(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    """Run cmd in its own process group, so a hang kills torchrun's workers too, not just the launcher."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def run_cli(args: list[str], nproc: int | None = None) -> subprocess.CompletedProcess:
    launcher = torchrun(nproc) if nproc else [sys.executable]
    return run_subprocess(launcher + ["-m", "model.train", *args])


def test_cli_exits_nonzero_on_missing_data(tmp_path):
    result = run_cli(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert result.returncode != 0
    assert "tokens folder does not exist" in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# End to end: torchrun, 2 processes, FSDP2 over gloo


@pytest.mark.slow
def test_torchrun_two_processes_trains_and_checkpoints(tmp_path):
    data = write_token_shards(tmp_path / "tokens", {"train": counting_docs(200, 40), "val": counting_docs(20, 40, seed=1)})
    out = tmp_path / "run"
    result = run_cli(
        ["--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "25", "--seq-len", "64",
         "--batch-size", "4", "--grad-accum", "2", "--lr", "2e-3", "--warmup", "3", "--log-every", "5",
         "--eval-every", "10", "--ckpt-every", "10"],
        nproc=2,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 25/25" in result.stdout

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 5, 10, 15, 20, 25]
    assert set(records[0]) >= {"step", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "elapsed_s"}
    assert records[-1]["tokens_seen"] == 25 * 4 * 64 * 2 * 2
    assert "val_loss" in records[2] and "val_loss" in records[-1]
    assert records[-1]["lr"] == pytest.approx(0.1 * 2e-3)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 25
    assert summary["last_loss"] < 0.7 * summary["first_loss"]
    assert summary["val_loss"] < 0.7 * summary["first_loss"]

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000010", "step-000020", "step-000025"]
    args, state, meta = load_model_state(latest_checkpoint(out))
    assert meta["step"] == 25 and args.vocab_size == 64
    model = Transformer(args)
    model.load_state_dict(state)  # full, unsharded tensors under Meta's names
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    optim = torch.load(latest_checkpoint(out) / "optimizer.pt", weights_only=True)
    assert "layers.0.attention.wq.weight" in optim["state"]


FSDP_EQUIVALENCE_SCRIPT = '''
import json, sys, torch
from model.distributed import init_distributed, apply_fsdp, destroy_distributed, full_value
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from model.llama import ModelArgs, Transformer
from model.train import param_groups

def make():
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=32, n_layers=2, n_heads=2, vocab_size=40, max_seq_len=16))

def train(model, batches):
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-5)
    norms = []
    for x, y in batches:
        model(x, y)[1].backward()
        norms.append(full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        opt.step(); opt.zero_grad()
    return norms

env = init_distributed()
g = torch.Generator().manual_seed(1)
data = [torch.randint(0, 40, (4, 17), generator=g) for _ in range(3)]
half = 4 // env.world_size
sharded = apply_fsdp(make(), env)
norms = train(sharded, [(d[env.rank * half:(env.rank + 1) * half, :-1], d[env.rank * half:(env.rank + 1) * half, 1:]) for d in data])
state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if env.is_main:
    reference = make()
    ref_norms = train(reference, [(d[:, :-1], d[:, 1:]) for d in data])
    diff = max((state[k] - v).abs().max().item() for k, v in reference.state_dict().items())
    json.dump({"diff": diff, "norms": norms, "ref_norms": ref_norms, "moved": (state["output.weight"] - make().output.weight).abs().max().item()}, open(sys.argv[1], "w"))
destroy_distributed()
'''


@pytest.mark.slow
def test_fsdp2_on_cpu_matches_single_process(tmp_path):
    """Two ranks with half the batch each take the same optimizer steps as one process with all of it."""
    script, result_file = tmp_path / "fsdp_equivalence.py", tmp_path / "result.json"
    script.write_text(FSDP_EQUIVALENCE_SCRIPT)
    proc = run_subprocess(torchrun(2) + [str(script), str(result_file)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["moved"] > 1e-3  # training changed the weights...
    assert result["diff"] < 1e-5  # ...identically to the single-process run
    assert result["norms"] == pytest.approx(result["ref_norms"], rel=1e-5)
