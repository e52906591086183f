"""Subsampling a datastore by passage id (MassiveDS): a passage is kept at fraction p when a hash of
(seed, passage id) falls below p, so the same passages survive for every query and every run, exactly
as in a datastore that was really subsampled. `SearchOptions(subsample=Subsample(p, seed))` searches
such a subsample; `eval.scaling` subsamples candidates after retrieval with the same draw.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .topk import PAD_ID

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014) on uint64 arrays; multiplications wrap mod 2**64."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def check_fraction(p: float) -> None:
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {p}")


def kept_mask(ids: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Whether each passage id survives subsampling at fraction p: u(seed, id) < p, u uniform on [0, 1).

    u = top 53 bits of splitmix64(id xor splitmix64(seed)) / 2**53: stable across runs, platforms and
    query order. Padding ids (-1) are never kept. Same shape as `ids`.
    """
    check_fraction(p)
    ids = np.asarray(ids, dtype=np.int64)
    salt = _splitmix64(np.asarray([seed], dtype=np.int64).view(np.uint64))[0]
    h = _splitmix64(ids.view(np.uint64) ^ salt)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (u < p) & (ids != PAD_ID)


def kept_passages(n_passages: int, p: float, seed: int) -> np.ndarray:
    """Boolean mask (n_passages,) over ids 0..n-1 of a really subsampled datastore (same draw as `kept_mask`)."""
    return kept_mask(np.arange(n_passages, dtype=np.int64), p, seed)
