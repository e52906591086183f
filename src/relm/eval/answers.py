"""Answer strings in text, the SQuAD way: normalize (lowercase, drop punctuation and the articles a/an/the,
collapse whitespace) and compare. `normalize_answer` is the official SQuAD v1.1 evaluation script's
normalization; `answer_in_text` is the open-domain QA "answer recall" test (a normalized gold answer occurs
in a normalized retrieved passage, on word boundaries). `exact_match` and `token_f1` are the script's
exact_match_score and f1_score, taken as it takes them: the maximum over the gold answers."""

from __future__ import annotations

import re
import string
from collections import Counter
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


def _golds(answers: Iterable[str]) -> list[str]:
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise ValueError("no gold answers to score against")
    return golds


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer (SQuAD v1.1 exact_match_score,
    max over the golds), else 0.0."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in _golds(answers)))


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    """F1 of the bag-of-tokens overlap: 2PR / (P + R), P = same / |prediction|, R = same / |gold|; 0 when
    nothing is shared (so 0 for an empty prediction or gold, as the official script gives)."""
    same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """SQuAD v1.1 f1_score over normalized whitespace tokens, max over the gold answers."""
    p = normalize_answer(prediction).split()
    return max(_f1(p, normalize_answer(a).split()) for a in _golds(answers))
