"""RETRO's leakage-filtered evaluation (Borgeaud et al. 2021, §2.6 and Fig. 6).

For each evaluation chunk C (m tokens) with retrieved neighbours N_1..N_k, the overlap ratio is
r(C) = max_j LCS(C, N_j) / m, where LCS is the length of the longest common *contiguous* token
substring. bpb(α) is bits per byte over the chunks with r(C) ≤ α only: α = 1 keeps every chunk,
α = 0 only chunks sharing not a single token with any neighbour (one shared token gives r = 1/m).
A model that merely copies leaked text gains at high α only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ALPHAS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


def longest_common_substring(a: np.ndarray, b: np.ndarray, pad: int | None = None) -> int:
    """Length of the longest contiguous run shared by token sequences a and b (O(|a|·|b|), row by row).

    `pad`: a token value that never matches (padding of missing neighbour tokens)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if len(a) == 0 or len(b) == 0:
        return 0
    prev = np.zeros(len(b) + 1, dtype=np.int32)
    best = 0
    valid = np.ones(len(b), bool) if pad is None else b != pad
    for x in a:
        cur = np.zeros_like(prev)
        eq = (b == x) & valid
        cur[1:] = np.where(eq, prev[:-1] + 1, 0)
        best = max(best, int(cur.max()))
        prev = cur
    return best


def overlap_ratios(chunks: np.ndarray, neighbours: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """r per chunk: chunks (n, m) tokens, neighbours (n, k, r) tokens with mask (n, k, r) of real tokens."""
    n, m = chunks.shape
    out = np.zeros(n)
    for i in range(n):
        best = 0
        for j in range(neighbours.shape[1]):
            real = neighbours[i, j][mask[i, j]]
            if len(real):
                best = max(best, longest_common_substring(chunks[i], real))
        out[i] = best / m
    return out


def filtered_bpb(nll_bits: np.ndarray, nbytes: np.ndarray, ratios: np.ndarray,
                 alphas: Sequence[float] = ALPHAS) -> list[dict]:
    """bits per byte over the chunks with r ≤ α, per α: [{"alpha", "chunks", "bytes", "bpb"}]."""
    out = []
    for a in alphas:
        sel = ratios <= a + 1e-12
        b = int(nbytes[sel].sum())
        out.append({"alpha": a, "chunks": int(sel.sum()), "bytes": b,
                    "bpb": float(nll_bits[sel].sum() / b) if b else math.nan})
    return out


def filtered_comparison(bits_a: np.ndarray, bits_b: np.ndarray, nbytes: np.ndarray, ratios: np.ndarray,
                        alphas: Sequence[float] = ALPHAS, *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> list[dict]:
    """Model b against model a on the same chunks, per α: bpb_b / bpb_a − 1 over the chunks with r ≤ α
    (negative: b is better) and its paired-bootstrap percentile interval (chunks resampled together)."""
    from ..eval.metrics import _check_boot, _percentiles, _resampled_losses

    _check_boot(n_boot, level)
    out = []
    for a in alphas:
        sel = ratios <= a + 1e-12
        row: dict = {"alpha": a, "chunks": int(sel.sum()), "rel_diff": math.nan, "rel_diff_ci": (math.nan, math.nan),
                     "excludes_zero": False}
        if sel.any():
            xa, xb, nb = bits_a[sel], bits_b[sel], nbytes[sel]
            boot_a, boot_b = _resampled_losses([xa, xb], nb, n_boot, seed)
            lo, hi = _percentiles(boot_b / boot_a - 1.0, level)
            row.update(rel_diff=float(xb.sum() / xa.sum() - 1.0), rel_diff_ci=(lo, hi),
                       excludes_zero=bool(lo > 0.0 or hi < 0.0))
        out.append(row)
    return out

