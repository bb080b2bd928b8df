"""The whole recipe as one flow: corpus build → tokenizer → mixture → token shards → pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.corpus import build_corpus
from flows.pretrain import pretrain
from pipeline.spec import load_spec


@flow(name="recipe", flow_run_name="recipe-{spec_path}")
def recipe(spec_path: str, inputs_dir: str, out_dir: str, force: bool = False, train: bool = True,
           workers: int | None = None) -> dict[str, Any]:
    spec = load_spec(spec_path)
    out = Path(out_dir)
    build = build_corpus(spec_path, inputs_dir, str(out / "build"), force, workers)
    result: dict[str, Any] = {"build": build}
    if train:
        result["train"] = pretrain(build["tokens"], str(out / "train"), spec.train.model_dump(mode="json", exclude_unset=True))  # only what the spec sets: the rest is the preset's
    return result
