"""The SentencePiece BPE tokenizer, trained on a sample of the sources drawn at the mixture's shares.

LLaMA (arXiv 2302.13971, Section 2.1) tokenizes with BPE (Sennrich et al.) as implemented in
SentencePiece, splits all numbers into individual digits and falls back to bytes for unknown
UTF-8 characters; the vocabulary has 32k tokens. The released tokenizer.model also shows the rest
of its trainer spec, copied here: identity normalization (no NFKC), whitespace kept as is
(remove_extra_whitespaces false, whitespace-only pieces allowed), unk/bos/eos = 0/1/2, no pad.

One setting departs from it: add_dummy_prefix is off. LLaMA's model prepends "▁" to every input;
Hugging Face's LlamaTokenizer (transformers 5, a `tokenizers` Metaspace) prepends it only when the
text does not already start with a space, so the two give different ids for " text" or "  code".
Without the dummy prefix both tokenize every string identically (tests/test_tokenizer.py checks
it on CJK, emoji, control characters and random slices of prose), and the artifacts folder
carries the tokenizer_config.json that makes `LlamaTokenizer.from_pretrained(folder)` load it so.

The tokenizer is trained before the mixture is sampled, because the mixture counts real tokens
with it. Its sample therefore comes from the sources' final stage folders directly, with the
mixture's shares: source s contributes share_s of the sample's bytes. The sample is the largest one
of at most `train_sample_bytes` in which no document appears twice (the source that is scarcest
relative to its share is taken whole); which documents enter depends only on (seed, document id),
so the sample is deterministic and independent of reading order.

Output: a stage folder (kind "tokenizer") with artifacts/tokenizer.model, tokenizer.vocab and
tokenizer_config.json.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import sentencepiece as spm
from pydantic import BaseModel, ConfigDict

from pipeline.documents import (
    StageError,
    StageFolder,
    code_version_of,
    is_complete,
    kept_parts,
    read_documents,
    read_manifest,
    sha256_file,
)

log = logging.getLogger(__name__)

STAGE_NAME = "tokenizer"
MODEL_FILE = "tokenizer.model"
HF_CONFIG_FILE = "tokenizer_config.json"
CODE_VERSION = code_version_of(__file__)
TOKEN_DTYPE = np.dtype("<u2")  # token ids on disk: little-endian uint16 (vocab <= 65536)


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = 32000  # paper, Section 2.1
    model_type: Literal["bpe", "unigram"] = "bpe"  # paper: BPE via SentencePiece
    split_digits: bool = True  # paper: numbers split into individual digits
    byte_fallback: bool = True  # paper: unknown UTF-8 characters decomposed into bytes
    normalization_rule_name: str = "identity"  # LLaMA tokenizer.model trainer spec
    # LLaMA's model has it on; off so that HF's LlamaTokenizer gives the same ids (module docstring).
    add_dummy_prefix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1  # LLaMA has no pad piece
    character_coverage: float = 0.99995  # LLaMA tokenizer.model trainer spec
    # Caps on what SentencePiece loads (it holds all sentences in memory); lines longer than
    # max_sentence_length bytes are cut into pieces rather than skipped by the trainer.
    input_sentence_size: int = 20_000_000
    max_sentence_length: int = 16384
    train_sample_bytes: int = 500_000_000  # largest training sample drawn from the sources
    num_threads: int = 2
    seed: int = 0


def _unit_interval(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document id), independent of reading order."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _sentences(text: str, max_bytes: int) -> Iterator[str]:
    """SentencePiece trains on lines; a line over max_bytes is cut (4 bytes per char at most)."""
    step = max(1, max_bytes // 4)
    for line in text.split("\n"):
        if not line.strip():
            continue
        if len(line.encode("utf-8")) <= max_bytes:
            yield line
        else:
            for start in range(0, len(line), step):
                yield line[start : start + step]


@dataclass(frozen=True)
class _SampleJob:
    """Draw one part's share of the training sample into its own file."""

    source: str
    part: str
    out: str
    rate: float
    seed: int
    max_sentence_length: int


def _sample_part(job: _SampleJob) -> tuple[int, int, int, int]:
    """(documents seen, sampled, lines, bytes) of one part's sample file."""
    docs_seen = docs_sampled = lines = size = 0
    with open(job.out, "w", encoding="utf-8") as sample:
        for doc in read_documents(Path(job.part), columns=["id", "text", "source"]):
            docs_seen += 1
            if _unit_interval(job.seed, doc.id) >= job.rate:
                continue
            docs_sampled += 1
            for sentence in _sentences(doc.text, job.max_sentence_length):
                sample.write(sentence + "\n")
                lines += 1
                size += len(sentence.encode("utf-8"))
    return docs_seen, docs_sampled, lines, size


def draw_training_sample(
    source_dirs: dict[str, Path], shares: dict[str, float], sample_path: Path, config: TokenizerConfig,
    workers: int = 1, executor: Any = None,
) -> dict[str, Any]:
    """Write the training sample (one sentence per line) drawn from the sources' final stage
    folders at `shares`; return its statistics. The sources' sizes come from their manifests
    (bytes_kept); each part's sample is drawn by a job (`executor`: a cluster, else `workers`
    processes here) into a file beside `sample_path` (a folder the workers see), and the files are
    joined in part order: the same bytes whoever drew them."""
    from pipeline.executor import LocalExecutor

    missing = sorted(set(shares) - set(source_dirs))
    if missing:
        raise StageError(f"tokenizer: no source folder for {', '.join(missing)}")
    parts = {name: kept_parts(source_dirs[name]) for name in shares}
    source_bytes = {name: int(read_manifest(source_dirs[name])["bytes_kept"]) for name in shares}
    empty = sorted(name for name, size in source_bytes.items() if size == 0)
    if empty:
        raise StageError(f"tokenizer: source(s) {', '.join(empty)} have no text to train on")
    total_share = sum(shares.values())
    weights = {name: share / total_share for name, share in shares.items()}
    # The largest sample at these shares in which no document is taken twice.
    sample_target = min(config.train_sample_bytes, min(source_bytes[s] / w for s, w in weights.items() if w > 0))
    rates = {name: min(1.0, weights[name] * sample_target / source_bytes[name]) for name in shares}
    scratch = sample_path.parent / f"{sample_path.name}.parts"
    scratch.mkdir(parents=True, exist_ok=True)
    jobs = [_SampleJob(name, str(part), "", rates[name], config.seed, config.max_sentence_length)
            for name in shares for part in parts[name]]
    jobs = [replace(job, out=str(scratch / f"{index:06d}.txt")) for index, job in enumerate(jobs)]
    runner = executor if executor is not None else LocalExecutor(workers, label=STAGE_NAME)
    docs_seen = docs_sampled = lines = 0
    bytes_by_source: Counter[str] = Counter()
    try:
        with open(sample_path, "wb") as sample:
            for job, (seen, sampled, part_lines, size) in zip(jobs, runner.map(_sample_part, jobs)):
                docs_seen, docs_sampled, lines = docs_seen + seen, docs_sampled + sampled, lines + part_lines
                bytes_by_source[job.source] += size
                with open(job.out, "rb") as part_sample:
                    shutil.copyfileobj(part_sample, sample)
                Path(job.out).unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sample_bytes = sum(bytes_by_source.values())
    if sample_bytes == 0:
        raise StageError("tokenizer: the training sample came out empty")
    return {
        "source_bytes": source_bytes,
        "sample_rate_by_source": {s: round(r, 8) for s, r in rates.items()},
        "docs_seen": docs_seen,
        "docs_sampled": docs_sampled,
        "sample_lines": lines,
        "sample_bytes": sample_bytes,
        "sample_share_by_source": {s: round(bytes_by_source[s] / sample_bytes, 6) for s in shares},
        "target_share_by_source": {s: round(w, 6) for s, w in weights.items()},
    }


def hf_tokenizer_config(processor: spm.SentencePieceProcessor, config: TokenizerConfig) -> dict[str, Any]:
    """tokenizer_config.json for Hugging Face transformers: LlamaTokenizer with this model's
    special pieces and prefix-space setting, BOS added on encode as LLaMA does."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_prefix_space": config.add_dummy_prefix,
        "legacy": False,
        "unk_token": processor.id_to_piece(processor.unk_id()),
        "bos_token": processor.id_to_piece(processor.bos_id()),
        "eos_token": processor.id_to_piece(processor.eos_id()),
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # "<s>" inside a document is text to SentencePiece (and to pretraining); HF would otherwise
        # turn it into the BOS id.
        "split_special_tokens": True,
    }


def train_tokenizer(
    source_dirs: dict[str, Path],
    output: Path,
    config: TokenizerConfig | None = None,
    shares: dict[str, float] | None = None,
    reuse: bool = True,
    workers: int = 1,
    executor: Any = None,
) -> dict[str, Any]:
    """Train the SentencePiece model on a sample of the sources' final stage folders drawn at
    `shares` (default: equal); write the tokenizer stage folder at `output`. With `reuse`, a
    folder already trained on the same inputs with the same config is kept. The sample is drawn by
    jobs over the parts (`executor`, else `workers` processes here); SentencePiece then trains in
    this process (config.num_threads threads), on at most input_sentence_size sentences."""
    config = config or TokenizerConfig()
    output = Path(output)
    source_dirs = {name: Path(path) for name, path in source_dirs.items()}
    shares = shares or {name: 1.0 for name in source_dirs}
    for name, path in source_dirs.items():
        if not is_complete(path):
            raise StageError(f"{path}: incomplete stage folder for source {name} (no manifest.json)")
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = StageFolder(
        output,
        STAGE_NAME,
        config.model_dump(mode="json") | {"shares": shares},
        inputs=[source_dirs[name] / "manifest.json" for name in shares],
        code_version=CODE_VERSION,
        kind="tokenizer",
    )
    if reuse and (manifest := folder.current()):
        return manifest
    with folder, tempfile.TemporaryDirectory(prefix="tokenizer-sample-", dir=output.parent) as scratch:
        sample_path = Path(scratch) / "sample.txt"
        sample_stats = draw_training_sample(source_dirs, shares, sample_path, config, workers, executor)
        model_prefix = folder.artifacts_dir / Path(MODEL_FILE).stem
        started = time.time()
        spm.set_random_generator_seed(config.seed)
        spm.SentencePieceTrainer.train(
            input=str(sample_path),
            model_prefix=str(model_prefix),
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            split_digits=config.split_digits,
            byte_fallback=config.byte_fallback,
            normalization_rule_name=config.normalization_rule_name,
            add_dummy_prefix=config.add_dummy_prefix,
            unk_id=config.unk_id,
            bos_id=config.bos_id,
            eos_id=config.eos_id,
            pad_id=config.pad_id,
            character_coverage=config.character_coverage,
            input_sentence_size=config.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=config.max_sentence_length,
            allow_whitespace_only_pieces=True,  # LLaMA: runs of spaces (code indentation) are pieces
            remove_extra_whitespaces=False,  # LLaMA: whitespace is text, kept verbatim
            # A tiny demo corpus cannot fill 32k pieces; take what it has and record the real size.
            hard_vocab_limit=False,
            num_threads=config.num_threads,
            minloglevel=2,
        )
        folder.timings["training_time_s"] = time.time() - started
        drop_training_paths(model_prefix.with_suffix(".model"))
        processor = spm.SentencePieceProcessor(model_file=str(model_prefix.with_suffix(".model")))
        if processor.get_piece_size() < config.vocab_size:
            log.warning(
                "tokenizer: the sample supports only %d pieces (asked %d)", processor.get_piece_size(), config.vocab_size
            )
        (folder.artifacts_dir / HF_CONFIG_FILE).write_text(json.dumps(hf_tokenizer_config(processor, config), indent=2) + "\n")
        folder.stats.update(
            sample_stats
            | {
                "vocab_size": processor.get_piece_size(),
                "requested_vocab_size": config.vocab_size,
                "bos_id": processor.bos_id(),
                "eos_id": processor.eos_id(),
                "unk_id": processor.unk_id(),
                "pad_id": processor.pad_id(),
                "model_sha256": sha256_file(model_prefix.with_suffix(".model")),
            }
        )
    return read_manifest(output)


def drop_training_paths(model_file: Path) -> None:
    """Clear the paths SentencePiece records in a model's trainer spec (the temporary input file
    and output prefix, which differ on every run), so the same training gives the same bytes."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(Path(model_file).read_bytes())
    del model.trainer_spec.input[:]
    model.trainer_spec.model_prefix = ""
    Path(model_file).write_bytes(model.SerializeToString())


def tokenizer_model_path(path: Path | str) -> Path:
    """The .model file of a tokenizer stage folder, or `path` itself when it is a model file."""
    path = Path(path)
    if path.is_dir():
        read_manifest(path)  # refuse an incomplete folder
        path = path / "artifacts" / MODEL_FILE
    if not path.is_file():
        raise StageError(f"{path}: tokenizer model not found")
    return path


def load_tokenizer(path: Path | str) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor from a tokenizer stage folder or a tokenizer.model file."""
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model_path(path)))


def pack_documents(ids: list[list[int]], bos: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids as one uint16 array, each as BOS ids EOS, and each one's length."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 2
    ends = np.cumsum(lengths)
    starts = ends - lengths
    packed = np.empty(int(ends[-1]) if len(ends) else 0, dtype=TOKEN_DTYPE)
    body = np.ones(len(packed), dtype=bool)
    body[starts] = body[ends - 1] = False
    packed[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=TOKEN_DTYPE, count=len(packed) - 2 * len(ids))
    packed[starts], packed[ends - 1] = bos, eos
    return packed, lengths
