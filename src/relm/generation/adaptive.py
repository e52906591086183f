"""Adaptive retrieval during generation: at each retrieval step choose k in 0..k_max from the LM's own
perplexity on the tokens it just generated (high: more passages; low: none, and the retrieval and its
re-prefill are skipped, the passages in context kept). Decided online, from the stream's own past only.

The thresholds are calibrated on held-out text: the mean negative log-likelihood of the LM over spans
of `span` tokens, cut at the quantiles 1/(k_max+1), ..., k_max/(k_max+1), so on text like the held-out
set each k is chosen about equally often. They are saved as JSON beside what produced them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class AdaptiveK:
    """thresholds (nats, ascending, one per k): k = how many of them the recent mean NLL exceeds."""

    thresholds: tuple[float, ...]
    span: int = 10
    lm: str | None = None
    source: str | None = None

    def __post_init__(self):
        t = tuple(float(x) for x in self.thresholds)
        if not t or any(np.diff(t) < 0) or not all(np.isfinite(t)):
            raise ConfigError(f"adaptive-k thresholds must be ascending finite numbers, got {list(t)}")
        object.__setattr__(self, "thresholds", t)
        if self.span < 1:
            raise ConfigError(f"adaptive-k span must be >= 1, got {self.span}")

    @property
    def k_max(self) -> int:
        return len(self.thresholds)

    def choose(self, recent_nll: Sequence[float]) -> int:
        """k for the mean NLL of the recent tokens (k_max when there are none yet)."""
        if len(recent_nll) == 0:
            return self.k_max
        return k_from_nll(float(np.mean(recent_nll[-self.span:])), self.thresholds)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> AdaptiveK:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return cls(tuple(d["thresholds"]), int(d.get("span", 10)), d.get("lm"), d.get("source"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such adaptive-k file; make one with `relm generate DS "
                              "--calibrate-adaptive HELD_OUT -o FILE`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not an adaptive-k thresholds file ({e})") from None


def k_from_nll(nll: float, thresholds: Sequence[float]) -> int:
    """How many thresholds lie strictly below nll."""
    return int(np.searchsorted(np.asarray(thresholds), nll, side="left"))


def token_nll(logits: np.ndarray, token: int) -> float:
    """-log softmax(logits)[token], computed stably."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max()
    return float(m + np.log(np.exp(z - m).sum()) - z[token])


def span_means(nll: np.ndarray, span: int) -> np.ndarray:
    """Mean NLL of each run of `span` consecutive tokens (a rolling mean)."""
    nll = np.asarray(nll, dtype=np.float64)
    if len(nll) < span:
        return np.empty(0)
    c = np.concatenate([[0.0], np.cumsum(nll)])
    return (c[span:] - c[:-span]) / span


def calibrate(lm, texts: Sequence[str], *, k_max: int, span: int, window: int = 512,
              source: str | None = None) -> AdaptiveK:
    """Thresholds from the LM's NLL on held-out texts (windows of `window` tokens, each scored given its
    start), at the quantiles i / (k_max + 1) of the span means."""
    from ..lm.base import ScoreRequest

    requests = []
    for text in texts:
        ids, _ = lm.encode(text)
        for a in range(0, len(ids) - span - 1, window):
            chunk = ids[a:a + window]
            if len(chunk) > span + 1:
                requests.append(ScoreRequest(chunk, len(chunk) - 1))
    if not requests:
        raise ConfigError(f"the held-out text has no span of {span + 2} tokens to calibrate on")
    means = np.concatenate([span_means(-lp, span) for lp in lm.score(requests)])
    q = np.quantile(means, [i / (k_max + 1) for i in range(1, k_max + 1)])
    return AdaptiveK(tuple(float(x) for x in q), span, getattr(lm, "name", None), source)
