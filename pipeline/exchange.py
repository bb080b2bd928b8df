"""The file exchange of a stage whose prepare() runs in hash-partitioned passes (issue 13).

No process holds a whole input's hashes: a pass per part writes its records sorted by partition
(a hash % `partitions`) with the offsets of each partition's slice; a pass per partition gathers
that slice from every part and decides; a pass per part gathers back, from every partition's
decisions sorted by ordinal (part << ORDINAL_BITS | row), the rows that are its own. Each pass is a
`Stage.map_parts` call — a job on a cluster, a forked process here — so the files live in the
stage's artifacts folder (a filesystem every worker sees) and are deleted before commit. Decisions
that depend only on each hash make the output the same bytes whatever the partition count.

Used by pipeline/exact_dedup.py (cc_doc_dedup, github_dedup), cc_line_dedup, c4_quality's line
dedup and github_ingest's unique ids.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.documents import as_input, job_input
from pipeline.stage import Stage

PARTITIONS = 64  # the default split; memory per reduce is 1/PARTITIONS of the records (not in the identity)
ORDINAL_BITS = 32  # rows per part < 2**32: a row's ordinal is part << ORDINAL_BITS | row


def ordinal_range(part: int) -> tuple[int, int]:
    """The ordinals of `part`'s rows: [low, high)."""
    return part << ORDINAL_BITS, (part + 1) << ORDINAL_BITS


class ExchangeStage(Stage):
    """A stage whose passes exchange partitioned files (see the module docstring)."""

    parallel_parts = True
    remote_parts = True  # every pass is a job on a cluster: they exchange files in the artifacts folder

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.partitions = PARTITIONS  # a run-time choice like `workers`: the bytes do not depend on it
        self._root: Path | None = None
        self._inputs: list[Path] = []
        self._loaded: dict[tuple, np.ndarray] = {}  # see load()

    def open_exchange(self, inputs: list[Path]) -> None:
        """At the start of prepare(): the inputs the passes read and the folder they exchange in."""
        self._inputs = [as_input(p) for p in inputs]
        self._root = Path(self.artifacts or tempfile.mkdtemp(prefix=f"{self.name}-")) / "exchange"
        self._root.mkdir(parents=True, exist_ok=True)

    def worker_state(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "inputs": [job_input(p) for p in self._inputs]}

    def restore(self, state: dict[str, Any]) -> None:
        self.partitions = state["partitions"]
        self._inputs = [as_input(p) for p in state["inputs"]]
        self._root = Path(self.artifacts) / "exchange"

    def load(self, path: Path, mmap: bool = False) -> np.ndarray:
        """np.load, once per file version in this process: a reduce reads every part's offsets and a
        part's gather every partition's file, P x parts opens that each parse a header otherwise
        (a third of cc_doc_dedup's time on 76 parts). Keyed by size and mtime, so a file rewritten
        by a later run of the stage is read again."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, mmap)
        found = self._loaded.get(key)
        if found is None:
            found = self._loaded[key] = np.load(path, mmap_mode="r" if mmap else None)
        return found

    def _path(self, kind: str, *index: int, suffix: str = ".npy") -> Path:
        return self._root / f"{kind}-{'-'.join(f'{i:05d}' for i in index)}{suffix}"

    def spill(self, part: int, partition: np.ndarray, order: np.ndarray, **arrays: np.ndarray) -> None:
        """Save each array's rows in `order` (which sorts them by `partition`) as `<kind>-<part>`,
        with the offsets of each partition's slice."""
        for kind, values in arrays.items():
            np.save(self._path(kind, part), values[order])
        offsets = np.searchsorted(partition[order], np.arange(self.partitions + 1, dtype=np.uint64))
        np.save(self._path("offsets", part), offsets.astype(np.int64))

    def gather_partition(self, partition: int, kind: str, parts: range | None = None) -> np.ndarray:
        """One partition's slice of `kind` from every part (or from `parts`), concatenated."""
        slices = []
        for part in parts if parts is not None else range(len(self._inputs)):
            low, high = self.load(self._path("offsets", part))[partition : partition + 2]
            slices.append(np.asarray(self.load(self._path(kind, part), mmap=True)[low:high]))
        return np.concatenate(slices)

    def gather_part(self, part: int, kind: str) -> np.ndarray:
        """The rows of every partition's `kind` file (sorted by the ordinal in column 0, or a sorted
        array of ordinals) that belong to `part`, read memory-mapped."""
        low, high = ordinal_range(part)
        found = []
        for partition in range(self.partitions):
            values = self.load(self._path(kind, partition), mmap=True)
            start, end = np.searchsorted(values[:, 0] if values.ndim == 2 else values, [low, high])
            found.append(np.asarray(values[start:end]))
        return np.concatenate(found)

    def final_stats(self) -> dict[str, Any]:
        self._loaded.clear()
        if self._root is not None:  # the exchange files are scaffolding, not output
            shutil.rmtree(self._root, ignore_errors=True)
        return {}
