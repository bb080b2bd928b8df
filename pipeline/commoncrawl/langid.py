"""cc_langid: fastText language identification (CCNet §3.2; LLaMA §2 keeps English pages).

fastText's lid.176 model on the page text with newlines replaced by spaces (fastText reads one
line at a time; cc_net does the same). Every page gets `language` (top label) and
`language_score`; pages whose top language is not in `languages`, or whose score is under
`threshold`, are rejected.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any, Iterator

import pyarrow as pa

from pipeline.documents import Document
from pipeline.resources import lid_model_path
from pipeline.stage import Stage, StageConfig

_MODEL = None  # one fastText model per process, loaded on first use


def lid_model():
    global _MODEL
    if _MODEL is None:
        import fasttext

        _MODEL = fasttext.load_model(str(lid_model_path()))
    return _MODEL


def identify_language(text: str) -> tuple[str, float]:
    return identify_languages([text])[0]


def identify_languages(texts: list[str]) -> list[tuple[str, float]]:
    """Top language and score of each text, with one fastText call for the whole list (its C++
    multi-line predict): one call per page spent more time in Python than in the model."""
    labels, scores = lid_model().predict([text.replace("\n", " ") for text in texts], k=1)
    return [
        (label[0].removeprefix("__label__"), float(min(score[0], 1.0))) if len(label) else ("unknown", 0.0)
        for label, score in zip(labels, scores)
    ]


class LangIdConfig(StageConfig):
    languages: list[str] = ["en"]  # LLaMA §2: CCNet pages in English only
    threshold: float = 0.5  # LLaMA §2 / cc_net: "discard pages with a language score below 0.5"


class CCLangId(Stage):
    name = "cc_langid"
    source = "cc"
    columns = {"language": pa.string(), "language_score": pa.float64()}
    Config = LangIdConfig
    description = "fastText lid.176 language id; keep English pages scoring >= 0.5"

    BATCH = 1024  # pages per fastText call

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.distribution: Counter[str] = Counter()

    def prepare(self, inputs) -> dict[str, Any]:
        self.distribution.clear()
        lid_model()  # fail early (StageError naming the file) if the model is missing
        return {"model": lid_model_path().name}

    def process(self, docs: Iterator[Document], part: int = 0) -> Iterator[Document]:
        allowed = set(self.config.languages)
        while batch := list(islice(docs, self.BATCH)):
            yield from self._label(batch, allowed)

    def _label(self, batch: list[Document], allowed: set[str]) -> Iterator[Document]:
        for doc, (language, score) in zip(batch, identify_languages([doc.text for doc in batch])):
            self.distribution[language] += 1
            doc.columns["language"] = language
            doc.columns["language_score"] = score
            if language not in allowed:
                doc.reject(f"non_english:{language}")
            elif score < self.config.threshold:
                doc.reject(f"low_language_score:{language}")
            yield doc

    def final_stats(self) -> dict[str, Any]:
        return {"language_distribution": dict(self.distribution.most_common())}
