"""Model FLOPs utilization: the FLOPs a training step needs against what the devices could do.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B): 6N + 12·L·d·T, where N counts the
parameters that take part in matmuls (all but the input embedding, which is a table lookup), the
6 is forward (2) plus backward (4), and 12·L·d·T is attention's scores and weighted sum over a
T-token context. The attention term counts the full T×T matrix as PaLM and torchtitan do, although
a causal kernel skips half of it: MFU is a convention for comparing runs, not a count of the work
a given kernel did. Activation recomputation is not counted (that would be "hardware" FLOPs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.llama import ModelArgs

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity). fp32 on these GPUs runs
# as TF32 at half the rate.
GPU_PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.0e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # "NVIDIA H100 80GB HBM3" is the SXM part
    "GH200": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.1e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
}

# CPUs: cores x clock x FLOPs per cycle per core. With AVX-512, two 512-bit FMA units give 64 fp32
# FLOPs per cycle, and AVX512-BF16's dot products double that. Cores with one or half-width FMA
# units reach less, so this is an upper bound and CPU MFU a lower bound; pass --peak-flops for a
# measured figure.
CPU_FLOPS_PER_CYCLE = {"fp32": 64, "bf16": 128}


def flops_per_token(args: ModelArgs, num_params: int, seq_len: int) -> float:
    matmul_params = num_params - args.vocab_size * args.dim  # the embedding is a lookup
    return 6 * matmul_params + 12 * args.n_layers * args.dim * seq_len


def _cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return 2.0


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one process's device, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
            if key in name:
                peak = GPU_PEAK_BF16[key] / (1 if precision == "bf16" else 2)
                return peak, f"{name}: {key} datasheet, {precision}"
        return 0.0, f"{name}: unknown GPU, pass --peak-flops"
    threads = torch.get_num_threads()
    ghz = _cpu_ghz()
    per_cycle = CPU_FLOPS_PER_CYCLE.get(precision, 64)
    return threads * ghz * 1e9 * per_cycle, f"CPU estimate: {threads} threads x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle ({precision})"


def mfu(tokens_per_s: float, flops_token: float, peak_per_device: float, devices: int) -> float | None:
    if peak_per_device <= 0:
        return None
    return tokens_per_s * flops_token / (peak_per_device * devices)
