"""The SentencePiece tokenizer: LLaMA's settings (digits, byte fallback, ids) on real prose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydoc_data.topics
import pytest

from pipeline.documents import Document, StageError, StageFolder, read_manifest
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.tokenizer import TokenizerConfig, draw_training_sample, load_tokenizer, train_tokenizer

CJK_AND_EMOJI = [
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本。北京是中国的首都。我们学习语言模型。",
    "한국어 문장입니다. 서울은 한국의 수도입니다.",
    "Emoji lines 😀 🎉 👍 for the tokenizer 😀😀",
]
UNSEEN = ["🦙", "龘"]  # absent from the training text: must come out as byte pieces


def write_source(root: Path, source: str, texts: list[str]) -> Path:
    out = root / source
    with StageFolder(out, f"{source}_final", {}, source=source) as folder:
        with folder.part(0) as part:
            for i, text in enumerate(texts):
                part.write(Document(id=f"{source}/{i}", text=text, source=source))
    return out


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    prose = list(pydoc_data.topics.topics.values())
    assert not any(ch in text for text in prose + CJK_AND_EMOJI for ch in UNSEEN)
    books = [line * 200 for line in CJK_AND_EMOJI]
    sources = {"wikipedia": write_source(root, "wikipedia", prose), "books": write_source(root, "books", books)}
    # Shares in proportion to size, one epoch each: the whole text is in the mixture once.
    books_share = round(sum(len(t.encode()) for t in books) / sum(len(t.encode()) for t in prose + books), 3)
    config = MixtureConfig(
        sources={"wikipedia": {"share": 1 - books_share, "epochs": 1.0}, "books": {"share": books_share, "epochs": 1.0}}
    )
    sample_mixture(sources, root / "mixture", config)
    return root / "mixture"


@pytest.fixture(scope="module")
def tokenizer_dir(mixture) -> Path:
    out = mixture.parent / "tokenizer"
    train_tokenizer(mixture, out, TokenizerConfig(vocab_size=2000))
    return out


def test_manifest_records_realized_vocab_and_sample(tokenizer_dir):
    manifest = read_manifest(tokenizer_dir)
    stats = manifest["stats"]
    sp = load_tokenizer(tokenizer_dir)
    assert manifest["kind"] == "tokenizer" and manifest["stage"] == "tokenizer"
    assert stats["vocab_size"] == sp.get_piece_size() <= 2000 and stats["requested_vocab_size"] == 2000
    assert stats["sample_bytes"] > 500_000 and stats["training_time_s"] > 0
    assert {a["path"] for a in manifest["artifacts"]} == {"artifacts/tokenizer.model", "artifacts/tokenizer.vocab"}
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"]


def test_special_ids_follow_llama(tokenizer_dir):
    sp = load_tokenizer(tokenizer_dir / "artifacts" / "tokenizer.model")
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_numbers_are_split_into_digits(tokenizer_dir):
    sp = load_tokenizer(tokenizer_dir)
    pieces = [p for p in sp.encode("2023", out_type=str) if p != "▁"]
    assert pieces == ["2", "0", "2", "3"]
    assert [p for p in sp.encode("in 1999 ", out_type=str) if p.strip("▁")][-4:] == ["1", "9", "9", "9"]


def test_unseen_characters_fall_back_to_bytes(tokenizer_dir):
    sp = load_tokenizer(tokenizer_dir)
    for char in UNSEEN:
        pieces = [p for p in sp.encode(char, out_type=str) if p != "▁"]
        assert pieces == [f"<0x{b:02X}>" for b in char.encode("utf-8")]
        assert sp.unk_id() not in sp.encode(char)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox, 2023.",
        "    indented code:\n\tif x == 1:\n\t\treturn  x  ",
        " leading and trailing spaces ",
        "naïve café — “quotes” ½",
        "日本語のテキスト 🦙 龘 😀",
        "mixed\r\nline\u00a0endings\u200b",
        "",
    ],
)
def test_decode_encode_round_trips(tokenizer_dir, text):
    sp = load_tokenizer(tokenizer_dir)
    assert sp.decode(sp.encode(text)) == text


def test_training_is_deterministic(mixture, tokenizer_dir, tmp_path):
    # The .model embeds its trainer spec (paths differ between runs); the pieces must not differ.
    train_tokenizer(mixture, tmp_path / "tokenizer", TokenizerConfig(vocab_size=2000))
    vocab = lambda folder: (folder / "artifacts" / "tokenizer.vocab").read_text()
    assert vocab(tmp_path / "tokenizer") == vocab(tokenizer_dir)


def test_training_sample_follows_mixture_repeats(tmp_path):
    """A source repeated 3 times weighs 3x in the sample, also when the sample is a subsample."""
    rng = np.random.default_rng(0)
    texts = lambda tag: [f"{tag} " + " ".join(rng.choice(["alpha", "beta", "gamma"], size=40)) for _ in range(600)]
    sources = {"wikipedia": write_source(tmp_path, "wikipedia", texts("wiki")), "c4": write_source(tmp_path, "c4", texts("c4"))}
    # Same size sources; wikipedia gets 3 epochs, c4 1 epoch -> shares 0.75 / 0.25.
    config = MixtureConfig(sources={"wikipedia": {"share": 0.75, "epochs": 3.0}, "c4": {"share": 0.25, "epochs": 1.0}})
    manifest = sample_mixture(sources, tmp_path / "mixture", config)
    realized = {s: v["realized_share_est"] for s, v in manifest["stats"]["sources"].items()}
    stream = sum(len(t) for t in texts("x")) * 4  # about the weighted stream size
    stats = draw_training_sample(tmp_path / "mixture", tmp_path / "sample.txt", TokenizerConfig(train_sample_bytes=stream // 2))
    assert 0.3 < stats["sample_rate"] < 0.7
    for source, share in stats["sample_share_by_source"].items():
        assert share == pytest.approx(realized[source], abs=0.03)
    again = draw_training_sample(tmp_path / "mixture", tmp_path / "again.txt", TokenizerConfig(train_sample_bytes=stream // 2))
    assert (tmp_path / "sample.txt").read_bytes() == (tmp_path / "again.txt").read_bytes()


def test_a_folder_without_repeats_is_refused(tmp_path):
    source = write_source(tmp_path, "wikipedia", ["some text"])
    with pytest.raises(StageError, match="no 'repeats' column"):
        train_tokenizer(source, tmp_path / "tokenizer", TokenizerConfig(vocab_size=300))
    assert not (tmp_path / "tokenizer").exists()
