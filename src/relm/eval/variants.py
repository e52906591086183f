"""How retrieved passages reach the LM: the variants `relm eval` compares, and the pure pieces they share.

- massiveds (MassiveDS, Shao et al. 2024): the window's context is the query; the top-k passages are
  prepended best-last (closest to the text); the loss is taken on the scored part only.
- ralm (In-Context RALM, Ram et al. 2023): every `stride` scored tokens, the last `query_tokens`
  tokens are the query and the retrieved passage is prepended for the next `stride` tokens.
- query "last": the last q tokens before the scored span instead of the whole context.
- retriever: None searches with the Evaluator's Retriever; a kind ("hybrid": BM25 + dense fusion over the
  retriever config's BM25 index, or "exact", "ann", "bm25", "sharded") searches with that config turned
  into that kind (`RetrieverConfig.with_kind`).
- rerank N: In-Context RALM's reranking: the top N candidates are ordered by the LM's own
  log-probability of the last q context tokens given the passage and the context before them.
- adaptive: the number of passages per window follows the LM's loss on its query (`k_from_query_loss`;
  not the retriever's score-gap `AdaptiveK`).
- ralm stale s: each block after a window's first is retrieved with the query of the tokens s positions
  earlier, as `relm generate --mode prefetch` does (stale by up to one stride).
- ralm online thresholds: each block decides its own k online, from the LM's mean NLL (no retrieval) on
  the `online_span` tokens before it against calibrated thresholds (`relm.generation.adaptive`), as
  `relm generate --adaptive-k` does; k = 0 skips the block's retrieval and keeps the passages before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..config import check_int
from ..errors import ConfigError
from ..retrieval.options import RETRIEVERS

PROTOCOLS = ("massiveds", "ralm")
QUERIES = ("context", "last")


@dataclass(frozen=True)
class Variant:
    name: str
    protocol: str = "massiveds"
    k: int = 3
    query: str = "context"
    query_tokens: int = 32
    retriever: str | None = None  # None: the Evaluator's retriever; else that retriever as this kind
    rerank: int = 0
    adaptive: bool = False
    stride: int = 32  # ralm only
    stale: int = 0  # ralm only: queries taken this many tokens before each block after the first
    online: tuple[float, ...] = ()  # ralm only: adaptive-k thresholds (nats), k per block decided online
    online_span: int = 10

    def __post_init__(self):
        for field, value, choices in (("protocol", self.protocol, PROTOCOLS), ("query", self.query, QUERIES),
                                      ("retriever", self.retriever, (None, *RETRIEVERS))):
            if value not in choices:
                raise ConfigError(f"variant {self.name!r}: {field} must be one of {choices}, got {value!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a variant needs a non-empty name, got {self.name!r}")
        for field, flag, minimum in (("k", "-k", 1), ("query_tokens", "--query-tokens", 1),
                                     ("stride", "--ralm-stride", 1), ("rerank", "--rerank-candidates", 0)):
            check_int(getattr(self, field), f"variant {self.name!r}: {field} ({flag})", minimum=minimum)
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"variant {self.name!r}: adaptive must be true or false, got {self.adaptive!r}")
        check_int(self.stale, f"variant {self.name!r}: stale", minimum=0)
        check_int(self.online_span, f"variant {self.name!r}: online_span", minimum=1)
        object.__setattr__(self, "online", tuple(float(x) for x in self.online))
        if (self.stale or self.online) and self.protocol != "ralm":
            raise ConfigError(f"variant {self.name!r}: stale queries and online k apply to the ralm protocol")
        if self.rerank and self.rerank < self.k:
            raise ConfigError(f"variant {self.name!r}: rerank must be 0 (off) or ≥ k = {self.k}")

    def to_dict(self) -> dict:
        return asdict(self)


def standard_variants(k: int = 3, query_tokens: int = 32, stride: int = 32, rerank: int = 8,
                      online=None) -> dict[str, Variant]:
    """The named variants of `relm eval --variants`, sharing k, q, s and the rerank depth; `online` (a
    `relm.generation.adaptive.AdaptiveK`) adds ralm-adaptive."""
    check_int(rerank, "--rerank-candidates", minimum=1)
    base = Variant("massiveds", k=k, query_tokens=query_tokens, stride=stride)
    ralm = replace(base, name="ralm", protocol="ralm", k=1, query="last")
    extra = {}
    if online is not None:
        extra["ralm-adaptive"] = replace(ralm, name="ralm-adaptive", k=online.k_max, online=online.thresholds,
                                         online_span=online.span)
    return {
        "massiveds": base,
        "last-q": replace(base, name="last-q", query="last"),
        "hybrid": replace(base, name="hybrid", retriever="hybrid"),
        "rerank": replace(base, name="rerank", query="last", rerank=max(rerank, k)),
        "adaptive": replace(base, name="adaptive", adaptive=True),
        "ralm": ralm,
        "ralm-stale": replace(ralm, name="ralm-stale", stale=stride),
        **extra,
    }


def parse_variants(names: str, **shared) -> list[Variant]:
    table = standard_variants(**shared)
    out = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name == "ralm-adaptive" and name not in table:
            raise ConfigError("variant ralm-adaptive needs its thresholds: --adaptive-k FILE (make one with "
                              "`relm generate DS --calibrate-adaptive HELD_OUT -o FILE`)")
        if name not in table:
            raise ConfigError(f"unknown variant {name!r}; choose from {', '.join(table)}")
        out.append(table[name])
    if not out:
        raise ConfigError("--variants is empty; name at least one of " + ", ".join(table))
    return out


def k_from_query_loss(query_loss: np.ndarray, k_max: int) -> np.ndarray:
    """Passages per window from the LM's uncertainty on its query (mean NLL, i.e. log perplexity):
    windows are ranked by that loss and the quantile u_i = rank_i / n maps to k_i = ⌊u_i·(k_max+1)⌋,
    so the most confident (k_max+1)-th of the windows gets no passage and the least confident gets
    k_max; on average k_max/2 passages. Ties keep their window order (stable)."""
    n = len(query_loss)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(query_loss, kind="stable")] = np.arange(n)
    return np.minimum((rank * (k_max + 1)) // n, k_max).astype(np.int64)


def prepend(passages: list[np.ndarray], text_ids: np.ndarray, limit: int) -> np.ndarray:
    """Input ids: passages best-last (passages[0] is the best, so it goes right before the text), then
    the text; left-truncated to `limit` tokens, so the passages lose their start first, never the text."""
    parts = [p for p in reversed(passages)] + [text_ids]
    ids = np.concatenate(parts) if len(parts) > 1 else text_ids
    if len(text_ids) > limit:
        raise ConfigError(f"a window of {len(text_ids):,} tokens exceeds the LM's context of {limit:,}; "
                          "pass a smaller --window")
    return ids[-limit:] if len(ids) > limit else ids


def ralm_blocks(n_context: int, n_target: int, stride: int) -> list[tuple[int, int]]:
    """Scored blocks [a, b) in window coordinates: retrieval happens before each block of `stride`."""
    return [(a, min(a + stride, n_context + n_target)) for a in range(n_context, n_context + n_target, stride)]
