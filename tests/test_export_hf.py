"""HF export (model/export_hf.py): a checkpoint of ours loads in transformers' LlamaForCausalLM and
LlamaTokenizer, with the same logits to 1e-4 in fp32 — which needs the RoPE row permutation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from model.checkpoint import save_checkpoint
from model.distributed import DistEnv
from model.export_hf import export_hf, hf_state_dict, interleaved_to_half
from model.llama import ModelArgs, Transformer, apply_rotary_emb, precompute_rope
from model.train import lr_scheduler, param_groups
from pipeline.tokenizer import TokenizerConfig, hf_tokenizer_config

REPO = Path(__file__).resolve().parents[1]
VOCAB = 600  # 256 byte-fallback pieces + the corpus's characters + merges
TEXT = [
    "The LLaMA models are trained on publicly available data, mixing CommonCrawl, C4, GitHub and Wikipedia.",
    "Rotary embeddings rotate pairs of dimensions by an angle that grows with the position: 10000 ** (-2i/d).",
    "def forward(self, x):\n    return self.w2(F.silu(self.w1(x)) * self.w3(x))",
    "Numbers like 2048, 4096 and 1.4T are split into single digits; ünïcödé and 日本語 fall back to bytes.",
]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """A build folder with tokens/manifest.json and tokenizer/artifacts (a real SentencePiece BPE
    model with LLaMA's settings and the build's tokenizer_config.json)."""
    root = tmp_path_factory.mktemp("build")
    artifacts = root / "tokenizer" / "artifacts"
    artifacts.mkdir(parents=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TEXT * 50) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(artifacts / "tokenizer"), vocab_size=VOCAB, model_type="bpe",
        split_digits=True, byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(artifacts / "tokenizer.model"))
    config = hf_tokenizer_config(processor, TokenizerConfig(vocab_size=VOCAB, add_dummy_prefix=False))
    (artifacts / "tokenizer_config.json").write_text(json.dumps(config))
    import hashlib

    (root / "tokens").mkdir()
    sha = hashlib.sha256((artifacts / "tokenizer.model").read_bytes()).hexdigest()
    (root / "tokens" / "manifest.json").write_text(json.dumps({"stats": {"tokenizer_sha256": sha, "vocab_size": VOCAB}}))
    return root


def args_for(vocab: int) -> ModelArgs:
    return ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=vocab, max_seq_len=64)


@pytest.fixture(scope="module")
def checkpoint(build, tmp_path_factory) -> tuple[Path, Transformer]:
    """A checkpoint written by the trainer's own save path, of a model with non-trivial weights
    (random norm gains, std 0.2 matrices), so logits are far from uniform."""
    torch.manual_seed(0)
    args = args_for(VOCAB)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if p.ndim == 1 else 0.2 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    scheduler = lr_scheduler(optimizer, 1, 10, 0.1)
    run = tmp_path_factory.mktemp("run")
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    extra = {"tokens_seen": 0, "config": {"data": str(build / "tokens")}}
    save_checkpoint(run, 3, model, optimizer, scheduler, args, env, extra=extra)
    return run, model


def test_rope_permutation_turns_interleaved_pairs_into_halves():
    """q rotated our way, then permuted, equals the permuted q rotated HF's way (rotate_half)."""
    torch.manual_seed(0)
    heads, head_dim, seq = 2, 8, 5
    q = torch.randn(1, seq, heads, head_dim)
    cos, sin = precompute_rope(head_dim, seq)
    ours = apply_rotary_emb(q, cos, sin)
    perm = interleaved_to_half(torch.eye(heads * head_dim), heads)  # the row permutation as a matrix
    permuted = (q.reshape(seq, -1) @ perm.T).view(1, seq, heads, head_dim)
    cos_h, sin_h = torch.cat([cos, cos], -1)[None, :, None], torch.cat([sin, sin], -1)[None, :, None]
    half = head_dim // 2
    rotate_half = torch.cat([-permuted[..., half:], permuted[..., :half]], -1)
    theirs = permuted * cos_h + rotate_half * sin_h
    torch.testing.assert_close(theirs.reshape(seq, -1), ours.reshape(seq, -1) @ perm.T, atol=1e-6, rtol=0)


def test_export_loads_in_transformers_with_matching_logits(build, checkpoint, tmp_path):
    from transformers import LlamaForCausalLM, LlamaTokenizer

    run, model = checkpoint
    out = tmp_path / "hf"
    info = export_hf(run, out)  # the run folder: its newest checkpoint, and the build's tokenizer
    assert info["step"] == 3 and info["parameters"] == sum(p.numel() for p in model.parameters())
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.model", "tokenizer_config.json"}

    hf = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings is False and hf.config.rms_norm_eps == 1e-6
    tokenizer = LlamaTokenizer.from_pretrained(out)
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    text = TEXT[1] + " " + TEXT[3]
    ids = tokenizer(text)["input_ids"]
    assert ids == [processor.bos_id()] + processor.encode(text)  # BOS + the same ids as SentencePiece

    tokens = torch.tensor([ids[:64]])
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    assert ours.abs().max() > 1.0  # far from uniform, so a 1e-4 agreement means something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    # Without the q/k permutation transformers would load the weights silently and be wrong.
    unpermuted = LlamaForCausalLM(hf.config).eval()
    unpermuted.load_state_dict(hf_state_dict(model.state_dict(), model.args, permute_rope=False))
    with torch.no_grad():
        assert (unpermuted(tokens).logits - ours).abs().max() > 1e-2


def test_cli_export_hf_and_clear_errors(build, checkpoint, tmp_path):
    run, _ = checkpoint
    cli = [sys.executable, "-m", "flows.cli", "export-hf"]
    done = subprocess.run(cli + [str(run / "checkpoints" / "step-000003"), str(tmp_path / "hf"), "--dtype", "bf16"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    missing = subprocess.run(cli + [str(tmp_path / "nothing"), str(tmp_path / "hf2")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "neither a complete checkpoint nor a run folder" in missing.stderr
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "tokenizer.model").write_bytes(b"not the build's tokenizer")
    wrong = subprocess.run(cli + [str(run), str(tmp_path / "hf3"), "--tokenizer", str(other)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "sha256 differs" in wrong.stderr
