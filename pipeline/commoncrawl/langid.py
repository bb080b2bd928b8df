"""cc_langid: fastText language identification (CCNet §3.2; LLaMA §2 keeps English pages).

fastText's lid.176 model on the page text with newlines replaced by spaces (fastText reads one
line at a time; cc_net does the same). Every page gets `language` (top label) and
`language_score`; pages whose top language is not in `languages`, or whose score is under
`threshold`, are rejected.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from pipeline.resources import lid_model_path
from pipeline.stage import Judgement, Stage, StageConfig

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
    parallel_parts = True
    remote_parts = True  # each worker loads lid.176 itself (pipeline/resources.py finds it)

    def prepare(self, inputs) -> dict[str, Any]:
        lid_model()  # fail early (StageError naming the file) if the model is missing
        return {"model": lid_model_path().name}

    def reason(self, language: str, score: float) -> str | None:
        if language not in self.config.languages:
            return f"non_english:{language}"
        if score < self.config.threshold:
            return f"low_language_score:{language}"
        return None

    def judge(self, texts: list[str], part: int, first_row: int) -> Judgement:
        found = identify_languages(texts)
        reasons = [self.reason(language, score) for language, score in found]
        self.tally("languages", Counter(language for language, _ in found))
        return Judgement(reasons, {"language": [language for language, _ in found],
                                   "language_score": [score for _, score in found]})

    def final_stats(self) -> dict[str, Any]:
        distribution = self.counters.get("languages", Counter())
        return {"language_distribution": dict(sorted(distribution.items(), key=lambda kv: (-kv[1], kv[0])))}
