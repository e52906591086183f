"""How retrieved passages reach a QA prompt: one batched search for every question, each question's
list cut to k, then to what fits the LM's window (the least relevant dropped first, counted).

`generate_stream` retrieves through `retriever.search_ids([query], opts)` and `retriever.ds.passages`;
`FoundPassages` answers that call with the passages chosen here, so the stream's one retrieval returns
exactly the passages this module fitted (and the batched search stays one encoder pass for all questions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SEARCH_BATCH = 256  # questions per search call (one encoder batch run each)


@dataclass(frozen=True)
class Found:
    """A question's retrieved passages, best first: ids, scores, texts (at most the run's largest k)."""

    ids: tuple[int, ...]
    scores: tuple[float, ...]
    texts: tuple[str, ...]

    def top(self, k: int) -> Found:
        return Found(self.ids[:k], self.scores[:k], self.texts[:k])


def check_k(ks: Sequence[int], ds) -> None:
    """Every k in [0, passages in the datastore]."""
    for k in ks:
        if k < 0:
            raise ConfigError(f"-k {k}: passages per question must be >= 0 (0: closed-book)")
        if k > len(ds):
            raise ConfigError(f"-k {k} exceeds the datastore's {len(ds):,} passages; pass -k {len(ds)} or less")


def retrieve_all(retriever, questions: Sequence[str], k: int, search_options=None) -> list[Found]:
    """The top-k passages of each question (the question alone is the query), searched in batches."""
    import dataclasses

    from ..retrieval.options import SearchOptions

    if k == 0:
        return [Found((), (), ()) for _ in questions]
    opts = dataclasses.replace(search_options or SearchOptions(), k=k)
    out: list[Found] = []
    for start in range(0, len(questions), SEARCH_BATCH):
        scores, ids = retriever.search_ids(list(questions[start:start + SEARCH_BATCH]), opts)
        for s_row, i_row in zip(scores, ids, strict=True):
            keep = [(int(i), float(s)) for s, i in zip(s_row, i_row, strict=True) if i >= 0]
            texts = tuple(retriever.ds.passages([i for i, _ in keep])) if keep else ()
            out.append(Found(tuple(i for i, _ in keep), tuple(s for _, s in keep), texts))
    return out


def fit_passages(n: int, prompt_tokens: Callable[[int], int], budget: int) -> int:
    """The most passages j <= n (the best j) whose prompt takes at most `budget` tokens; prompt_tokens(j)
    grows with j, so trying j = n, n-1, ... drops the least relevant passage first. -1 when even the
    prompt without passages is over budget."""
    for j in range(n, -1, -1):
        if prompt_tokens(j) <= budget:
            return j
    return -1


class FoundPassages:
    """A stand-in retriever for one question: `search_ids` returns these passages (whatever the query),
    `ds.passages` their texts, so `generate_stream`'s retrieval puts exactly them in the prompt."""

    def __init__(self, ds, found: Found):
        self.ds, self.found = ds, found

    def search_ids(self, queries, opts) -> tuple[np.ndarray, np.ndarray]:
        k = opts.k if hasattr(opts, "k") else int(opts)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        n = min(k, len(self.found.ids))
        ids[:, :n] = self.found.ids[:n]
        scores[:, :n] = self.found.scores[:n]
        return scores, ids
