"""Pictures for the Prefect UI: small matplotlib charts of what a stage's manifest records, embedded
in markdown artifacts as PNG data URIs (the UI renders them offline: no file server, no CDN).

Each function takes a manifest and returns markdown, or None when the manifest has nothing to draw.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only
import matplotlib.pyplot as plt  # noqa: E402


def _png_markdown(figure, title: str, caption: str) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n{caption}\n"


def language_distribution(manifest: dict[str, Any]) -> str | None:
    distribution = manifest["stats"].get("language_distribution")
    if not distribution:
        return None
    top = list(distribution.items())[:15]
    figure, axes = plt.subplots(figsize=(7, 3.2))
    axes.bar([language for language, _ in top], [count for _, count in top], color="#4c72b0")
    axes.set_ylabel("pages")
    axes.set_yscale("log")
    shown = sum(count for _, count in top)
    caption = (f"lid.176 top label of {sum(distribution.values())} pages ({len(distribution)} languages; "
               f"the {len(top)} largest shown, {shown} pages). Kept: {', '.join(manifest['config']['languages'])} "
               f"with score >= {manifest['config']['threshold']}.")
    return _png_markdown(figure, "Language distribution", caption)


def perplexity_histogram(manifest: dict[str, Any]) -> str | None:
    stats = manifest["stats"]
    histogram = stats.get("perplexity_histogram")
    if not histogram or not sum(histogram["counts"]):
        return None
    edges, counts = histogram["edges"], histogram["counts"]
    figure, axes = plt.subplots(figsize=(7, 3.2))
    lefts = [max(edge, 1.0) for edge in edges[:-1]]
    widths = [right - left for left, right in zip(lefts, edges[1:])]
    axes.bar(lefts, counts, width=widths, align="edge", color="#8c8c8c")
    axes.set_xscale("log")
    axes.set_xlabel("perplexity (KenLM 5-gram on the build's Wikipedia)")
    axes.set_ylabel("pages")
    for value, label, color in ((stats["head_cutoff"], "head | middle", "#55a868"),
                                (stats["tail_cutoff"], "middle | tail", "#c44e52")):
        axes.axvline(value, color=color, linestyle="--", label=f"{label} {value:.0f}")
    axes.legend()
    if stats.get("cutoffs", "percentiles") == "percentiles":
        origin = (f"Cutoffs are the {stats['head_percentile']:g}th and {stats['tail_percentile']:g}th percentiles of "
                  f"this build's first {stats['reference_pages']} pages")
    else:
        origin = "Cutoffs are fixed in the spec (cc_net's: calibrated once with llama-recipe calibrate-perplexity)"
    caption = f"{sum(counts)} scored pages. {origin}; kept buckets: {', '.join(manifest['config']['keep_buckets'])}."
    return _png_markdown(figure, "Perplexity histogram", caption)


def mixture_targets(manifest: dict[str, Any]) -> str | None:
    sources = manifest["stats"].get("sources")
    if not sources:
        return None
    names = list(sources)
    figure, axes = plt.subplots(figsize=(7, 3.2))
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [sources[n]["target_tokens"] for n in names], width=0.4, label="target")
    axes.bar([p + 0.2 for p in positions], [sources[n]["realized_tokens"] for n in names], width=0.4, label="realized")
    axes.set_xticks(list(positions), names)
    axes.set_yscale("log")
    axes.set_ylabel("tokens")
    axes.legend()
    epochs = ", ".join(f"{n} {sources[n]['epochs']:.2f}" for n in names)
    caption = f"Table 1 token targets against the tokens sampled. Epochs: {epochs}."
    return _png_markdown(figure, "Mixture: target vs realized tokens", caption)


# Which picture a stage's manifest gets (by stage name).
CHARTS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "cc_langid": language_distribution,
    "cc_perplexity": perplexity_histogram,
    "mixture": mixture_targets,
}


def chart_markdown(manifest: dict[str, Any]) -> str | None:
    draw = CHARTS.get(manifest["stage"])
    return draw(manifest) if draw else None
