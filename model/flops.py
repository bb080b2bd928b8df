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
import torch.backends.cpu

from model.llama import ModelArgs

# Dense tensor-core peaks from the vendors' datasheets (no sparsity), per GPU, by the name
# torch.cuda.get_device_name reports: bf16, and plain fp32 (CUDA cores, what fp32 matmuls run at
# unless TF32 is enabled). TF32 tensor cores run at half the bf16 rate.
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
GPU_PEAK_FP32 = {
    "H200": 66.9e12,
    "H100 SXM": 66.9e12,
    "H100 NVL": 60.0e12,
    "H100 PCIe": 51.2e12,
    "H100": 66.9e12,
    "GH200": 66.9e12,
    "A100": 19.5e12,
    "L40S": 91.6e12,
    "L4": 30.3e12,
    "A10G": 31.2e12,
    "RTX 4090": 82.6e12,
}

# CPUs: threads x clock x FLOPs per cycle per core, the last from the vector ISA torch dispatches
# its kernels for (torch.backends.cpu.get_cpu_capability()) and the matrix extensions the CPU
# reports (torch.cpu.get_capabilities()). fp32: two FMA units of the vector width (AVX-512: 2 x 16
# lanes x 2 FLOPs = 64; AVX2: 32; anything else is taken as 128-bit SSE/NEON/VSX: 16). bf16: AMX
# tiles 1024 per cycle, AVX512-BF16 dot products 128; a CPU with neither converts bf16 to fp32 and
# computes there, so its bf16 peak is its fp32 peak (and bf16 there is slower, not faster). Cores
# with one or half-width FMA units reach less, so this is an upper bound and CPU MFU a lower bound;
# pass --peak-flops for a measured figure.
CPU_FP32_FLOPS_PER_CYCLE = {"AVX512": 64, "AVX2": 32, "SVE256": 32}
CPU_DEFAULT_FP32_FLOPS_PER_CYCLE = 16
CPU_BF16_FLOPS_PER_CYCLE = {"amx_bf16": 1024, "avx512_bf16": 128}


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


def cpu_flops_per_cycle(precision: str) -> tuple[int, str]:
    """(FLOPs per cycle per core for `precision`, the ISA it is taken from)."""
    isa = torch.backends.cpu.get_cpu_capability()
    fp32 = CPU_FP32_FLOPS_PER_CYCLE.get(isa, CPU_DEFAULT_FP32_FLOPS_PER_CYCLE)
    if precision == "bf16":
        features = torch.cpu.get_capabilities()
        for feature, per_cycle in CPU_BF16_FLOPS_PER_CYCLE.items():
            if features.get(feature):
                return per_cycle, f"{isa}, {feature.upper()}"
        return fp32, f"{isa}, no bf16 units: bf16 computes at the fp32 rate"
    return fp32, isa


def gpu_peak(name: str, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, its source) of a GPU by name; fp32 counts TF32 tensor cores when torch lets
    fp32 matmuls use them (torch.get_float32_matmul_precision() "high"/"medium"), plain fp32 else."""
    for key in sorted(GPU_PEAK_BF16, key=len, reverse=True):
        if key in name:
            if precision == "bf16":
                return GPU_PEAK_BF16[key], f"{name}: {key} datasheet, bf16"
            if torch.get_float32_matmul_precision() != "highest":
                return GPU_PEAK_BF16[key] / 2, f"{name}: {key} datasheet, fp32 as TF32"
            return GPU_PEAK_FP32[key], f"{name}: {key} datasheet, fp32 (TF32 off)"
    return 0.0, f"{name}: unknown GPU, pass --peak-flops"


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one process's device, where the figure comes from)."""
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), precision)
    threads = torch.get_num_threads()
    ghz = _cpu_ghz()
    per_cycle, isa = cpu_flops_per_cycle(precision)
    return threads * ghz * 1e9 * per_cycle, (
        f"CPU estimate: {threads} threads x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle ({precision}; {isa})"
    )


def mfu(tokens_per_s: float, flops_token: float, peak_per_device: float, devices: int) -> float | None:
    if peak_per_device <= 0:
        return None
    return tokens_per_s * flops_token / (peak_per_device * devices)
