"""bench/gpu_bench.py on CPU processes (--allow-cpu): every mesh layout it would run on 2 GPUs
launches the real trainer, trains the same global batch and reaches the same loss; the report is
written. On a GPU machine the same script is the throughput/MFU benchmark (BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.gpu_bench import layouts
from tests.test_train import REPO, run_subprocess

SCRIPT = [sys.executable, str(REPO / "bench" / "gpu_bench.py")]


def test_the_layouts_follow_the_device_count_and_the_models_shape():
    names = lambda n, **kw: [layout.name for layout in layouts(n, "1B", 2048, **kw)]
    assert names(1) == ["1 GPU"]
    assert names(2) == ["FSDP2 2", "TP 2", "PP 2"]
    assert names(8) == ["FSDP2 8", "HSDP 2 x 4", "TP 2 x FSDP2 4", "TP 8", "PP 2 x FSDP2 4"]
    assert names(1, float8="tensorwise") == ["1 GPU", "1 GPU, float8 tensorwise"]
    assert names(2, float8="rowwise")[2:4] == ["TP 2", "TP 2, float8 rowwise"]
    assert "TP 6" not in names(6)  # 1B's 16 heads do not split 6 ways


@pytest.mark.slow
def test_every_layout_trains_the_same_batches_to_the_same_loss_on_cpu_processes(tmp_path):
    bench, report = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    bench.write_text("# Benchmarks\n")
    result = run_subprocess(SCRIPT + ["--allow-cpu", "--gpus", "2", "--preset", "tiny", "--seq-len", "64", "--batch-size", "2",
                                      "--grad-accum", "2", "--steps", "2", "--warmup-steps", "1", "--no-compile",
                                      "--precision", "fp32", "--json", str(report), "--out", str(bench)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())["results"]
    assert [r["layout"] for r in results] == ["FSDP2 2", "TP 2", "PP 2"] and not any("error" in r for r in results)
    assert {r["tokens_per_step"] for r in results} == {8 * 64}  # 2 x 2 x 2 sequences of 64 in every layout
    assert [(r["micro_batch"], r["grad_accum"]) for r in results] == [(2, 2), (2, 4), (2, 4)]
    first = results[0]["last_loss"]
    assert all(abs(r["last_loss"] - first) / first < 1e-5 for r in results)  # same weights, same batches
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_gib"] > 0 for r in results)
    text = bench.read_text()
    assert "## Training on GPU" in text and "| PP 2 | mesh 2 x 1 x 1 x 1" in text and "not a benchmark" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benchmark runs")
def test_without_cuda_it_refuses_unless_asked_to_run_on_cpu():
    result = subprocess.run(SCRIPT + ["--preset", "tiny"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "no CUDA device here" in result.stderr
