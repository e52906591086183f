"""Answer strings in text, the SQuAD way: normalize (lowercase, drop punctuation and the articles a/an/the,
collapse whitespace) and compare. `normalize_answer` is the official SQuAD v1.1 evaluation script's
normalization; `answer_in_text` is the open-domain QA "answer recall" test (a normalized gold answer occurs
in a normalized retrieved passage, on word boundaries)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalize_answer: lower, remove punctuation, remove articles, fix whitespace."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def answer_in_text(answers: Iterable[str], text: str) -> bool:
    """Whether any gold answer, normalized, occurs in `text`, normalized, as whole words."""
    hay = f" {normalize_answer(text)} "
    return any(f" {a} " in hay for a in map(normalize_answer, answers) if a)


def answer_recall(answers: Iterable[str], passages: Iterable[str]) -> float:
    """1.0 when a gold answer occurs in one of the passages (recall@k over the k passages given), else 0.0."""
    answers = list(answers)
    return float(any(answer_in_text(answers, p) for p in passages))
