"""Model sizes: Table 2 of the LLaMA paper, plus small presets that train on a CPU.

Table 2 gives dimension, heads, layers, peak learning rate, batch size (tokens) and number of
training tokens; the context length is 2048 for all (§2.2). Parameter counts are computed by
building the model on the meta device (no memory), never copied from a table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from model.llama import ModelArgs, Transformer, ffn_hidden_dim, num_parameters

LLAMA_VOCAB_SIZE = 32000  # §2.1: SentencePiece BPE, 32k tokens
LLAMA_CONTEXT = 2048


@dataclass(frozen=True)
class Preset:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    lr: float  # peak learning rate of the cosine schedule
    batch_tokens: int  # tokens per optimizer step (global batch)
    max_seq_len: int = LLAMA_CONTEXT
    vocab_size: int | None = LLAMA_VOCAB_SIZE  # None: taken from the tokenizer at run time
    train_tokens: int | None = None  # Table 2 "n tokens"
    norm_eps: float = 1e-6  # RMSNorm eps: 1e-6 in every LLaMA-1 params.json (LLaMA-2 moved to 1e-5)
    rope_theta: float = 10000.0  # RoFormer's base, unchanged in LLaMA-1

    def model_args(self, vocab_size: int | None = None, max_seq_len: int | None = None) -> ModelArgs:
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        if vocab is None:
            raise ValueError(f"preset {self.name!r} takes its vocab_size from the tokenizer; pass vocab_size")
        return ModelArgs(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            vocab_size=vocab,
            max_seq_len=max_seq_len or self.max_seq_len,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
        )


M = 2**20
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # Table 2 (batch size "4M" tokens = 2048 sequences of 2048 tokens).
        Preset("7B", dim=4096, n_layers=32, n_heads=32, lr=3.0e-4, batch_tokens=4 * M, train_tokens=1_000_000_000_000),
        Preset("13B", dim=5120, n_layers=40, n_heads=40, lr=3.0e-4, batch_tokens=4 * M, train_tokens=1_000_000_000_000),
        Preset("33B", dim=6656, n_layers=60, n_heads=52, lr=1.5e-4, batch_tokens=4 * M, train_tokens=1_400_000_000_000),
        Preset("65B", dim=8192, n_layers=80, n_heads=64, lr=1.5e-4, batch_tokens=4 * M, train_tokens=1_400_000_000_000),
        # Not in the paper: a ~1B model (GPT-3 XL-like width) for single-GPU throughput and MFU
        # measurements (bench/gpu_bench.py); lr between Table 2's 7B value and GPT-3 XL's 2e-4.
        Preset("1B", dim=2048, n_layers=16, n_heads=16, lr=3.0e-4, batch_tokens=1 * M),
        # Not in the paper: the GPU proxy model of data ablations (`llama-recipe ablate --proxy gpu`),
        # ~134M parameters with a 32k vocabulary (GPT-3 Small's shape and lr) trained on ~3B tokens,
        # the size FineWeb's and DCLM's filter ablations use; context 1024 to keep a run to hours.
        Preset("150M", dim=768, n_layers=12, n_heads=12, lr=6.0e-4, batch_tokens=M // 2, max_seq_len=1024,
               train_tokens=3_000_000_000),
        # CPU presets for the demo and tests: same architecture, sized to train in minutes. Their lr is
        # higher because small models tolerate it (cf. GPT-3 Table 2.1: lr grows as models shrink).
        # Their token budget is 200 steps, a demo's length.
        Preset("tiny", dim=128, n_layers=4, n_heads=4, lr=1e-3, batch_tokens=8 * 256, max_seq_len=256, vocab_size=None,
               train_tokens=200 * 8 * 256),
        Preset("small", dim=256, n_layers=4, n_heads=8, lr=6e-4, batch_tokens=16 * 512, max_seq_len=512, vocab_size=None,
               train_tokens=200 * 16 * 512),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def count_parameters(preset_name: str, vocab_size: int | None = None) -> int:
    """Parameters of a preset, counted on a model built on the meta device (no memory allocated)."""
    preset = get_preset(preset_name)
    args = preset.model_args(vocab_size if vocab_size is not None else preset.vocab_size or LLAMA_VOCAB_SIZE)
    with torch.device("meta"):
        model = Transformer(args)
    return num_parameters(model)


def model_info(name: str, vocab_size: int | None = None) -> dict:
    """JSON-able description of a preset: its fields, the derived FFN size and the parameter count."""
    preset = get_preset(name)
    vocab = vocab_size if vocab_size is not None else preset.vocab_size or LLAMA_VOCAB_SIZE
    args = preset.model_args(vocab)
    return asdict(preset) | {
        "vocab_size": vocab,
        "head_dim": args.head_dim,
        "ffn_hidden_dim": ffn_hidden_dim(args),
        "parameters": count_parameters(name, vocab),
        "tokens_per_batch": preset.batch_tokens,
        "sequences_per_batch": preset.batch_tokens // preset.max_seq_len,
    }
