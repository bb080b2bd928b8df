"""The LLaMA-1 model (Touvron et al. 2023, §2.2), one file, top to bottom.

Follows Meta's original `llama/model.py` (v1) — same module and parameter names (tok_embeddings,
layers.N.attention.wq, feed_forward.w1/w2/w3, attention_norm, ffn_norm, norm, output), so a
checkpoint maps 1:1 onto Meta's layout — minus its inference KV cache and model parallelism, plus
a training loss. The architecture differs from the original transformer in three ways (§2.2):

- Pre-normalization with RMSNorm (GPT-3 style, Zhang & Sennrich 2019).
- SwiGLU feed-forward (Shazeer 2020) with hidden size 2/3 * 4d, rounded up to `multiple_of`.
- Rotary positional embeddings (Su et al. 2021) instead of absolute ones.

Also as in LLaMA: no biases anywhere, untied input embedding and output head.
The file knows nothing about FSDP, tensor parallelism or devices: model/distributed.py and
model/parallelize.py wrap it. Pipeline parallelism (model/pipeline.py) keeps one stage's share of
it: the other blocks deleted from `layers` (a ModuleDict keyed "0", "1", ..., so a block keeps its
name layers.N.* on any stage) and the embedding, or the final norm and head, set to None — the
forward skips what the stage does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.loss import linear_cross_entropy, loss_and_logit_grad

# GPT-2 / nanoGPT initialization. The LLaMA paper does not state its init; Meta's released code
# only loads trained weights.
INIT_STD = 0.02


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    vocab_size: int = 32000
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this (Meta's code)
    ffn_dim_multiplier: float | None = None  # None in LLaMA-1; LLaMA-2 70B uses it
    norm_eps: float = 1e-6  # LLaMA-1 params.json; LLaMA-2 moved to 1e-5
    max_seq_len: int = 2048  # §2.2 / Table 2 context length
    rope_theta: float = 10000.0  # RoFormer's base

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def ffn_hidden_dim(args: ModelArgs) -> int:
    """Exactly Meta's rounding: 2/3 * 4d (keeps SwiGLU's 3 matrices at the cost of a 2-matrix 4d MLP),
    then an optional multiplier, then round up to `multiple_of`. 7B: 4096 -> 11008."""
    hidden = int(2 * (4 * args.dim) / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    return args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32 like Meta's code, so bf16 activations do not lose the mean square.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


# ---------------------------------------------------------------------------------------------
# Rotary embeddings.
#
# Convention: Meta's INTERLEAVED pairs. Head dimensions (0,1), (2,3), ... form the 2-D planes; pair i
# at position t is rotated by angle t * theta^(-2i/head_dim). Meta computes this as a complex
# multiply (view_as_complex over adjacent pairs); we use the equivalent real cos/sin form. Hugging
# Face's LlamaForCausalLM instead rotates HALVES (i, i + head_dim/2) ("rotate_half"), so exporting to
# HF must permute the rows of wq and wk (the permute() in HF's convert_llama_weights_to_hf.py).


def precompute_rope(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_seq_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, seq, heads, head_dim); cos/sin: (seq, head_dim // 2). Rotates interleaved pairs."""
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------
# The blocks.


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # -1: the n_heads heads (under tensor parallelism, model/parallelize.py: this rank's share of them).
        q = self.wq(x).view(batch, seq, -1, self.head_dim)
        k = self.wk(x).view(batch, seq, -1, self.head_dim)
        v = self.wv(x).view(batch, seq, -1, self.head_dim)
        # The tables' first `seq` rows: the model passes them whole, because its own input may be a
        # share of the sequence (sequence parallel inside a pipeline stage) while attention sees all of it.
        cos, sin = cos[:seq], sin[:seq]
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        # (batch, heads, seq, head_dim); SDPA picks the flash / memory-efficient kernel (§2.4 uses
        # xformers' causal attention for the same reason: no materialized seq x seq mask).
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, ffn_hidden_dim(args))
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A dict, not a list: a pipeline stage deletes the blocks it does not run and the rest keep
        # their global names (layers.N.*), which checkpoints and the Hugging Face export rely on.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)  # untied from tok_embeddings
        # Non-persistent: derived from args, so checkpoints hold only learned weights (as Meta's do).
        cos, sin = precompute_rope(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # The per-chunk softmax/loss kernel of the fused head + loss (model/loss.py); compile_blocks
        # swaps in its torch.compile'd form.
        self.loss_kernel = loss_and_logit_grad
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter by init_parameter, in named_parameters() order from the global torch RNG,
        and the RoPE tables. Callable again after building on the meta device and `to_empty()`
        (model/distributed.py materialize does that, also for a sharded model)."""
        for name, param in self.named_parameters():
            init_parameter(name, param)
        self.init_rope()

    @torch.no_grad()
    def init_rope(self) -> None:
        if self.rope_cos.device.type != "meta":
            cos, sin = precompute_rope(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (batch, seq) int64. Without `targets`: float32 logits (batch, seq, vocab). With
        `targets` (same shape as tokens; -100 = ignore): the mean next-token cross-entropy, computed
        by the fused, chunked head + loss (model/loss.py), which never builds the full logits.
        A pipeline stage (model/pipeline.py) without the embedding takes the previous stage's hidden
        state (batch, seq, dim) as `tokens`; one without the final norm and head returns its own."""
        seq = tokens.shape[1]
        if seq > self.args.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.args.max_seq_len}")
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for layer in self.layers.values():
            h = layer(h, self.rope_cos, self.rope_sin)
        if self.norm is None:  # a pipeline stage before the last
            return h
        h = self.norm(h)
        if targets is None:
            return self.output(h).float()
        return self.head_loss(h, targets)

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The output head and the mean cross-entropy, fused (model/loss.py). Tensor parallelism
        replaces it on the model it parallelizes: each rank its share of the sequence
        (model/parallelize.py sequence_parallel_head_loss)."""
        return linear_cross_entropy(h.reshape(-1, h.size(-1)), self.output.weight, targets.reshape(-1), self.loss_kernel)


@torch.no_grad()
def init_parameter(name: str, tensor: torch.Tensor) -> None:
    """Ones for the RMSNorm gains, Normal(0, 0.02) for every matrix and the embedding."""
    if name.endswith("norm.weight"):
        nn.init.ones_(tensor)
    else:
        nn.init.normal_(tensor, mean=0.0, std=INIT_STD)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
