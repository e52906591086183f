"""Next-token sampling from logits: greedy, temperature, top-k and top-p (nucleus), seeded. Pure numpy."""

from __future__ import annotations

import numpy as np

from ..config import check_float, check_int


def check_sampling(temperature: float, top_k: int, top_p: float) -> tuple[float, int, float]:
    """The sampling settings, checked (errors name the flag)."""
    return (check_float(temperature, "temperature (--temperature)", minimum=0),
            check_int(top_k, "top_k (--top-k)", minimum=0),
            check_float(top_p, "top_p (--top-p)", minimum=0, maximum=1))


def sample_next(logits: np.ndarray, rng: np.random.Generator, *, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0) -> int:
    """One token id from next-token logits (vocab,). temperature 0: the argmax (ties: the lowest id, as
    torch and transformers break them). Otherwise softmax(logits / temperature), restricted to the top_k
    most likely ids (0: all) and then to the smallest set reaching probability mass top_p (the top id
    always kept), renormalized and sampled with `rng`."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    if top_k:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = np.cumsum(p) - p < top_p  # the prefix whose mass before each id is below top_p
        keep[0] = True
        order, p = order[keep], p[keep] / p[keep].sum()
    return int(order[rng.choice(len(order), p=p)])
