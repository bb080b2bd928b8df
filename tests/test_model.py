"""The LLaMA model (model/llama.py) and its size presets (model/presets.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.llama import Attention, ModelArgs, RMSNorm, Transformer, apply_rotary_emb, ffn_hidden_dim, precompute_rope
from model.presets import PRESETS, count_parameters, get_preset, model_info


def small_args(**overrides) -> ModelArgs:
    return ModelArgs(**({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 50, "max_seq_len": 32} | overrides))


# ---------------------------------------------------------------------------------------------
# Sizes (Table 2)


@pytest.mark.parametrize(
    "preset, expected",
    [("7B", 6_738_415_616), ("13B", 13_015_864_320), ("33B", 32_528_943_616), ("65B", 65_285_660_672)],
)
def test_paper_preset_parameter_counts(preset, expected):
    assert count_parameters(preset) == expected


def test_swiglu_hidden_size_follows_meta_rounding():
    assert ffn_hidden_dim(get_preset("7B").model_args()) == 11008
    assert ffn_hidden_dim(get_preset("65B").model_args()) == 22016
    # multiple_of rounds up: 2/3 * 4 * 100 = 266 -> 512 with multiple_of 256, 272 with 16.
    assert ffn_hidden_dim(ModelArgs(dim=100, multiple_of=256)) == 512
    assert ffn_hidden_dim(ModelArgs(dim=100, multiple_of=16)) == 272


def test_table2_hyperparameters():
    assert [(PRESETS[n].dim, PRESETS[n].n_heads, PRESETS[n].n_layers, PRESETS[n].lr) for n in ("7B", "13B", "33B", "65B")] == [
        (4096, 32, 32, 3.0e-4),
        (5120, 40, 40, 3.0e-4),
        (6656, 52, 60, 1.5e-4),
        (8192, 64, 80, 1.5e-4),
    ]
    assert all(PRESETS[n].batch_tokens == 4 * 2**20 and PRESETS[n].max_seq_len == 2048 for n in ("7B", "65B"))


def test_cpu_presets_take_vocab_from_tokenizer():
    with pytest.raises(ValueError, match="vocab_size"):
        get_preset("tiny").model_args()
    args = get_preset("tiny").model_args(vocab_size=1000)
    n = count_parameters("tiny", vocab_size=1000)
    assert n == count_parameters("tiny", vocab_size=2000) - 2 * 1000 * args.dim  # embedding + head grow


def test_model_info_is_json_and_counts_the_model():
    info = json.loads(json.dumps(model_info("13B")))
    assert info["parameters"] == 13_015_864_320
    assert info["tokens_per_batch"] == 4 * 2**20 and info["lr"] == 3.0e-4
    assert info["dim"] == 5120 and info["n_layers"] == 40 and info["ffn_hidden_dim"] == 13824


# ---------------------------------------------------------------------------------------------
# Architecture


def test_no_biases_and_untied_head():
    model = Transformer(small_args())
    assert not [name for name, _ in model.named_parameters() if "bias" in name]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    # Checkpoints hold learned weights only, under Meta's names.
    keys = set(model.state_dict())
    assert "layers.0.attention.wq.weight" in keys and "layers.1.feed_forward.w3.weight" in keys
    assert not any("rope" in k for k in keys)


def test_init_is_normal_002_and_norms_ones():
    torch.manual_seed(0)
    model = Transformer(small_args(dim=256, vocab_size=1000))
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers["0"].feed_forward.w1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.layers["0"].attention_norm.weight, torch.ones(256))


def meta_rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's original complex-number rotary embedding (llama v1 model.py), as the reference."""
    _, seq, _, head_dim = x.shape
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    freqs_cis = torch.polar(torch.ones(seq, head_dim // 2), torch.outer(torch.arange(seq).float(), freqs))
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)


def test_rope_rotates_interleaved_pairs_like_meta():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 8)
    cos, sin = precompute_rope(8, 16, theta=10000.0)
    ours = apply_rotary_emb(x, cos[:7], sin[:7])
    torch.testing.assert_close(ours, meta_rotate(x, 10000.0), atol=1e-5, rtol=0)
    # Explicit 2x2 rotation of pair i=1 (dims 2, 3) at position t=5.
    angle = 5 * 10000.0 ** (-2 / 8)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    torch.testing.assert_close(ours[0, 5, 0, 2:4], rot @ x[0, 5, 0, 2:4], atol=1e-5, rtol=0)
    # Rotation preserves norms, and position 0 is unrotated.
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:, 0], x[:, 0])


def test_attention_matches_naive_reference():
    torch.manual_seed(0)
    args = small_args()
    attn = Attention(args)
    for w in (attn.wq, attn.wk, attn.wv, attn.wo):
        torch.nn.init.normal_(w.weight, std=0.1)
    batch, seq, heads, hd = 2, 11, args.n_heads, args.head_dim
    x = torch.randn(batch, seq, args.dim)
    cos, sin = precompute_rope(hd, args.max_seq_len, args.rope_theta)
    ours = attn(x, cos[:seq], sin[:seq])

    q = meta_rotate((x @ attn.wq.weight.T).view(batch, seq, heads, hd), args.rope_theta).transpose(1, 2)
    k = meta_rotate((x @ attn.wk.weight.T).view(batch, seq, heads, hd), args.rope_theta).transpose(1, 2)
    v = (x @ attn.wv.weight.T).view(batch, seq, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    mask = torch.full((seq, seq), float("-inf")).triu(diagonal=1)
    weights = torch.softmax(scores + mask, dim=-1)
    reference = (weights @ v).transpose(1, 2).reshape(batch, seq, -1) @ attn.wo.weight.T
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_model_is_causal_and_returns_loss():
    torch.manual_seed(0)
    model = Transformer(small_args())
    tokens = torch.randint(0, 50, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 50) and logits.dtype == torch.float32
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50
    logits2 = model(changed)
    torch.testing.assert_close(logits[:, :10], logits2[:, :10])
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])
    loss = model(tokens, tokens)
    # Small init: predictions near uniform, so the first loss is close to ln(vocab).
    assert loss.item() == pytest.approx(math.log(50), rel=0.05)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_meta_device_build_then_materialize():
    with torch.device("meta"):
        model = Transformer(small_args())
    model.to_empty(device="cpu")
    model.init_weights()
    cos, _ = precompute_rope(16, 32)
    torch.testing.assert_close(model.rope_cos, cos)
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all()


def test_tiny_model_overfits_a_repeated_sequence():
    torch.manual_seed(0)
    model = Transformer(small_args())
    pattern = torch.randint(3, 50, (8,))
    tokens = pattern.repeat(4)[None].repeat(4, 1)  # (4, 32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(50):
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 3.5
    assert losses[-1] < 0.2 * losses[0]
    assert F.cross_entropy(model(x)[:, 8:].reshape(-1, 50), y[:, 8:].reshape(-1)).item() < 0.1  # after one period


def test_presets_carry_llama1_norm_eps_and_rope_theta_into_the_model():
    for name in ("7B", "65B", "tiny"):
        args = get_preset(name).model_args(vocab_size=100)
        assert (args.norm_eps, args.rope_theta) == (1e-6, 10000.0)
    args = get_preset("tiny").model_args(vocab_size=100)
    with torch.device("meta"):
        model = Transformer(args)
    assert {m.eps for m in model.modules() if isinstance(m, RMSNorm)} == {1e-6}
    assert model_info("7B")["norm_eps"] == 1e-6


def test_rmsnorm_matches_its_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 16)
    reference = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), reference, atol=1e-6, rtol=1e-6)
    # bf16 input: the mean square is taken in fp32 (as Meta's code does), so only the input's rounding shows.
    torch.testing.assert_close(norm(x.bfloat16()).float(), norm(x), atol=2e-2, rtol=1e-2)
