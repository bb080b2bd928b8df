"""The SentencePiece tokenizer: LLaMA's settings (digits, byte fallback, ids) on real prose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydoc_data.topics
import pytest

from pipeline.documents import Document, StageError, StageFolder, kept_parts, read_documents, read_manifest, read_timing
from pipeline.mixture import MixtureConfig, sample_mixture
from pipeline.tokenizer import TokenizerConfig, draw_training_sample, load_tokenizer, train_tokenizer

CJK_AND_EMOJI = [
    "日本語のテキストです。東京は日本の首都です。",
    "中文文本。北京是中国的首都。我们学习语言模型。",
    "한국어 문장입니다. 서울은 한국의 수도입니다.",
    "Emoji lines 😀 🎉 👍 for the tokenizer 😀😀",
]
UNSEEN = ["🦙", "龘"]  # absent from the training text: must come out as byte pieces
ROUND_TRIP = [
    "The quick brown fox, 2023.",
    "    indented code:\n\tif x == 1:\n\t\treturn  x  ",
    " leading and trailing spaces ",
    "naïve café — “quotes” ½",
    "日本語のテキスト 🦙 龘 😀",
    "mixed\r\nline\u00a0endings\u200b",
    "control \x00\x01\x07\x1b[0m\x7f\x85 chars",
    "edges \ud7ff \ue000 \uffff \U0010ffff \ufeffBOM \ufffd",  # around the surrogates, the last code point
    "combining e\u0301\u0301 alone \u0301, ZWJ family 👨\u200d👩\u200d👧, flag 🇫🇷, RTL \u202eabc",
    "special pieces as plain text: <s> </s> <unk> <0x41>",
    "",
]


def write_source(root: Path, source: str, texts: list[str]) -> Path:
    out = root / source
    with StageFolder(out, f"{source}_final", {}, source=source) as folder:
        with folder.part(0) as part:
            for i, text in enumerate(texts):
                part.write(Document(id=f"{source}/{i}", text=text, source=source))
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    prose = list(pydoc_data.topics.topics.values())
    assert not any(ch in text for text in prose + CJK_AND_EMOJI for ch in UNSEEN)
    books = [line * 200 for line in CJK_AND_EMOJI]
    sources = {"wikipedia": write_source(root, "wikipedia", prose), "books": write_source(root, "books", books)}
    # Shares in proportion to size: the whole text is in the sample once.
    books_share = sum(len(t.encode()) for t in books) / sum(len(t.encode()) for t in prose + books)
    out = root / "tokenizer"
    train_tokenizer(sources, out, TokenizerConfig(vocab_size=2000), {"wikipedia": 1 - books_share, "books": books_share})
    return out


def test_manifest_records_realized_vocab_and_sample(tokenizer_dir):
    manifest = read_manifest(tokenizer_dir)
    stats = manifest["stats"]
    sp = load_tokenizer(tokenizer_dir)
    assert manifest["kind"] == "tokenizer" and manifest["stage"] == "tokenizer"
    assert stats["vocab_size"] == sp.get_piece_size() <= 2000 and stats["requested_vocab_size"] == 2000
    assert stats["sample_bytes"] > 500_000 and read_timing(tokenizer_dir)["training_time_s"] > 0
    assert {a["path"] for a in manifest["artifacts"]} == {
        "artifacts/tokenizer.model",
        "artifacts/tokenizer.vocab",
        "artifacts/tokenizer_config.json",
    }
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


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trips(tokenizer_dir, text):
    sp = load_tokenizer(tokenizer_dir)
    assert sp.decode(sp.encode(text)) == text


def test_the_metaspace_character_is_the_one_that_does_not_round_trip(tokenizer_dir):
    """SentencePiece writes spaces as U+2581 "▁" and decodes every "▁" as a space, so that one
    character comes back as a space (LLaMA's own tokenizer behaves the same); its ids still
    decode to the same text in SentencePiece and Hugging Face alike."""
    sp = load_tokenizer(tokenizer_dir)
    text = "▁ literal metaspace ▁▁ here"
    assert sp.decode(sp.encode(text)) == text.replace("▁", " ")


def test_training_is_deterministic(tokenizer_dir, tmp_path):
    # The .model embeds its trainer spec (paths differ between runs); the pieces must not differ.
    sources = {name: tokenizer_dir.parent / name for name in ("wikipedia", "books")}
    shares = read_manifest(tokenizer_dir)["config"]["shares"]
    train_tokenizer(sources, tmp_path / "tokenizer", TokenizerConfig(vocab_size=2000), shares)
    vocab = lambda folder: (folder / "artifacts" / "tokenizer.vocab").read_text()
    assert vocab(tmp_path / "tokenizer") == vocab(tokenizer_dir)


def test_training_sample_follows_the_shares(tmp_path):
    """Equal-size sources at shares 0.75/0.25: the sample has those shares; wikipedia, the source
    scarcest relative to its share, is taken whole, and c4 at a third of its documents."""
    rng = np.random.default_rng(0)
    texts = lambda tag: [f"{tag} " + " ".join(rng.choice(["alpha", "beta", "gamma"], size=40)) for _ in range(600)]
    sources = {"wikipedia": write_source(tmp_path, "wikipedia", texts("wiki")), "c4": write_source(tmp_path, "c4", texts("c4"))}
    shares = {"wikipedia": 0.75, "c4": 0.25}
    stats = draw_training_sample(sources, shares, tmp_path / "sample.txt", TokenizerConfig())
    assert stats["sample_rate_by_source"]["wikipedia"] == 1.0
    assert stats["sample_rate_by_source"]["c4"] == pytest.approx(1 / 3, rel=0.05)
    for source, share in shares.items():
        assert stats["sample_share_by_source"][source] == pytest.approx(share, abs=0.03)
    capped = draw_training_sample(sources, shares, tmp_path / "capped.txt", TokenizerConfig(train_sample_bytes=20_000))
    assert capped["sample_bytes"] == pytest.approx(20_000, rel=0.15) and capped["sample_share_by_source"]["wikipedia"] > 0.6
    again = draw_training_sample(sources, shares, tmp_path / "again.txt", TokenizerConfig(train_sample_bytes=20_000))
    assert (tmp_path / "capped.txt").read_bytes() == (tmp_path / "again.txt").read_bytes()


def test_an_incomplete_source_folder_is_refused(tmp_path):
    (tmp_path / "wikipedia").mkdir()
    with pytest.raises(StageError, match="incomplete stage folder"):
        train_tokenizer({"wikipedia": tmp_path / "wikipedia"}, tmp_path / "tokenizer", TokenizerConfig(vocab_size=300))
    assert not (tmp_path / "tokenizer").exists()


# -- Hugging Face transformers


def hf_texts() -> list[str]:
    prose = "\n".join(pydoc_data.topics.topics.values())
    rng = np.random.default_rng(0)
    slices = [prose[s : s + int(rng.integers(1, 400))] for s in rng.integers(0, len(prose) - 400, size=300)]
    return ROUND_TRIP + CJK_AND_EMOJI + slices


@pytest.mark.parametrize("class_name", ["LlamaTokenizer", "LlamaTokenizerFast", "AutoTokenizer"])
def test_hf_llama_tokenizer_loads_the_model_and_gives_the_same_ids(tokenizer_dir, class_name):
    transformers = pytest.importorskip("transformers")
    sp = load_tokenizer(tokenizer_dir)
    hf = getattr(transformers, class_name).from_pretrained(str(tokenizer_dir / "artifacts"))
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2) and len(hf) == sp.get_piece_size()
    for text in hf_texts():
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, repr(text)
        assert hf.decode(ids) == text, repr(text)
    assert hf("2023 🦙").input_ids == [sp.bos_id()] + sp.encode("2023 🦙")  # LLaMA: BOS, no EOS


def test_the_sample_is_drawn_per_part_the_same_bytes_whatever_the_worker_count(tmp_path):
    """Each part's share of the sample is a job (forked workers here, a cluster's workers in a build);
    the files are joined in part order, so the sample does not depend on who drew it. The sources'
    sizes come from their manifests, not from reading every part's text in this process."""
    rng = np.random.default_rng(1)
    sources = {}
    for name in ("wikipedia", "c4"):
        with StageFolder(tmp_path / name, f"{name}_final", {}, source=name) as folder:
            for part in range(3):
                with folder.part(part) as writer:
                    for i in range(200):
                        writer.write(Document(id=f"{name}/{part}/{i}", text=" ".join(rng.choice(["alpha", "beta", "gamma", "delta"], size=30)), source=name))
        sources[name] = tmp_path / name
    shares = {"wikipedia": 0.5, "c4": 0.5}
    config = TokenizerConfig(train_sample_bytes=30_000)
    one = draw_training_sample(sources, shares, tmp_path / "one.txt", config, workers=1)
    two = draw_training_sample(sources, shares, tmp_path / "two.txt", config, workers=2)
    assert one == two and (tmp_path / "one.txt").read_bytes() == (tmp_path / "two.txt").read_bytes()
    texts = {name: sum(len(d.text.encode()) for p in kept_parts(sources[name]) for d in read_documents(p)) for name in sources}
    assert one["source_bytes"] == texts and one["docs_seen"] == 1200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c4", "one.txt", "two.txt", "wikipedia"]  # no part files left
