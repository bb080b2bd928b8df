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
    for name in ("mixture",):
        if is_complete(build / name):
            m = read_manifest(build / name)
            lines.append(f"{name:<22} {m['docs_in']:>8} {m['docs_kept']:>8} {m['docs_rejected']:>8}  {_top_reasons(m['rejected_by_reason'])}")
    return lines


def mixture_table(build: Path) -> list[str]:
    if not is_complete(build / "tokens"):
        return ["(no token shards)"]
    stats = read_manifest(build / "tokens")["stats"]
    tokens = stats.get("tokens_per_source", {})
    target = stats.get("target_share", {})
    realized = stats.get("realized_share", {})
    epochs = stats.get("epochs", {})
    lines = [f"{'source':<14} {'tokens':>10} {'target':>8} {'realized':>9} {'epochs':>7}", "-" * 52]
    for source in sorted(tokens, key=lambda s: -target.get(s, 0)):
        lines.append(
            f"{source:<14} {tokens[source]:>10} {100 * target.get(source, 0):>7.2f}% {100 * realized.get(source, 0):>8.2f}% {epochs.get(source, 0):>7.2f}"
        )
    total = stats.get("total_tokens", sum(tokens.values()))
    lines.append(f"{'total':<14} {total:>10}")
    return lines


def training_lines(train_dir: Path) -> list[str]:
    summary_path = train_dir / "summary.json"
    if not summary_path.exists():
        return ["(no training run)"]
    s = json.loads(summary_path.read_text())
    first, last = s.get("first_loss"), s.get("last_loss")
    lines = [
        f"loss {first:.3f} → {last:.3f} over {s.get('steps')} steps ({s.get('tokens')} tokens, world size {s.get('world_size')})",
        f"throughput {s.get('tokens_per_s', 0):.0f} tokens/s, {s.get('parameters', 0):,} parameters",
    ]
    if s.get("val_loss") is not None:
        lines.append(f"validation loss {s['val_loss']:.3f}")
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
        f"training run     {train}/metrics.jsonl, checkpoints/, summary.json",
    ]
    for key, value in (extra or {}).items():
        parts.append(f"{key:<16} {value}")
    return "\n".join(parts) + "\n"
