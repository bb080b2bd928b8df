"""Scheduled corpus builds: the build-corpus flow as a Prefect deployment on a schedule.

`serve_build` (`llama-recipe serve`) registers the deployment on the server and runs it in this
process when its schedule fires (Prefect's `flow.serve`: no work pool, no worker to run). For a
shared server with work pools, `prefect.yaml` at the repository root declares the same deployment
for `prefect deploy` (see README, "Scheduled corpus builds").
"""

from __future__ import annotations

from pathlib import Path

from flows.corpus import build_corpus
from pipeline.storage import absolute

DEFAULT_CRON = "0 3 * * 0"  # Sundays at 03:00: CommonCrawl publishes about one crawl a month


def deployment_name(spec: str) -> str:
    return f"scheduled-{Path(spec).stem}"


def serve_build(spec: str, inputs: str, out: str, cron: str | None = DEFAULT_CRON, interval: float | None = None,
                name: str | None = None, workers: int | None = None) -> None:
    """Serve the build of `spec` on `cron` or every `interval` seconds (blocks; Ctrl-C stops serving
    and pauses the deployment's schedule)."""
    build_corpus.serve(
        name=name or deployment_name(spec),
        cron=None if interval else cron,
        interval=interval,
        parameters={"spec_path": spec, "inputs_dir": absolute(inputs), "build_dir": str(Path(out).resolve()),
                    "workers": workers},
        description=f"Scheduled corpus build of {spec} into {out}",
        tags=["llama-recipe", "corpus-build"],
        # One build at a time: every run writes the same build folder. A run that comes due while
        # another is running waits (Prefect marks it Late) and starts when the first finishes.
        limit=1,
    )
