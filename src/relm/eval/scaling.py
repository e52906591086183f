"""Datastore scaling study: subsampling after retrieval, candidate checks, scaling-law fits, FLOPs.

Subsampling follows MassiveDS (Shao et al. 2024): retrieve K candidates once from the full datastore,
then for each fraction p keep every passage independently with probability p and take the top k of
the survivors. The keep decision is a hash of (seed, passage id), so a passage is kept or dropped for
every query alike, exactly as if the datastore itself had been subsampled with `kept_passages`.
The result equals "subsample, then exact top-k" whenever at least k of the K candidates survive: the
true top-k of the subsample are then all among the full datastore's top K (anything outside the top K
scores below every candidate, hence below the k survivors). `shortfall_probability` bounds how often
that fails and `check_candidates` says which K is enough.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..retrieval.subsample import check_fraction, kept_mask, kept_passages  # noqa: F401 (kept_* re-exported)
from ..retrieval.topk import PAD_ID, topk

log = logging.getLogger(__name__)


def subsample_topk(scores: np.ndarray, ids: np.ndarray, p: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of the candidates (n_q, K) that survive subsampling at fraction p, as (scores, ids) (n_q, k).

    Survivors stay ordered by score (ties by smaller id, as `topk`); rows with fewer than k survivors
    are padded with (-inf, -1). p = 1 returns the top k of the candidates unchanged.
    """
    check_fraction(p)
    scores = np.asarray(scores)
    ids = np.asarray(ids, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ConfigError(f"scores and ids must both be (n_q, K); got {scores.shape} and {ids.shape}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if scores.shape[1] < k:
        raise ConfigError(f"K < k: {scores.shape[1]} candidates per query cannot give a top {k}; retrieve more")
    keep = kept_mask(ids, p, seed)
    return topk(np.where(keep, scores, -np.inf), k, np.where(keep, ids, PAD_ID))


def shortfall_probability(K: int, p: float, k: int) -> float:
    """P(fewer than k of K candidates survive at fraction p) = BinomCDF(k - 1; K, p)."""
    from scipy.stats import binom

    check_fraction(p)
    if k < 1 or K < 0:
        raise ConfigError(f"need k >= 1 and K >= 0, got k={k}, K={K}")
    return float(binom.cdf(k - 1, K, p))


def candidates_needed(p: float, k: int, *, tolerance: float = 0.01) -> int:
    """Smallest K with shortfall_probability(K, p, k) <= tolerance (the CDF decreases in K)."""
    if not 0.0 < tolerance < 1.0:
        raise ConfigError(f"tolerance must be in (0, 1), got {tolerance}")
    hi = max(k, 1)
    while shortfall_probability(hi, p, k) > tolerance:
        hi *= 2
    lo = max(k - 1, 0)  # shortfall is 1 below k candidates
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if shortfall_probability(mid, p, k) <= tolerance else (mid, hi)
    return hi


def check_candidates(K: int, fractions: Sequence[float], k: int, *, tolerance: float = 0.01) -> list[str]:
    """One warning per fraction whose top-k from K candidates is inexact with probability > tolerance."""
    warnings = []
    for p in fractions:
        prob = shortfall_probability(K, p, k)
        if prob > tolerance:
            need = candidates_needed(p, k, tolerance=tolerance)
            warnings.append(f"fraction {p}: P(fewer than {k} of K={K} candidates survive) = {prob:.3g} > "
                            f"{tolerance}; retrieve K >= {need} candidates")
    return warnings


# ---- scaling-law fits ---------------------------------------------------------------------------

def _law(X: np.ndarray, a: float, *rest: float) -> np.ndarray:
    """L = exp(a - sum_j e_j X_j) + c; X (m, n) are centred log sizes, rest = (e_1..e_m, c)."""
    *exps, c = rest
    return np.exp(a - np.dot(np.asarray(exps), X)) + c


def _fit_once(X: np.ndarray, L: np.ndarray, starts: Sequence[np.ndarray]) -> np.ndarray | None:
    """Best least-squares fit of `_law` from several starts within bounds e_j in [0, 5], c >= 0."""
    from scipy.optimize import curve_fit

    m = X.shape[0]
    lower = [-np.inf] + [0.0] * m + [0.0]
    upper = [np.inf] + [5.0] * m + [np.inf]
    best, best_sse = None, np.inf
    for p0 in starts:
        try:
            # overflow in exp at far-off trial points and "covariance not estimated" are expected here
            with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
                warnings.simplefilter("ignore")
                params, _ = curve_fit(_law, X, L, p0=p0, bounds=(lower, upper), maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((_law(X, *params) - L) ** 2))
        if np.isfinite(sse) and sse < best_sse:
            best, best_sse = params, sse
    return best


def _starts(X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    """Initial guesses: for c0 below min(L), a log-linear regression of log(L - c0) on X."""
    starts = []
    A = np.vstack([np.ones(X.shape[1]), -X]).T
    for frac in (0.0, 0.5, 0.9, 0.99):
        c0 = frac * float(L.min())
        coef, *_ = np.linalg.lstsq(A, np.log(np.maximum(L - c0, 1e-12)), rcond=None)
        starts.append(np.concatenate([[coef[0]], np.clip(coef[1:], 1e-3, 4.9), [c0]]))
    return starts


def _nan_result(names: list[str], n_points: int, warning: str | None) -> dict:
    """The result layout with every value and CI nan (a failed or unidentifiable fit)."""
    keys = ["alpha", *names, "c"]
    out: dict = {k: math.nan for k in keys} | {f"{k}_ci": (math.nan, math.nan) for k in keys}
    out |= {"rmse": math.nan, "n_points": n_points}
    if warning is not None:
        log.warning(warning)
        out["warning"] = warning
    return out


def _fit_with_bootstrap(logs: list[np.ndarray], L: np.ndarray, names: list[str], n_boot: int, seed: int,
                        enough: Callable[[np.ndarray], bool]) -> dict:
    """Fit L = alpha * prod_j size_j**(-e_j) + c on log sizes, with percentile bootstrap CIs over points.

    Logs are centred for conditioning (alpha absorbs the centre); `enough(idx)` says whether a resample
    still identifies the law.
    """
    centre = np.array([lg.mean() for lg in logs])
    X = np.vstack([lg - c for lg, c in zip(logs, centre, strict=True)])
    out = _nan_result(names, len(L), None)

    def unpack(params: np.ndarray) -> np.ndarray:
        a, *exps, c = params
        with np.errstate(over="ignore"):
            return np.array([np.exp(a + float(np.dot(exps, centre))), *exps, c])

    params = _fit_once(X, L, _starts(X, L))
    if params is None:
        return _nan_result(names, len(L), "the scaling-law fit did not converge; values and CIs are nan")
    out.update(zip(["alpha", *names, "c"], map(float, unpack(params)), strict=True))
    out["rmse"] = float(np.sqrt(np.mean((_law(X, *params) - L) ** 2)))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(L), len(L))
        if not enough(idx):
            continue
        bp = _fit_once(X[:, idx], L[idx], [params])
        if bp is not None:
            boots.append(unpack(bp))
    if n_boot == 0:
        return out
    if len(boots) < max(10, n_boot // 2):
        out["warning"] = f"only {len(boots)} of {n_boot} bootstrap fits succeeded; CIs are nan"
        log.warning(out["warning"])
        return out
    lo, hi = np.percentile(np.array(boots), [2.5, 97.5], axis=0)
    for j, name in enumerate(["alpha", *names, "c"]):
        out[f"{name}_ci"] = (float(lo[j]), float(hi[j]))
    return out


def _as_points(*arrays: np.ndarray) -> list[np.ndarray]:
    """Flat float64 copies of (sizes..., losses), checked: equal lengths, positive sizes, finite values."""
    arrs = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    if len({len(a) for a in arrs}) != 1:
        raise ConfigError(f"sizes and losses must have the same length, got {[len(a) for a in arrs]}")
    if not all(np.all(np.isfinite(a)) for a in arrs) or not all(np.all(a > 0) for a in arrs[:-1]):
        raise ConfigError("sizes must be positive and finite, losses finite")
    return arrs


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0 (0 skips the bootstrap), got {n_boot}")


def fit_power_law(R: np.ndarray, L: np.ndarray, *, n_boot: int = 500, seed: int = 0) -> dict:
    """Fit L(R) = alpha * R**(-gamma) + c (datastore tokens R, loss L), one point per (R, seed).

    Fitted as L = exp(a - gamma * (log R - mean log R)) + c with gamma in [0, 5], c >= 0, by
    scipy.optimize.curve_fit from several starts; CIs are 95% percentile bootstraps over points.
    Returns {"alpha", "gamma", "c", "alpha_ci", "gamma_ci", "c_ci", "rmse", "n_points"} plus "warning"
    (and nan values/CIs) when the fit fails or fewer than 3 distinct R make it unidentifiable.
    """
    R, L = _as_points(R, L)
    _check_n_boot(n_boot)
    logR = np.log(R)
    if len(np.unique(R)) < 3:
        return _nan_result(["gamma"], len(L), f"need >= 3 distinct datastore sizes to fit alpha, gamma and c; "
                           f"got {len(np.unique(R))}")
    return _fit_with_bootstrap([logR], L, ["gamma"], n_boot, seed, lambda idx: len(np.unique(R[idx])) >= 3)


def fit_joint_law(N: np.ndarray, R: np.ndarray, L: np.ndarray, *, n_boot: int = 500, seed: int = 0) -> dict:
    """Fit L(N, R) = alpha * N**(-beta) * R**(-gamma) + c over LM sizes N (parameters) and datastore tokens R.

    Same parameterisation and bootstrap as `fit_power_law`; returns alpha, beta, gamma, c, their "_ci",
    "rmse" and "n_points". Needs >= 2 distinct N and >= 2 distinct R (ConfigError otherwise) and at
    least 5 distinct (N, R) pairs for four parameters (a "warning" and nan values otherwise).
    """
    N, R, L = _as_points(N, R, L)
    _check_n_boot(n_boot)
    n_N, n_R = len(np.unique(N)), len(np.unique(R))
    if n_N < 2 or n_R < 2:
        raise ConfigError(f"a joint law needs >= 2 distinct LM sizes and >= 2 distinct datastore sizes; got "
                          f"{n_N} and {n_R} (use fit_power_law for a single LM)")

    def enough(idx: np.ndarray) -> bool:
        return len(np.unique(N[idx])) >= 2 and len(np.unique(R[idx])) >= 2 and \
            len({(n, r) for n, r in zip(N[idx], R[idx], strict=True)}) >= 5

    if not enough(np.arange(len(L))):
        return _nan_result(["beta", "gamma"], len(L), "need >= 5 distinct (N, R) pairs to fit alpha, beta, gamma "
                           "and c")
    return _fit_with_bootstrap([np.log(N), np.log(R)], L, ["beta", "gamma"], n_boot, seed, enough)


# ---- compute accounting -------------------------------------------------------------------------

def lm_flops_per_token(n_params: int, n_layers: int, d_model: int, context: int) -> float:
    """Forward FLOPs per token of a decoder LM: 2 N + 2 n_layer n_ctx d_model (Kaplan et al. 2020, Table 1).

    N = non-embedding parameters, `context` = tokens attended to (n_ctx), d_model standing in for d_attn.
    """
    return 2.0 * n_params + 2.0 * n_layers * context * d_model


def retrieval_flops_per_query(encoder_params: int, query_tokens: int, n_passages: int, dim: int, *,
                              search: str = "exact", **kw: int) -> float:
    """FLOPs to encode one query and search n_passages vectors of dimension dim.

    Encoder: 2 * encoder_params * query_tokens (forward pass). Search:
    - "exact": 2 * dim * n_passages (one inner product per passage);
    - "ivfpq" (kw nlist, nprobe, pq_m, optional pq_nbits=8, refine=0): coarse quantiser 2 * dim * nlist,
      the per-query lookup table 2 * dim * 2**pq_nbits, the scan nprobe * (n_passages / nlist) * pq_m
      (one table lookup-add per code byte, counted as 1 FLOP), and an exact re-rank 2 * dim * refine.
    """
    encode = 2.0 * encoder_params * query_tokens
    if search == "exact":
        if kw:
            raise ConfigError(f"exact search takes no options, got {sorted(kw)}")
        return encode + 2.0 * dim * n_passages
    if search == "ivfpq":
        missing = {"nlist", "nprobe", "pq_m"} - kw.keys()
        unknown = kw.keys() - {"nlist", "nprobe", "pq_m", "pq_nbits", "refine"}
        if missing or unknown:
            raise ConfigError(f"ivfpq needs nlist, nprobe, pq_m (optional pq_nbits, refine); "
                              f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        nlist, nprobe, pq_m = kw["nlist"], kw["nprobe"], kw["pq_m"]
        coarse = 2.0 * dim * nlist
        table = 2.0 * dim * 2 ** kw.get("pq_nbits", 8)
        scan = min(nprobe, nlist) * (n_passages / nlist) * pq_m
        return encode + coarse + table + scan + 2.0 * dim * kw.get("refine", 0)
    raise ConfigError(f"unknown search {search!r}; choose from ['exact', 'ivfpq']")


def flops_per_evaluated_token(n_params: int, n_layers: int, d_model: int, input_tokens: int, scored_tokens: int,
                              *, retrieval_flops: float = 0.0) -> float:
    """FLOPs per scored token of one retrieval-augmented evaluation window.

    = lm_flops_per_token(n_params, n_layers, d_model, input_tokens) * input_tokens / scored_tokens
      + retrieval_flops / scored_tokens,
    where input_tokens is everything the LM reads per query (prepended passages + context + scored
    tokens), scored_tokens those whose loss counts, and retrieval_flops `retrieval_flops_per_query`.
    """
    if scored_tokens < 1 or input_tokens < scored_tokens:
        raise ConfigError(f"need 1 <= scored_tokens <= input_tokens, got {scored_tokens} and {input_tokens}")
    lm = lm_flops_per_token(n_params, n_layers, d_model, input_tokens) * input_tokens
    return (lm + retrieval_flops) / scored_tokens
