"""Export a training checkpoint to the Hugging Face layout: LlamaForCausalLM + LlamaTokenizer.

    llama-recipe export-hf RUN_DIR_OR_CHECKPOINT OUT [--tokenizer DIR] [--dtype fp32|bf16|fp16]

    OUT/config.json                      LlamaConfig (model_type "llama", untied head, rope theta, eps)
    OUT/model.safetensors                the weights (or model-0000N-of-0000M.safetensors + index
                                         when larger than 5 GB, as transformers itself shards)
    OUT/generation_config.json           BOS / EOS ids
    OUT/tokenizer.model, tokenizer_config.json   the build's SentencePiece model and its HF settings

The one real pitfall is rotary embeddings. Our model (like Meta's) rotates INTERLEAVED pairs of
each head's dimensions, (0,1), (2,3), ...; transformers' Llama rotates HALVES, (i, i + head_dim/2)
("rotate_half"). The same function results if the rows of wq and wk are permuted inside each head
so that pair i's two rows land at i and i + head_dim/2 — the permute() of transformers'
convert_llama_weights_to_hf.py. Getting it wrong does not fail loudly: the model loads and
generates worse text, the conversion bug torchtitan users report most. tests/test_export_hf.py
checks the logits against ours to 1e-4 in fp32, and that they differ without the permutation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.checkpoint import CheckpointError, is_complete, latest_checkpoint, load_model_state
from model.llama import ModelArgs, ffn_hidden_dim

SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute the output rows of wq / wk from Meta's interleaved rotary pairs to HF's halves."""
    out_dim, in_dim = weight.shape
    return weight.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs, permute_rope: bool = True) -> dict[str, torch.Tensor]:
    """Meta's parameter names -> transformers' LlamaForCausalLM names (permute_rope=False exists for
    the test that shows the permutation matters)."""
    rope = (lambda w: interleaved_to_half(w, args.n_heads)) if permute_rope else (lambda w: w)
    hf = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        hf |= {
            theirs + "self_attn.q_proj.weight": rope(state[ours + "attention.wq.weight"]),
            theirs + "self_attn.k_proj.weight": rope(state[ours + "attention.wk.weight"]),
            theirs + "self_attn.v_proj.weight": state[ours + "attention.wv.weight"],
            theirs + "self_attn.o_proj.weight": state[ours + "attention.wo.weight"],
            theirs + "mlp.gate_proj.weight": state[ours + "feed_forward.w1.weight"],
            theirs + "mlp.down_proj.weight": state[ours + "feed_forward.w2.weight"],
            theirs + "mlp.up_proj.weight": state[ours + "feed_forward.w3.weight"],
            theirs + "input_layernorm.weight": state[ours + "attention_norm.weight"],
            theirs + "post_attention_layernorm.weight": state[ours + "ffn_norm.weight"],
        }
    return hf


def hf_config(args: ModelArgs, bos_id: int, eos_id: int, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": ffn_hidden_dim(args),
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_heads,  # LLaMA-1: no grouped-query attention
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},  # transformers 5
        "rope_theta": args.rope_theta,  # transformers 4 reads this one
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
    }


def _resolve_checkpoint(path: Path) -> Path:
    if is_complete(path):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path}: neither a complete checkpoint nor a run folder with one")
    return found


def _resolve_tokenizer(tokenizer: Path | None, meta: dict[str, Any]) -> Path:
    """The folder holding tokenizer.model: given, or the build's tokenizer beside the token shards
    the run trained on (build/tokens -> build/tokenizer/artifacts), checked against the shards'
    tokenizer hash."""
    data = Path(meta.get("config", {}).get("data", ""))
    candidates = [tokenizer] if tokenizer else [data.parent / "tokenizer" / "artifacts"]
    for folder in candidates:
        if folder is not None and (folder / "artifacts" / "tokenizer.model").is_file():
            folder = folder / "artifacts"
        if folder is not None and (folder / "tokenizer.model").is_file():
            manifest = data / "manifest.json"
            if manifest.is_file():
                expected = json.loads(manifest.read_text()).get("stats", {}).get("tokenizer_sha256")
                actual = hashlib.sha256((folder / "tokenizer.model").read_bytes()).hexdigest()
                if expected and expected != actual:
                    raise CheckpointError(f"{folder}/tokenizer.model is not the tokenizer of {data} (sha256 differs)")
            return folder
    raise CheckpointError(f"no tokenizer.model found (looked in {', '.join(map(str, candidates))}); pass --tokenizer")


def _save_shards(tensors: dict[str, torch.Tensor], out: Path) -> list[str]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map |= {key: name for key in shard}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
    return names


def export_hf(checkpoint: Path | str, out: Path | str, tokenizer: Path | str | None = None, dtype: str = "fp32") -> dict[str, Any]:
    """Write the HF folder; returns a description (checkpoint, files, parameters)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    ckpt = _resolve_checkpoint(Path(checkpoint))
    args, state, meta = load_model_state(ckpt)
    tokenizer_dir = _resolve_tokenizer(Path(tokenizer) if tokenizer else None, meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in hf_state_dict(state, args).items()}
    files = _save_shards(tensors, out)
    tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text()) if (tokenizer_dir / "tokenizer_config.json").is_file() else {}
    bos, eos = _special_ids(tokenizer_dir / "tokenizer.model")
    (out / "config.json").write_text(json.dumps(hf_config(args, bos, eos, dtype), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    if not tok_config:
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}, indent=2) + "\n")
    return {
        "checkpoint": str(ckpt),
        "step": meta["step"],
        "out": str(out),
        "files": files + ["config.json", "generation_config.json", *TOKENIZER_FILES],
        "parameters": sum(t.numel() for t in state.values()),
        "dtype": dtype,
    }


def _special_ids(model_file: Path) -> tuple[int, int]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    return processor.bos_id(), processor.eos_id()
