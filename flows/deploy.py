"""Scheduled corpus builds: the build-corpus flow as a Prefect deployment with a cron schedule.

`serve_build` (`llama-recipe serve`) registers the deployment on the local server and runs it in
this process when its schedule fires (Prefect's `flow.serve`: no work pool, no worker to run).
For a shared server with work pools, `prefect.yaml` at the repository root declares the same
deployment for `prefect deploy` (see README, "Scheduled builds").
"""

from __future__ import annotations

from pathlib import Path

from flows.corpus import build_corpus
from pipeline.storage import absolute

DEFAULT_CRON = "0 3 * * 0"  # Sundays at 03:00: CommonCrawl publishes about one crawl a month


def deployment_name(spec: str) -> str:
    return f"scheduled-{Path(spec).stem}"


def serve_build(spec: str, inputs: str, out: str, cron: str = DEFAULT_CRON, name: str | None = None,
                workers: int | None = None) -> None:
    """Serve the build of `spec` on `cron` (blocks; Ctrl-C stops serving, the deployment stays)."""
    build_corpus.serve(
        name=name or deployment_name(spec),
        cron=cron,
        parameters={"spec_path": spec, "inputs_dir": absolute(inputs), "build_dir": str(Path(out).resolve()),
                    "workers": workers},
        description=f"Scheduled corpus build of {spec} into {out}",
        tags=["llama-recipe", "corpus-build"],
    )
