"""`llama-recipe ablate`: did the filter help? Build variants of a spec, train one proxy model per
variant and seed, and compare their validation losses on one fixed evaluation set.

    ablate-<name>
    ├─ build-corpus (base)              the base spec's build
    ├─ reference tokens                 the base build's held-out documents of `eval_sources`
    ├─ build-corpus (each variant)      in its own folder, seeded with hard links to the base's stage
    │                                   folders: every unchanged stage is reused (same identity), as
    │                                   `rerun` reuses upstream stages; the base's tokenizer is used
    ├─ pretrain (variant × seed)        the same proxy preset, steps and batch for every run, with
    │                                   --eval-ref: the reference set
    └─ report                           mean and spread over seeds per variant: markdown + UI artifacts

Comparable by construction: every variant trains with the base build's tokenizer (losses are per
token of one vocabulary) and is evaluated on the same documents, which no variant trains on — they
are held out by a hash of (seed, document id) in every mixture, and are never drawn from a
variant's own output. What differs between variants is only what their stages kept.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.documents import StageError, is_complete
from pipeline.spec import BuildSpec, load_spec, spec_path

BASE = "base"
# Proxy models: the training settings every run of an ablation shares. cpu: minutes per run on 2
# CPU cores (the tiny preset); gpu: ~134M parameters (the "150M" preset) for ~3B tokens on one GPU.
PROXIES: dict[str, dict[str, Any]] = {
    "cpu": {"preset": "tiny", "nproc": 1, "steps": 150, "seq_len": 128, "batch_size": 8, "grad_accum": 1,
            "warmup_steps": 15, "log_every": 10, "eval_every": 50, "ckpt_every": 150},
    "gpu": {"preset": "150M", "nproc": 1, "log_every": 50, "eval_every": 500, "ckpt_every": 2000},
}
# The metrics compared: the reference set's loss first (the question an ablation asks), then the
# variant's own held-out split and its sources (which differ between variants: context only).
METRIC_REFERENCE = "val_loss_reference"


# -- variants -------------------------------------------------------------------------------------


def parse_variants(variants: list[str], vary: list[str]) -> dict[str, dict[str, Any]]:
    """`--variant NAME=SPEC` (a spec file per variant) and `--vary NAME:STAGE.KEY=VALUE` /
    `--vary NAME:-STAGE` (the base spec with a stage's config key set, VALUE read as YAML, or a
    stage dropped) into {name: {"spec": path} or {"set": {stage: {key: value}}, "drop": [stage]}}."""
    found: dict[str, dict[str, Any]] = {}
    for text in variants:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise StageError(f"--variant {text!r}: expected NAME=SPEC_FILE")
        found[name] = {"spec": str(spec_path(path))}
    for text in vary:
        name, sep, change = text.partition(":")
        if not sep or not name or not change:
            raise StageError(f"--vary {text!r}: expected NAME:STAGE.KEY=VALUE or NAME:-STAGE")
        variant = found.setdefault(name, {"set": {}, "drop": []})
        if "spec" in variant:
            raise StageError(f"--vary {text!r}: variant {name!r} is already a spec file")
        if change.startswith("-"):
            variant["drop"].append(change[1:])
            continue
        target, sep, value = change.partition("=")
        stage, dot, key = target.partition(".")
        if not sep or not dot or not stage or not key:
            raise StageError(f"--vary {text!r}: expected NAME:STAGE.KEY=VALUE")
        variant["set"].setdefault(stage, {})[key] = yaml.safe_load(value)
    if BASE in found:
        raise StageError(f"a variant may not be called {BASE!r}: that is the base spec")
    if not found:
        raise StageError("no variants: give --variant NAME=SPEC or --vary NAME:STAGE.KEY=VALUE")
    return found


def variant_raw(base: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The base spec (as loaded YAML) with a variant's stage changes applied."""
    raw = json.loads(json.dumps(base))  # a deep copy
    stages = {name: source for source, spec in raw["sources"].items() for name in spec.get("stages") or {}}
    for stage, values in variant.get("set", {}).items():
        if stage not in stages:
            raise StageError(f"variant: the base spec has no stage {stage!r} (stages: {', '.join(stages)})")
        chain = raw["sources"][stages[stage]]["stages"]
        chain[stage] = (chain[stage] or {}) | values
    for stage in variant.get("drop", []):
        if stage not in stages:
            raise StageError(f"variant: the base spec has no stage {stage!r} to drop")
        del raw["sources"][stages[stage]]["stages"][stage]
    return raw


def write_variant_specs(base_spec: Path, variants: dict[str, dict[str, Any]], folder: Path) -> dict[str, Path]:
    """One spec file per variant in `folder` (the base's copied as base.yaml), each validated."""
    folder.mkdir(parents=True, exist_ok=True)
    base_raw = yaml.safe_load(base_spec.read_text())
    specs = {BASE: folder / f"{BASE}.yaml"}
    specs[BASE].write_text(base_spec.read_text())
    for name, variant in variants.items():
        raw = yaml.safe_load(Path(variant["spec"]).read_text()) if "spec" in variant else variant_raw(base_raw, variant)
        raw["name"] = f"{base_raw.get('name', 'spec')}-{name}"
        path = specs[name] = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        spec = load_spec(path)  # a variant that does not validate fails here, before any build
        _check_comparable(load_spec(specs[BASE]), spec, name)
    return specs


def _check_comparable(base: BuildSpec, variant: BuildSpec, name: str) -> None:
    """The reference documents are held out of every variant only if the mixture draws its val
    split the same way (a hash of its seed and the document id at the same fraction)."""
    for key in ("seed", "val_fraction"):
        if getattr(base.mixture, key) != getattr(variant.mixture, key):
            raise StageError(f"variant {name!r}: mixture.{key} differs from the base's: its training could "
                             "include the reference documents")


def seed_build(base_build: Path, build: Path) -> list[str]:
    """Start a build folder as hard links to another build's committed folders (stages, mixture,
    token shards): unchanged steps are then up to date and reused; a step that is recomputed
    replaces its folder by renaming (pipeline/documents.py), so the other build's files are never
    written through a link. Folders already there are left alone. Returns the folders linked."""
    folders = [f for f in sorted((base_build / "stages").glob("*")) if not f.name.startswith(".")]
    folders += [base_build / name for name in ("mixture", "tokens")]
    linked = []
    for folder in folders:
        target_folder = build / folder.relative_to(base_build)
        if not is_complete(folder) or target_folder.exists():
            continue
        for source in sorted(folder.rglob("*")):
            target = target_folder / source.relative_to(folder)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, target)
        linked.append(str(folder.relative_to(base_build)))
    return linked


# -- the report ---------------------------------------------------------------------------------


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: each seed's final losses and their mean and standard deviation, for the
    reference set, the variant's own val split and each source of it."""
    report: dict[str, Any] = {"variants": {}}
    for name, by_seed in runs.items():
        metrics: dict[str, list[float]] = {}
        for summary in by_seed.values():
            values = {METRIC_REFERENCE: summary.get(METRIC_REFERENCE), "val_loss": summary.get("val_loss")}
            values |= {f"val_loss/{s}": v for s, v in (summary.get("val_loss_by_source") or {}).items()}
            for key, value in values.items():
                if value is not None:
                    metrics.setdefault(key, []).append(value)
        report["variants"][name] = {
            "seeds": sorted(by_seed),
            "runs": {str(seed): {k: by_seed[seed].get(k) for k in (METRIC_REFERENCE, "val_loss", "val_loss_by_source", "last_loss", "tokens")}
                     for seed in sorted(by_seed)},
            "metrics": {key: dict(zip(("mean", "std"), _mean_spread(values))) | {"n": len(values)} for key, values in metrics.items()},
        }
    return report


def report_markdown(report: dict[str, Any], title: str) -> str:
    variants = report["variants"]
    keys = [METRIC_REFERENCE] + sorted({k for v in variants.values() for k in v["metrics"]} - {METRIC_REFERENCE})
    label = lambda k: "reference set" if k == METRIC_REFERENCE else k.replace("val_loss/", "val: ").replace("val_loss", "own val split")
    lines = [f"## {title}", "", report.get("description", ""), "",
             "Final validation loss (nats/token), mean ± standard deviation over seeds; lower is better. "
             "The reference set is the same documents for every variant; the own-split columns are each "
             "variant's held-out documents, which differ between variants.", "",
             "| variant | seeds | " + " | ".join(label(k) for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for name, variant in variants.items():
        cells = []
        for key in keys:
            m = variant["metrics"].get(key)
            cells.append(f"{m['mean']:.4f} ± {m['std']:.4f}" if m else "-")
        lines.append(f"| {name} | {len(variant['seeds'])} | " + " | ".join(cells) + " |")
    base = variants.get(BASE, {}).get("metrics", {}).get(METRIC_REFERENCE)
    if base:
        lines += [""]
        for name, variant in variants.items():
            m = variant["metrics"].get(METRIC_REFERENCE)
            if name != BASE and m:
                delta = m["mean"] - base["mean"]
                noise = math.hypot(m["std"], base["std"])
                verdict = ("within the seeds' spread: no measurable difference" if abs(delta) <= noise
                           else "better than the base" if delta < 0 else "worse than the base")
                lines.append(f"- {name} − base on the reference set: {delta:+.4f} nats/token ({verdict}).")
    return "\n".join(lines) + "\n"


def loss_curves_png(run_dirs: dict[str, list[Path]]) -> bytes:
    """The reference-set loss against the step, mean over seeds, one curve per variant."""
    import io

    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    for name, dirs in run_dirs.items():
        by_step: dict[int, list[float]] = {}
        for run in dirs:
            for line in (run / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                if METRIC_REFERENCE in record:
                    by_step.setdefault(record["step"], []).append(record[METRIC_REFERENCE])
        steps = sorted(by_step)
        if steps:
            axes.plot(steps, [statistics.fmean(by_step[s]) for s in steps], "o-", label=name)
    axes.set_xlabel("step")
    axes.set_ylabel("reference-set loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@task(task_run_name="reference-tokens", cache_policy=NO_CACHE)
def reference_task(tokens_dir: str, output: str, sources: list[str]) -> str:
    from pipeline.token_shards import write_reference_tokens

    manifest = write_reference_tokens(Path(tokens_dir), Path(output), sources)
    stats = manifest["stats"]["shards"][0]
    get_run_logger().info("reference set: %d held-out documents of %s, %d tokens", stats["docs"], ", ".join(sources), stats["tokens"])
    return output


@task(task_run_name="ablation-report", cache_policy=NO_CACHE)
def report_task(out: str, runs: dict[str, dict[int, str]], description: str) -> dict[str, Any]:
    import base64

    summaries = {name: {seed: json.loads((Path(d) / "summary.json").read_text()) for seed, d in by_seed.items()}
                 for name, by_seed in runs.items()}
    report = summarize(summaries) | {"description": description}
    markdown = report_markdown(report, "Ablation")
    png = loss_curves_png({name: [Path(d) for d in by_seed.values()] for name, by_seed in runs.items()})
    (Path(out) / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(out) / "ablation.md").write_text(markdown)
    (Path(out) / "ablation_curves.png").write_bytes(png)
    rows = [{"variant": name, "seeds": len(v["seeds"])} | {k: f"{m['mean']:.4f} ± {m['std']:.4f}" for k, m in v["metrics"].items()}
            for name, v in report["variants"].items()]
    create_table_artifact(key="ablation", table=rows, description="final validation losses per variant (mean ± std over seeds)")
    image = base64.b64encode(png).decode()
    create_markdown_artifact(key="ablation-report", markdown=markdown + f"\n![reference-set loss per variant](data:image/png;base64,{image})\n",
                             description="ablation: comparison table and loss curves")
    return report


@flow(name="ablate", flow_run_name="ablate-{name}")
def ablate(base_spec: str, inputs_dir: str, out_dir: str, variants: dict[str, dict[str, Any]], seeds: list[int],
           proxy: str = "cpu", train: dict[str, Any] | None = None, eval_sources: list[str] | None = None,
           workers: int | None = None, name: str = "ablation") -> dict[str, Any]:
    """Build the base spec and each variant, train a `proxy` model per variant and seed (`train`
    overrides the proxy's settings), evaluate every run on the base build's held-out documents of
    `eval_sources` (default: wikipedia, clean English), and report mean and spread per variant."""
    from flows.corpus import build_corpus
    from flows.pretrain import pretrain

    if proxy not in PROXIES:
        raise StageError(f"proxy {proxy!r}: choose {' or '.join(PROXIES)}")
    if not seeds:
        raise StageError("no seeds")
    out = Path(out_dir)
    specs = write_variant_specs(spec_path(base_spec), variants, out / "specs")
    eval_sources = eval_sources or ["wikipedia"]
    builds = {BASE: build_corpus(str(specs[BASE]), inputs_dir, str(out / "builds" / BASE), workers=workers)}
    reference = reference_task(builds[BASE]["tokens"], str(out / "reference"), eval_sources)
    for variant in variants:
        seed_build(out / "builds" / BASE, out / "builds" / variant)
        builds[variant] = build_corpus(str(specs[variant]), inputs_dir, str(out / "builds" / variant), workers=workers,
                                       tokenizer=str(out / "builds" / BASE / "tokenizer"))
    settings = PROXIES[proxy] | (train or {})
    runs: dict[str, dict[int, str]] = {}
    for variant, build in builds.items():
        for seed in seeds:
            run_dir = out / "runs" / variant / f"seed-{seed}"
            extra = [*settings.get("extra_args", []), "--eval-ref", reference]
            pretrain(build["tokens"], str(run_dir), settings | {"seed": seed, "extra_args": extra})
            runs.setdefault(variant, {})[seed] = str(run_dir)
    description = (f"Base spec {base_spec}; variants: " + "; ".join(f"{n}: {_describe(v)}" for n, v in variants.items())
                   + f". Proxy {proxy} ({settings.get('preset')}), seeds {seeds}; reference set: the base build's held-out "
                   f"{', '.join(eval_sources)} documents.")
    return report_task(str(out), runs, description)


def _describe(variant: dict[str, Any]) -> str:
    if "spec" in variant:
        return f"spec {variant['spec']}"
    changes = [f"{stage}.{key}={json.dumps(value)}" for stage, values in variant.get("set", {}).items() for key, value in values.items()]
    changes += [f"without {stage}" for stage in variant.get("drop", [])]
    return ", ".join(changes) or "the base spec"
