"""Float8 training of the blocks' matmuls with torchao (torchtitan's float8 converter), off by default.

    --float8 tensorwise | rowwise

Every nn.Linear of the transformer blocks (wq, wk, wv, wo, w1, w2, w3) becomes torchao's
Float8Linear: its input, weight and output gradient are cast to float8 (e4m3 forward, e5m2 for the
gradient under the tensorwise recipe) with dynamic scales computed from the tensors' current amax,
and the three matmuls of forward and backward run as torch._scaled_mm; master weights, optimizer
state and everything else (embedding, RMSNorm, attention's softmax, the residual stream) keep their
precision. The output head stays out: the fused head + loss (model/loss.py) uses its weight directly,
and its V x d matmul feeds the softmax, where float8's 3 mantissa bits cost the most (torchtitan
leaves `output` out too).

- tensorwise: one scale per tensor; with FSDP2 the shards are all-gathered already in float8 (half of
  bf16's traffic), their scales precomputed with one all-reduce after each optimizer step.
- rowwise: one scale per row (more accurate, slower on H100; torchao's recommendation for larger
  models); FSDP2 all-gathers bf16 as usual.

Why off by default: LLaMA trained in bf16 (the paper's A100s have no float8 units); float8 is a
throughput option for H100-class GPUs (compute capability 8.9+), where torch.compile fuses the casts.
On a CPU the float8 matmuls are emulated (convert_to_float8): the CPU tests check the numerics, not speed.
With tensor parallel (--tp), tensorwise float8 uses torchao's float8 plans for the blocks
(model/parallelize.py apply_tensor_parallel: activations all-gathered in float8).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

RECIPES = ("tensorwise", "rowwise")
# torch._scaled_mm wants both dims of each float8 operand to be multiples of 16.
_ALIGNMENT = 16


def _torchao_float8():
    """torchao.float8, imported. Without CUDA, torchao's import logs a warning for each CUDA kernel
    library it cannot load; those kernels are not used here, so the warnings are silenced. So is
    torch's deprecation notice, on every rank, about how torchao registers an Enum with pytree."""
    if not torch.cuda.is_available():
        logging.getLogger("torchao").setLevel(logging.ERROR)
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao.float8
    finally:
        pytree_log.setLevel(level)
    return torchao.float8


def check_float8(recipe: str | None, device: torch.device) -> None:
    """Refuse what float8 training cannot run, before any process group forms."""
    if recipe is None:
        return
    if recipe not in RECIPES:
        raise ValueError(f"--float8 {recipe}: expected one of {', '.join(RECIPES)}")
    try:
        _torchao_float8()
    except ImportError as exc:
        raise ValueError(f"--float8 needs torchao (pip install torchao): {exc}") from exc
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--float8: {name} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}) "
                         "has no float8 matmuls; they need 8.9+ (Ada, Hopper, Blackwell)")


def _config(recipe: str, fsdp: bool, emulate: bool):
    from dataclasses import replace

    Float8LinearConfig = _torchao_float8().Float8LinearConfig
    if recipe == "tensorwise":
        config = Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp)
    else:
        config = Float8LinearConfig.from_recipe_name("rowwise")
    return replace(config, emulate=emulate)


def convert_to_float8(model: nn.Module, recipe: str, fsdp: bool, device: torch.device) -> nn.Module:
    """Swap the blocks' nn.Linear for Float8Linear in place (on the meta device or materialized);
    parameter names do not change, so checkpoints stay interchangeable with bf16 runs. `fsdp`: the
    model will be sharded by FSDP2 (tensorwise then all-gathers in float8). Off CUDA the matmul is
    torchao's emulation — the same float8 casts and scales, the product of the float8 values in
    fp32 — because torch._scaled_mm on a CPU is a naive loop (2.2 s for a 2048 x 128 x 512 product
    here, 10^4 times fp32's)."""

    def in_a_block(module: nn.Module, name: str) -> bool:
        aligned = module.in_features % _ALIGNMENT == 0 and module.out_features % _ALIGNMENT == 0
        return name.startswith("layers.") and aligned

    config = _config(recipe, fsdp, emulate=device.type != "cuda")
    _torchao_float8().convert_to_float8_training(model, module_filter_fn=in_a_block, config=config)
    if not float8_linears(model):
        raise ValueError(f"--float8: no linear layer of the blocks has dimensions that are multiples of {_ALIGNMENT}")
    return model


def float8_linears(model: nn.Module) -> list[nn.Module]:
    from torchao.float8.float8_linear import Float8Linear

    return [m for m in model.modules() if isinstance(m, Float8Linear)]


class Float8ScalePrecompute:
    """Under tensorwise float8 + FSDP2, after every change of the weights (an optimizer step, a
    checkpoint loaded): every float8 weight's scale from its new values in one all-reduce (torchao's
    precompute_float8_dynamic_scale_for_fsdp), so the next forward all-gathers float8 shards already
    scaled. A no-op otherwise."""

    def __init__(self, model: nn.Module, recipe: str | None, fsdp: bool):
        self.model, self.active = model, recipe == "tensorwise" and fsdp

    def weights_changed(self) -> None:
        if self.active:
            _torchao_float8().precompute_float8_dynamic_scale_for_fsdp(self.model)
