"""The fixed WET corpus of the CommonCrawl benchmark (issue 3 item 7): at least 100 MB of WET.

It is the sample generator's CommonCrawl part (pipeline.samples.write_cc: real prose from
pipeline.samples_prose wrapped in site navigation, shared boilerplate, foreign pages, duplicates,
spam) written once per seed 1000, 1001, ... at scale 1.0, each seed in its own folder, until the
uncompressed WET bytes reach the target. Each seed gives new URLs, record ids and page mixes; the
prose pool is finite, so paragraphs recur across seeds, as boilerplate and quotes recur across a
real crawl. Same target on one machine -> the same bytes (write_cc is deterministic per seed). The
corpus is cached under runs/bench/cc_corpus/ with a manifest naming the generator version, and
reused while that version and the target are unchanged.

Beside the WET files, `wikipedia/` holds one generated Wikipedia dump whose articles cite (in <ref>
tags) the "cited" pages of every seed: the reference the perplexity and wikiref stages train on.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.samples import SampleContext, generator_version, write_cc, write_wikipedia  # noqa: E402
from pipeline.samples_prose import EnglishProse, ForeignProse  # noqa: E402

FIRST_SEED = 1000
MANIFEST = "CORPUS.json"
LAYOUT = 2  # 2: with the Wikipedia reference dump


def _context(out: Path, seed: int) -> SampleContext:
    return SampleContext(out=out, seed=seed, scale=1.0, english=EnglishProse(seed), foreign=ForeignProse(seed))


def _write_seed(args: tuple[Path, int]) -> tuple[int, list[str], int, list[str]]:
    root, seed = args
    written = write_cc(_context(root / f"seed-{seed}", seed))
    files = [str(Path(f"seed-{seed}") / f) for f in written["files"]]
    raw = sum(len(gzip.decompress((root / f).read_bytes())) for f in files)
    return seed, files, raw, written["planted"]["cited_urls"]


def build_corpus(root: Path, target_mb: float = 100.0, workers: int = 2) -> dict:
    """Write (or reuse) the corpus under `root`; return its manifest: files, seeds, wet_bytes."""
    root = Path(root)
    manifest_path = root / MANIFEST
    version = generator_version()
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("generator"), manifest.get("target_mb"), manifest.get("layout")) == (version, target_mb, LAYOUT):
            return manifest
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    files: list[str] = []
    seeds: list[int] = []
    cited: list[str] = []
    wet_bytes = 0
    next_seed = FIRST_SEED
    with ProcessPoolExecutor(workers) as pool:
        while wet_bytes < target_mb * 1e6:
            # ~5.5 MB of WET per seed: ask for just enough seeds, a batch at a time.
            batch = max(1, min(workers * 4, int((target_mb * 1e6 - wet_bytes) / 5.4e6) + 1))
            for seed, written, raw, cited_urls in pool.map(_write_seed, [(root, s) for s in range(next_seed, next_seed + batch)]):
                files += written
                seeds.append(seed)
                wet_bytes += raw
                cited += cited_urls
            next_seed += batch
    wikipedia = write_wikipedia(_context(root, FIRST_SEED), cited_urls=cited)["files"]
    manifest = {"generator": version, "target_mb": target_mb, "layout": LAYOUT, "seeds": seeds, "files": files,
                "wet_bytes": wet_bytes, "wikipedia": wikipedia, "cited_urls": len(cited)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":
    m = build_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/bench/cc_corpus"))
    print(f"{len(m['files'])} files, {m['wet_bytes'] / 1e6:.1f} MB of WET")
