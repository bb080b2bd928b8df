"""The human-readable summary of a build (and training run), made from the manifests on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.documents import is_complete, read_manifest
from pipeline.spec import BuildSpec


def _top_reasons(reasons: dict[str, int], n: int = 3) -> str:
    items = sorted(reasons.items(), key=lambda kv: -kv[1])[:n]
    more = len(reasons) - len(items)
    text = ", ".join(f"{r} {c}" for r, c in items)
    return text + (f", +{more} more" if more > 0 else "")


def stage_table(spec: BuildSpec, build: Path) -> list[str]:
    lines = [f"{'stage':<22} {'in':>8} {'kept':>8} {'rejected':>8}  top reasons", "-" * 86]
    for source in spec.source_order():
        for name in spec.sources[source].stages:
            folder = build / "stages" / name
            if not is_complete(folder):
                lines.append(f"{name:<22} {'(not run)':>8}")
                continue
            m = read_manifest(folder)
            lines.append(
                f"{name:<22} {m['docs_in']:>8} {m['docs_kept']:>8} {m['docs_rejected']:>8}  {_top_reasons(m['rejected_by_reason'])}"
            )
    for name in ("mixture", "tokens"):
        if is_complete(build / name):
            m = read_manifest(build / name)
            lines.append(f"{name:<22} {m['docs_in']:>8} {m['docs_kept']:>8} {m['docs_rejected']:>8}  {_top_reasons(m['rejected_by_reason'])}")
    return lines


def mixture_table(build: Path) -> list[str]:
    """Target against realized training tokens per source (the token shards' train split), with the
    epochs that implies next to Table 1's, and the mixture's warnings."""
    if not is_complete(build / "tokens"):
        return ["(no token shards)"]
    stats = read_manifest(build / "tokens")["stats"]
    tokens = stats.get("tokens_per_source", {})
    targets = stats.get("target_tokens", {})
    target_share = stats.get("target_share", {})
    realized = stats.get("realized_share", {})
    epochs = stats.get("epochs", {})
    table1 = stats.get("table1_epochs", {})
    lines = [
        f"{'source':<14} {'target tok':>11} {'realized':>11} {'target':>8} {'realized':>9} {'epochs':>7} {'Table 1':>8}",
        "-" * 74,
    ]
    for source in sorted(tokens, key=lambda s: -target_share.get(s, 0)):
        paper = table1.get(source)
        lines.append(
            f"{source:<14} {targets.get(source, 0):>11} {tokens[source]:>11} {100 * target_share.get(source, 0):>7.2f}% "
            f"{100 * realized.get(source, 0):>8.2f}% {epochs.get(source, 0):>7.2f} {paper if paper is not None else '':>8}"
        )
    lines.append(f"{'total':<14} {sum(targets.values()):>11} {sum(tokens.values()):>11}   (train split; val {stats.get('split_tokens', {}).get('val', 0)} tokens)")
    lines += [f"WARNING {w}" for w in stats.get("mixture_warnings", [])]
    return lines


def training_lines(train_dir: Path) -> list[str]:
    summary_path = train_dir / "summary.json"
    if not summary_path.exists():
        return ["(no training run)"]
    s = json.loads(summary_path.read_text())
    first, last = s.get("first_loss"), s.get("last_loss")
    lines = [
        f"loss {first:.3f} → {last:.3f} over {s.get('steps')} steps ({s.get('tokens')} tokens, world size {s.get('world_size')})",
        f"throughput {s.get('tokens_per_s', 0):.0f} tokens/s ({s.get('device')}, {s.get('precision', 'fp32')}), "
        f"{s.get('parameters', 0):,} parameters",
    ]
    if s.get("mfu") is not None:
        lines.append(f"MFU {100 * s['mfu']:.1f}% (peak: {s.get('run', {}).get('peak_flops_source', '?')}), "
                     f"peak memory {s.get('peak_mem_gib', 0):.2f} GiB per process")
    if s.get("val_loss") is not None:
        lines.append(f"validation loss {s['val_loss']:.3f}")
    if s.get("resumed_from"):
        lines.append(f"resumed from {s['resumed_from']}")
    if (train_dir / "loss_curve.png").exists():
        lines.append(f"loss curve {train_dir / 'loss_curve.png'}")
    return lines


def render_summary(spec: BuildSpec, out: Path, extra: dict[str, Any] | None = None) -> str:
    build, train = out / "build", out / "train"
    parts = [
        f"# llama-recipe: {spec.name}",
        "",
        "## Stages (documents)",
        *stage_table(spec, build),
        "",
        "## Mixture: tokens per source against Table 1",
        *mixture_table(build),
        "",
        "## Training",
        *training_lines(train),
        "",
        "## Where everything is",
        f"raw inputs       {out / 'samples'}",
        f"stage folders    {build / 'stages'}/<stage>/(kept|rejected)/part-*.parquet + manifest.json",
        f"mixture          {build / 'mixture'}",
        f"tokenizer        {build / 'tokenizer' / 'artifacts' / 'tokenizer.model'}",
        f"token shards     {build / 'tokens'}/(train|val)/shard-*.bin + .idx",
        f"training run     {train}/metrics.jsonl, tensorboard/, checkpoints/, summary.json",
    ]
    for key, value in (extra or {}).items():
        parts.append(f"{key:<16} {value}")
    return "\n".join(parts) + "\n"
