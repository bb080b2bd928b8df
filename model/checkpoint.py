"""Checkpoints: the full (unsharded) model and optimizer state, written by rank 0.

    <run dir>/checkpoints/step-000100/
        model.pt       torch.save of the model state dict (Meta's parameter names, float32, CPU)
        optimizer.pt   torch.save of the optimizer state dict, keyed by parameter name
        meta.json      step, tokens seen, model args, training config

Every rank takes part in gathering (the gather is a collective under FSDP2); only rank 0 writes,
into a temporary folder renamed into place, so a crash never leaves a half checkpoint that looks
complete. A full state dict on one host is right for the CPU presets and 7B-scale exports; sharded
torch.distributed.checkpoint (DCP) saves are the path for larger models.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from model.distributed import DistEnv, barrier
from model.llama import ModelArgs

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
META_FILE = "meta.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_args: ModelArgs,
    env: DistEnv,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank must call it. Returns the checkpoint folder."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    final = checkpoint_dir(run_dir, step)
    if env.is_main:
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(model_state, tmp / MODEL_FILE)
        torch.save(optim_state, tmp / OPTIMIZER_FILE)
        meta = {"step": step, "model_args": asdict(model_args)} | (extra or {})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    barrier(env)
    return final


def load_model_state(ckpt_dir: Path | str) -> tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]:
    """(model args, model state dict, meta) of a checkpoint folder, for evaluation and export."""
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{ckpt_dir}: not a checkpoint folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    state = torch.load(ckpt_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    return ModelArgs(**meta["model_args"]), state, meta


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("step-*"))
    return found[-1] if found else None
