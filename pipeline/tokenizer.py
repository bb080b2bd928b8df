"""The SentencePiece BPE tokenizer, trained on a sample of the mixture.

LLaMA (arXiv 2302.13971, Section 2.1) tokenizes with BPE (Sennrich et al.) as implemented in
SentencePiece, splits all numbers into individual digits and falls back to bytes for unknown
UTF-8 characters; the vocabulary has 32k tokens. The released tokenizer.model also shows the rest
of its trainer spec, copied here: identity normalization (no NFKC), whitespace kept as is
(remove_extra_whitespaces false, whitespace-only pieces allowed), unk/bos/eos = 0/1/2, no pad.

The training sample follows the mixture: every document enters it about `repeats * p` times, p
chosen so the sample is `train_sample_bytes` long, so sources weigh in by their Table 1 share.
Which copies are drawn depends only on (seed, document id): the sample is deterministic.

Output: a stage folder (kind "tokenizer") with artifacts/tokenizer.model and tokenizer.vocab.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sentencepiece as spm
from pydantic import BaseModel, ConfigDict

from pipeline.documents import StageError, StageFolder, is_complete, kept_parts, read_documents, read_manifest, sha256_file
from pipeline.mixture import REPEATS_COLUMN
from pipeline.documents import code_version_of

log = logging.getLogger(__name__)

STAGE_NAME = "tokenizer"
MODEL_FILE = "tokenizer.model"
CODE_VERSION = code_version_of(__file__)


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = 32000  # paper, Section 2.1
    model_type: Literal["bpe", "unigram"] = "bpe"  # paper: BPE via SentencePiece
    split_digits: bool = True  # paper: numbers split into individual digits
    byte_fallback: bool = True  # paper: unknown UTF-8 characters decomposed into bytes
    normalization_rule_name: str = "identity"  # LLaMA tokenizer.model trainer spec
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1  # LLaMA has no pad piece
    character_coverage: float = 0.99995  # LLaMA tokenizer.model trainer spec
    # Caps on what SentencePiece loads (it holds all sentences in memory); lines longer than
    # max_sentence_length bytes are cut into pieces rather than skipped by the trainer.
    input_sentence_size: int = 20_000_000
    max_sentence_length: int = 16384
    train_sample_bytes: int = 500_000_000  # size of the training sample drawn from the mixture
    num_threads: int = 2
    seed: int = 0


def _unit_interval(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document id), independent of reading order."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _weighted_bytes(parts: list[Path]) -> int:
    """Sum over documents of repeats * UTF-8 bytes: the size of the mixture's token stream in bytes."""
    total = 0
    for part in parts:
        table = pq.read_table(part, columns=["text", REPEATS_COLUMN])
        lengths = pc.binary_length(pc.cast(table.column("text"), pa.binary()))
        total += pc.sum(pc.multiply(pc.cast(lengths, pa.int64()), table.column(REPEATS_COLUMN))).as_py() or 0
    return int(total)


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


def draw_training_sample(mixture_dir: Path, sample_path: Path, config: TokenizerConfig) -> dict[str, Any]:
    """Write the training sample, one sentence per line, and return its statistics."""
    parts = kept_parts(mixture_dir)
    if not parts:
        raise StageError(f"{mixture_dir}: the mixture has no kept parts")
    for part in parts:
        if REPEATS_COLUMN not in pq.read_schema(part).names:
            raise StageError(f"{part}: no '{REPEATS_COLUMN}' column; is {mixture_dir} a mixture stage folder?")
    stream_bytes = _weighted_bytes(parts)
    if stream_bytes == 0:
        raise StageError(f"{mixture_dir}: the mixture holds no text to train a tokenizer on")
    rate = min(1.0, config.train_sample_bytes / stream_bytes)  # expected copies per repeat
    docs_seen = docs_sampled = lines = 0
    bytes_by_source: Counter[str] = Counter()
    with open(sample_path, "w", encoding="utf-8") as sample:
        for part in parts:
            for doc in read_documents(part, columns=["id", "text", "source", REPEATS_COLUMN]):
                docs_seen += 1
                expected = doc.columns[REPEATS_COLUMN] * rate
                copies = math.floor(expected) + (_unit_interval(config.seed, doc.id) < expected - math.floor(expected))
                if not copies:
                    continue
                docs_sampled += 1
                for sentence in _sentences(doc.text, config.max_sentence_length):
                    for _ in range(copies):
                        sample.write(sentence + "\n")
                    lines += copies
                    bytes_by_source[doc.source] += copies * len(sentence.encode("utf-8"))
    sample_bytes = sum(bytes_by_source.values())
    if sample_bytes == 0:
        raise StageError(f"{mixture_dir}: the tokenizer training sample came out empty")
    return {
        "mixture_stream_bytes": stream_bytes,
        "sample_rate": round(rate, 8),
        "docs_seen": docs_seen,
        "docs_sampled": docs_sampled,
        "sample_lines": lines,
        "sample_bytes": sample_bytes,
        "sample_share_by_source": {s: round(b / sample_bytes, 6) for s, b in sorted(bytes_by_source.items())},
    }


def train_tokenizer(mixture_dir: Path, output: Path, config: TokenizerConfig | None = None) -> dict[str, Any]:
    """Train the SentencePiece model on a sample of the mixture; write the tokenizer stage folder."""
    config = config or TokenizerConfig()
    mixture_dir, output = Path(mixture_dir), Path(output)
    if not is_complete(mixture_dir):
        raise StageError(f"{mixture_dir}: incomplete mixture stage folder (no manifest.json)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with StageFolder(
        output,
        STAGE_NAME,
        config.model_dump(mode="json"),
        inputs=[mixture_dir / "manifest.json"],
        code_version=CODE_VERSION,
        kind="tokenizer",
    ) as folder, tempfile.TemporaryDirectory(prefix="tokenizer-sample-", dir=output.parent) as scratch:
        sample_path = Path(scratch) / "sample.txt"
        sample_stats = draw_training_sample(mixture_dir, sample_path, config)
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
        training_time = time.time() - started
        processor = spm.SentencePieceProcessor(model_file=str(model_prefix.with_suffix(".model")))
        if processor.get_piece_size() < config.vocab_size:
            log.warning(
                "tokenizer: the sample supports only %d pieces (asked %d)", processor.get_piece_size(), config.vocab_size
            )
        folder.stats.update(
            sample_stats
            | {
                "vocab_size": processor.get_piece_size(),
                "requested_vocab_size": config.vocab_size,
                "bos_id": processor.bos_id(),
                "eos_id": processor.eos_id(),
                "unk_id": processor.unk_id(),
                "pad_id": processor.pad_id(),
                "training_time_s": round(training_time, 3),
                "model_sha256": sha256_file(model_prefix.with_suffix(".model")),
            }
        )
    return read_manifest(output)


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
