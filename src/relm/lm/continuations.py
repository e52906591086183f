"""Log-likelihood of continuations after a shared context through the step API: the context is
prefilled once and each continuation is fed token by token on a copy of its state, so k choices cost one
context prefill plus their own tokens instead of k full forwards (multiple choice, lm-eval requests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import LMState


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def score_continuation(lm, context: LMState, tokens: Sequence[int]) -> tuple[np.ndarray, bool]:
    """(log-probs in nats of each token of `tokens` given `context` and the tokens before it, whether each
    token was the greedy pick). `context` (a state from `lm.prefill`) is left as it was."""
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ConfigError("a continuation needs at least one token")
    state, out, greedy = context, np.empty(len(tokens)), True
    for t, token in enumerate(tokens):
        logp = log_softmax(state.logits)
        out[t] = logp[token]
        greedy &= int(np.argmax(logp)) == token
        if t + 1 < len(tokens):
            if state is context:  # a copy: the context's state stays reusable for the next continuation
                state = lm.prefill(context.ids, reuse=context)
            lm.step(state, [token])
    return out, bool(greedy)
