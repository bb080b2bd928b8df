"""Token shards: the mixture, tokenized, repeated and shuffled, in the flat files the trainer reads.

On-disk format (model/data.py depends on it exactly; bump FORMAT_VERSION on any change):

    <output>/
      manifest.json            written last (pipeline.documents.StageFolder, kind "token_shards")
      train/shard-00000.bin    flat little-endian uint16 token ids (vocab <= 65536, checked);
                               each document copy is BOS, its tokens, EOS; copies concatenated
      train/shard-00000.idx    little-endian int64 start offset of each copy in the .bin,
                               copies + 1 entries (the last one = tokens in the shard)
      val/shard-00000.bin/.idx the same format, for the held-out documents
      val/shard-00000.src      (version 2) uint8 per document of a val shard: its source, as an
                               index into the manifest's "sources" list (per-source val loss)
      ...                      more shards of each split, numbered from 00000

Shard i of a split holds the copies whose shuffle key lies in the i-th of n equal ranges of the
64-bit keys, n = ceil(split tokens / shard_tokens): about `shard_tokens` tokens each (a copy is
never split across shards; an empty range writes no shard, so numbers may skip). The only copy
that does not end with EOS is a source's cut copy (the mixture's `partial_tokens`: a document's
first tokens, BOS included, that complete the source's exact token target); at most one per source.

Training stream: the mixture plans, per document, `repeats` whole copies and at most one cut copy
(pipeline/mixture.py). Every copy gets a shuffle key from (seed, source, id, copy number), and the
stream is the copies in key order, so sources and the copies of one document interleave; val
documents are written once, in their own key order. Packing into training sequences is done by the
reader (model/data.py TokenStream): sequence i of context length L is tokens[i*L : i*L + L + 1] of
the concatenated split, the BOS/EOS ids marking where documents meet inside a sequence (LLaMA and
GPT-3 pack without masking across documents). The same shards thus serve any context length.

Nothing is tokenized here: the mixture kept every document's tokens (artifacts/tokens). Two passes
of jobs (forked processes, or a Ray/Dask cluster): per mixture part, its copies with their keys,
sorted and spilled; per few key ranges, the copies gathered from every part's spill and their
tokens copied into the shard. No process holds the list of all copies, and the shards are the same
bytes whatever the worker count or executor. Tokens per source and their shares are counted over
the train split, the stream the mixture planned: they equal the mixture's targets to the token,
which the manifest reports side by side.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator

from pipeline.documents import SOURCES, StageError, StageFolder, code_version_of, read_manifest, sha256_file
from pipeline.mixture import (
    PARTIAL_COLUMN,
    REPEATS_COLUMN,
    SPLIT_COLUMN,
    TOKEN_OFFSET_COLUMN,
    TOKENS_COLUMN,
    TOKENS_FOLDER,
    read_plan_columns,
)
from pipeline.tokenizer import TOKEN_DTYPE, load_tokenizer, pack_documents, tokenizer_model_path  # noqa: F401 (pack_documents: re-exported)

STAGE_NAME = "token_shards"
FORMAT = "llama-recipe-tokens"
FORMAT_VERSION = 2  # 2: val shards carry a .src file (each document's source)
SOURCE_DTYPE = np.dtype("u1")
OFFSET_DTYPE = np.dtype("<i8")
SPLITS = ("train", "val")
CODE_VERSION = code_version_of(__file__)


class TokenShardsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_tokens: int = 100_000_000  # ~200 MB of uint16 per shard
    seed: int = 0
    # Not used since the mixture tokenizes (kept so that existing specs load; the flow's `workers`
    # decides the processes that write shards).
    num_workers: int = 2

    @field_validator("shard_tokens", "num_workers")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value


SHARDS_PER_JOB = 4  # shards one job writes (a run-time grouping: the bytes do not depend on it)
_SPLIT_SALT = {"train": 0x9E3779B97F4A7C15, "val": 0xD1B54A32D192ED03}


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64: a copy's key from its document's hash and
    copy number, uniform and vectorised."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def copy_keys(doc_hashes: np.ndarray, copy: np.ndarray, split: str) -> np.ndarray:
    """The shuffle key of each copy: the stream is the copies sorted by it."""
    with np.errstate(over="ignore"):
        return _mix64(doc_hashes ^ _mix64((copy.astype(np.uint64) + np.uint64(1)) * np.uint64(_SPLIT_SALT[split])))


def _doc_hash(seed: int, source: str, doc_id: str) -> int:
    digest = hashlib.blake2b(f"copy\x00{seed}\x00{source}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def shard_bounds(shards: int) -> np.ndarray:
    """The first key of shards 1..shards-1: shard i holds the copies with keys in
    [i * 2**64 / shards, (i + 1) * 2**64 / shards)."""
    return np.asarray([-(-(i << 64) // shards) for i in range(1, shards)], dtype=np.uint64)


@dataclass(frozen=True)
class _SpillJob:
    index: int  # the mixture part
    part: str
    tokens: str  # its token file (mixture artifacts)
    work: str
    seed: int
    shards: dict[str, int]  # shards per split

    def path(self, split: str, kind: str) -> Path:
        return Path(self.work) / "scratch" / f"{split}-{kind}-{self.index:05d}.npy"


def _spill_copies(job: _SpillJob) -> dict[str, Any]:
    """Pass 1 on one mixture part: its copies (whole and cut, train and val) with their keys,
    sorted by key, saved for the shard writers; returns the tokens per source and split."""
    from pipeline.executor import worker_id

    table = pq.read_table(job.part, columns=["id", "source", "text", TOKENS_COLUMN, REPEATS_COLUMN, PARTIAL_COLUMN,
                                             SPLIT_COLUMN, TOKEN_OFFSET_COLUMN])
    tokens = table.column(TOKENS_COLUMN).to_numpy()
    repeats, partial = table.column(REPEATS_COLUMN).to_numpy(), table.column(PARTIAL_COLUMN).to_numpy()
    offsets = table.column(TOKEN_OFFSET_COLUMN).to_numpy()
    is_val = pc.equal(table.column(SPLIT_COLUMN), "val").to_numpy(zero_copy_only=False)
    names = table.column("source").to_pylist()
    source_index = np.asarray([SOURCES.index(n) for n in names], dtype=np.int16)
    hashes = np.asarray([_doc_hash(job.seed, n, i) for n, i in zip(names, table.column("id").to_pylist())], dtype=np.uint64)
    available = os.path.getsize(job.tokens) // TOKEN_DTYPE.itemsize
    if len(offsets) and int((offsets + tokens).max()) > available:
        raise StageError(f"{job.tokens}: shorter than the tokens its mixture part counts")
    result: dict[str, Any] = {"worker": worker_id(), "docs": len(tokens),
                              "bytes": int(pc.sum(pc.binary_length(pc.cast(table.column("text"), pa.binary()))).as_py() or 0)}
    for split in SPLITS:
        rows = np.flatnonzero(is_val if split == "val" else ~is_val)
        count = np.ones(len(rows), dtype=np.int64) if split == "val" else repeats[rows] + (partial[rows] > 0)
        row_of = np.repeat(rows, count)
        copy = np.arange(len(row_of)) - np.repeat(np.cumsum(count) - count, count)  # 0.. per document
        take = tokens[row_of].copy()
        if split == "train":
            cut = copy == repeats[row_of]  # the copy after the whole ones is the cut copy
            take[cut] = partial[row_of[cut]]
            result["cut_copies"] = int(cut.sum())
        keys = copy_keys(hashes[row_of], copy, split)
        order = np.lexsort((copy, row_of, keys))  # equal keys (astronomically rare): by row, copy
        np.save(job.path(split, "keys"), keys[order])
        np.save(job.path(split, "copies"), np.stack([offsets[row_of], take, np.full(len(row_of), job.index),
                                                     source_index[row_of]], axis=1)[order])
        result[split] = {
            "tokens": np.bincount(source_index[row_of], weights=take, minlength=len(SOURCES)).astype(np.int64),
            "copies": len(row_of),
            "unique_docs": len(rows),
        }
    return result


@dataclass(frozen=True)
class _ShardJob:
    split: str
    shards: tuple[int, ...]  # the key ranges this job writes
    count: int  # shards in the split
    parts: tuple[_SpillJob, ...]
    work: str


def _write_shards(job: _ShardJob) -> tuple[list[dict[str, Any]], str]:
    """Pass 2: each shard of `job.shards`: its copies gathered from every part's spill, in key
    order, their tokens copied out of the mixture's token files; .bin, .idx and their checksums."""
    from pipeline.executor import worker_id

    bounds = [0] + [int(b) for b in shard_bounds(job.count)] + [1 << 64]
    token_files: dict[int, np.memmap] = {}
    written = []
    for shard in job.shards:
        low, high = bounds[shard], bounds[shard + 1]
        keys, copies = [], []
        for part in job.parts:
            part_keys = np.load(part.path(job.split, "keys"), mmap_mode="r")
            start = int(np.searchsorted(part_keys, np.uint64(low), side="left"))
            stop = len(part_keys) if high >= 1 << 64 else int(np.searchsorted(part_keys, np.uint64(high), side="left"))
            if stop > start:
                keys.append(np.asarray(part_keys[start:stop]))
                copies.append(np.asarray(np.load(part.path(job.split, "copies"), mmap_mode="r")[start:stop]))
        if not keys:
            continue  # an empty key range writes no shard
        keys, copies = np.concatenate(keys), np.concatenate(copies)
        # Parts hold their copies in key order; across parts, equal keys go by part (stable sort).
        copies = copies[np.argsort(keys, kind="stable")]
        name = f"{job.split}/shard-{shard:05d}"
        (Path(job.work) / job.split).mkdir(exist_ok=True)
        with open(Path(job.work) / f"{name}.bin", "wb") as out:
            for offset, take, part, _ in copies.tolist():
                if part not in token_files:
                    token_files[part] = np.memmap(job.parts[part].tokens, dtype=TOKEN_DTYPE, mode="r")
                out.write(token_files[part][offset : offset + take].tobytes())
        ends = np.cumsum(copies[:, 1])
        np.concatenate([[0], ends]).astype(OFFSET_DTYPE).tofile(Path(job.work) / f"{name}.idx")
        entry = {
            "split": job.split,
            "path": f"{name}.bin",
            "idx_path": f"{name}.idx",
            "tokens": int(ends[-1]),
            "docs": len(copies),
            "sha256": sha256_file(Path(job.work) / f"{name}.bin"),
            "idx_sha256": sha256_file(Path(job.work) / f"{name}.idx"),
        }
        if job.split == "val":  # each held-out document's source: the trainer's per-source val loss
            copies[:, 3].astype(SOURCE_DTYPE).tofile(Path(job.work) / f"{name}.src")
            entry |= {"src_path": f"{name}.src", "src_sha256": sha256_file(Path(job.work) / f"{name}.src")}
        written.append(entry)
    return written, worker_id()


def write_token_shards(
    mixture_dir: Path,
    tokenizer_model: Path,
    output: Path,
    config: TokenShardsConfig | None = None,
    reuse: bool = True,
    workers: int = 1,
    executor: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the mixture's copies as train/val token shards at `output`. Returns the manifest.
    With `reuse`, shards already written from the same mixture, tokenizer and config are kept.
    `tokenizer_model` is a tokenizer stage folder or a tokenizer.model file; it must be the one
    the mixture tokenized with. The jobs run on `executor` (a cluster) or `workers` processes here;
    the shards' bytes depend on neither. `progress(name, done, total)` is called as jobs finish."""
    from pipeline.executor import LocalExecutor, worker_id

    config = config or TokenShardsConfig()
    mixture_dir, output = Path(mixture_dir), Path(output)
    parts = read_plan_columns(mixture_dir)
    mixture_stats = read_manifest(mixture_dir)["stats"]
    model_path = tokenizer_model_path(tokenizer_model)
    model_sha = sha256_file(model_path)
    if mixture_stats.get("tokenizer_sha256") != model_sha:
        raise StageError(f"{mixture_dir}: the mixture counted tokens with another tokenizer than {model_path}")
    sp = load_tokenizer(model_path)
    vocab_size = sp.get_piece_size()
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise StageError(f"{model_path}: vocab size {vocab_size} does not fit the uint16 token format")
    bos, eos = sp.bos_id(), sp.eos_id()
    if bos < 0 or eos < 0:
        raise StageError(f"{model_path}: the tokenizer has no BOS/EOS piece (bos_id {bos}, eos_id {eos})")
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = StageFolder(
        output,
        STAGE_NAME,
        config.model_dump(mode="json"),
        inputs=[mixture_dir / "manifest.json", model_path],
        code_version=CODE_VERSION,
        kind="token_shards",
    )
    if reuse and (manifest := folder.current()):
        return manifest
    planned = mixture_stats.get("sources", {})
    split_total = {"train": mixture_stats["realized_tokens"], "val": sum(s.get("val_tokens", 0) for s in planned.values())}
    counts = {split: max(1, -(-split_total[split] // config.shard_tokens)) for split in SPLITS}
    runner = executor if executor is not None else LocalExecutor(workers, label=STAGE_NAME)
    here = worker_id()
    with folder:
        (folder.tmp / "scratch").mkdir()
        # Pass 1: every mixture part's copies, keyed and sorted, spilled for the shard writers.
        spills = tuple(_SpillJob(index, str(part), str(mixture_dir / "artifacts" / TOKENS_FOLDER / part.name.replace(".parquet", ".bin")),
                                 str(folder.tmp), config.seed, counts) for index, part in enumerate(parts))
        started = time.perf_counter()
        jobs = [_ShardJob(split, tuple(range(first, min(first + SHARDS_PER_JOB, counts[split]))), counts[split], spills, str(folder.tmp))
                for split in SPLITS for first in range(0, counts[split], SHARDS_PER_JOB)]
        total = len(spills) + len(jobs)
        spilled = []
        for result in runner.map(_spill_copies, list(spills)):
            spilled.append(result)
            if progress:
                progress(STAGE_NAME, len(spilled), total)
        folder.timings["spill_wall_time_s"] = time.perf_counter() - started
        if not spilled:
            raise StageError(f"{mixture_dir}: the mixture has no documents to tokenize")
        # Pass 2: the shards, a few key ranges per job.
        started = time.perf_counter()
        shards: list[dict[str, Any]] = []
        for done, (written, who) in enumerate(runner.map(_write_shards, jobs), len(spilled) + 1):
            shards += written
            if progress:
                progress(STAGE_NAME, done, total)
            if who != here:
                folder.part_workers[who] = folder.part_workers.get(who, 0) + 1
        folder.timings["write_wall_time_s"] = time.perf_counter() - started
        shutil.rmtree(folder.tmp / "scratch")
        for result in spilled:
            folder.counts.docs_in += result["docs"]
            folder.counts.docs_kept += result["docs"]
            folder.counts.bytes_out += result["bytes"]
            folder.counts.bytes_kept += result["bytes"]
            if result["worker"] != here:
                folder.pass_workers[result["worker"]] = folder.pass_workers.get(result["worker"], 0) + 1
        emitted = {split: sum(r[split]["tokens"] for r in spilled) for split in SPLITS}

        # Ties in share (Table 1: github, wikipedia, books at 4.5%) by name: a set's order changes
        # with PYTHONHASHSEED, and the manifest must be the same bytes on every run.
        present = [s for s in SOURCES if emitted["train"][SOURCES.index(s)] or emitted["val"][SOURCES.index(s)]]
        names = sorted(set(present) | set(planned), key=lambda s: (-planned.get(s, {}).get("target_share", 0), s))
        train_tokens = {s: int(emitted["train"][SOURCES.index(s)]) for s in names}
        val_tokens = {s: int(emitted["val"][SOURCES.index(s)]) for s in names}
        total_train = sum(train_tokens.values())
        available = {s: planned.get(s, {}).get("available_tokens", 0) for s in names}
        folder.stats.update(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "dtype": "uint16",
                "byte_order": "little",
                "vocab_size": vocab_size,
                "bos_id": bos,
                "eos_id": eos,
                "tokenizer_sha256": model_sha,
                "sources": list(SOURCES),  # what a .src file's numbers name
                "shards": shards,
                "total_tokens": total_train + sum(val_tokens.values()),
                "split_tokens": {"train": total_train, "val": sum(val_tokens.values())},
                "split_docs": {split: sum(r[split]["copies"] for r in spilled) for split in SPLITS},
                "unique_docs": {split: sum(r[split]["unique_docs"] for r in spilled) for split in SPLITS},
                "cut_copies": sum(r["cut_copies"] for r in spilled),
                # Per source, over the train split (the stream the mixture planned).
                "tokens_per_source": train_tokens,
                "target_tokens": {s: planned.get(s, {}).get("target_tokens", 0) for s in names},
                "target_share": {s: planned.get(s, {}).get("target_share", 0.0) for s in names},
                "realized_share": {s: round(n / total_train, 8) if total_train else 0.0 for s, n in train_tokens.items()},
                "epochs": {s: round(train_tokens[s] / available[s], 6) if available[s] else 0.0 for s in names},
                "table1_epochs": {s: planned.get(s, {}).get("table1_epochs") for s in names},
                "val_tokens_per_source": val_tokens,
                "mixture_warnings": mixture_stats.get("warnings", []),
            }
        )
    return read_manifest(output)


# ---------------------------------------------------------------------------------------------
# Reader (numpy only; the trainer's reader with its resumable position is model/data.py)


class TokenView:
    """The tokens of several shard memmaps seen as one sequence; slicing copies only the slice."""

    def __init__(self, shards: list[np.memmap]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("TokenView supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop and shard < len(self.shards):
            local_start = start - self.starts[shard]
            local_stop = min(stop, self.starts[shard + 1]) - self.starts[shard]
            pieces.append(np.asarray(self.shards[shard][local_start:local_stop]))
            start = int(self.starts[shard] + local_stop)
            shard += 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=TOKEN_DTYPE)


class TokenShards:
    """Read one split of a token_shards folder: `tokens` (all shards as one view), document
    offsets, and `sample_batch` for next-token training windows."""

    def __init__(self, path: Path | str, split: str = "train"):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        stats = manifest.get("stats", {})
        if stats.get("format") != FORMAT or stats.get("version") not in (1, FORMAT_VERSION):
            raise StageError(
                f"{self.path}: not a {FORMAT} v1-v{FORMAT_VERSION} folder "
                f"(format {stats.get('format')!r}, version {stats.get('version')!r})"
            )
        self.split = split
        self.vocab_size: int = stats["vocab_size"]
        self.bos_id: int = stats["bos_id"]
        self.eos_id: int = stats["eos_id"]
        self.manifest = manifest
        entries = [s for s in stats["shards"] if s["split"] == split]
        if not entries:
            raise StageError(f"{self.path}: no {split!r} tokens (splits present: {sorted({s['split'] for s in stats['shards']})})")
        self.shard_entries = entries
        self.shards = [np.memmap(self.path / e["path"], dtype=TOKEN_DTYPE, mode="r") for e in entries]
        for entry, shard in zip(entries, self.shards):
            if len(shard) != entry["tokens"]:
                raise StageError(f"{self.path / entry['path']}: {len(shard)} tokens, manifest says {entry['tokens']}")
        self.tokens = TokenView(self.shards)
        self.num_tokens = len(self.tokens)

    def document_offsets(self) -> np.ndarray:
        """Start offsets of every document in `tokens` (docs + 1 entries, last = num_tokens)."""
        offsets, base = [np.zeros(1, dtype=np.int64)], 0
        for entry in self.shard_entries:
            idx = np.fromfile(self.path / entry["idx_path"], dtype=OFFSET_DTYPE)
            offsets.append(idx[1:] + base)
            base += int(idx[-1])
        return np.concatenate(offsets)

    def rank_range(self, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
        """The token range rank `rank` of `world_size` samples from: disjoint across ranks."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return rank * self.num_tokens // world_size, (rank + 1) * self.num_tokens // world_size

    def sample_batch(
        self,
        batch_size: int,
        seq_len: int,
        rng: np.random.Generator | int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` random contiguous windows of `seq_len + 1` tokens from this rank's range:
        x = window[:-1], y = window[1:], both int64 of shape (batch_size, seq_len)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        low, high = self.rank_range(rank, world_size)
        if high - low < seq_len + 1:
            raise ValueError(
                f"rank {rank}/{world_size} owns {high - low} {self.split} tokens, fewer than seq_len + 1 = {seq_len + 1}"
            )
        starts = rng.integers(low, high - seq_len, size=batch_size)  # last window ends at `high`
        windows = np.stack([self.tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        return windows[:, :-1], windows[:, 1:]



def write_reference_tokens(tokens_dir: Path, output: Path, sources: list[str]) -> dict[str, Any]:
    """A fixed evaluation set cut out of a token shards folder: the held-out (val) documents of
    `sources`, token for token, as a folder of this format with a val split only (the trainer's
    --eval-ref). An ablation evaluates every variant on the base build's held-out Wikipedia, say:
    the same documents and tokenizer whatever each variant's filters kept, and held out of every
    variant's training (the mixture's val split is a hash of seed and document id)."""
    tokens_dir, output = Path(tokens_dir), Path(output)
    manifest = read_manifest(tokens_dir)
    stats = manifest["stats"]
    if stats.get("version", 1) < 2:
        raise StageError(f"{tokens_dir}: format version {stats.get('version')} has no per-document sources; rebuild its token shards")
    unknown = sorted(set(sources) - set(stats["sources"]))
    if unknown:
        raise StageError(f"{tokens_dir}: unknown source(s) {', '.join(unknown)}")
    codes = [stats["sources"].index(s) for s in sources]
    folder = StageFolder(output, "reference_tokens", {"sources": sorted(sources)}, inputs=[tokens_dir / "manifest.json"],
                         code_version=CODE_VERSION, kind="token_shards")
    if (existing := folder.current()) is not None:
        return existing
    with folder:
        pieces, lengths = [], []
        for entry in (e for e in stats["shards"] if e["split"] == "val"):
            tokens = np.memmap(tokens_dir / entry["path"], dtype=TOKEN_DTYPE, mode="r")
            offsets = np.fromfile(tokens_dir / entry["idx_path"], dtype=OFFSET_DTYPE)
            source_of = np.fromfile(tokens_dir / entry["src_path"], dtype=SOURCE_DTYPE)
            for doc in np.flatnonzero(np.isin(source_of, codes)):
                pieces.append((np.asarray(tokens[offsets[doc]:offsets[doc + 1]]), source_of[doc]))
                lengths.append(int(offsets[doc + 1] - offsets[doc]))
        if not pieces:
            raise StageError(f"{tokens_dir}: no held-out documents of {', '.join(sources)}")
        (folder.tmp / "val").mkdir()
        name = "val/shard-00000"
        np.concatenate([p for p, _ in pieces]).astype(TOKEN_DTYPE).tofile(folder.tmp / f"{name}.bin")
        np.concatenate([[0], np.cumsum(lengths)]).astype(OFFSET_DTYPE).tofile(folder.tmp / f"{name}.idx")
        np.array([c for _, c in pieces], dtype=SOURCE_DTYPE).tofile(folder.tmp / f"{name}.src")
        folder.counts.docs_in = folder.counts.docs_kept = len(pieces)
        folder.stats.update({key: stats[key] for key in ("format", "version", "dtype", "byte_order", "vocab_size", "bos_id",
                                                         "eos_id", "tokenizer_sha256", "sources") if key in stats})
        folder.stats["shards"] = [{
            "split": "val", "path": f"{name}.bin", "idx_path": f"{name}.idx", "src_path": f"{name}.src",
            "tokens": int(sum(lengths)), "docs": len(pieces),
            "sha256": sha256_file(folder.tmp / f"{name}.bin"), "idx_sha256": sha256_file(folder.tmp / f"{name}.idx"),
            "src_sha256": sha256_file(folder.tmp / f"{name}.src"),
        }]
        folder.stats["reference_of"] = {"tokens": str(tokens_dir), "sources": sorted(sources)}
    return read_manifest(output)
