"""`relm scale`: loss against datastore size, by subsampling after retrieval (MassiveDS).

Per LM: score every window once without retrieval; retrieve K candidates per window once from the full
datastore; for each fraction p and seed, keep each candidate with probability p (a hash of seed and
passage id, see scaling.kept_mask), take the top survivors through the passage filters, and score the
window with the k kept passages prepended. All (p, seed) inputs go through the LM in one batched,
deduplicated pass (at p = 1 every seed is the same input, scored once). `direct` fractions are also
run the expensive way, searching the really subsampled datastore again, to show both agree.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..lm.base import ScoreRequest
from ..retrieval.options import Subsample
from .evaluate import CANDIDATE_SLACK, Evaluator
from .filters import apply_filters
from .metrics import summarize
from .scaling import (
    check_candidates,
    fit_power_law,
    kept_passages,
    lm_flops_per_token,
    subsample_topk,
)
from .variants import Variant

log = logging.getLogger(__name__)


def check_fractions(fractions: list[float]) -> list[float]:
    if not fractions:
        raise ConfigError("--fractions is empty; give values in (0, 1], e.g. 0.01,0.1,1")
    for p in fractions:
        if not 0 < p <= 1:
            raise ConfigError(f"--fractions: {p} is outside (0, 1]")
    return sorted(set(fractions))


def passage_tokens(ds, lm, *, block: int = 4096) -> np.ndarray:
    """LM tokens of every passage (int64, one per passage id): the datastore size R is counted in these."""
    out = np.empty(len(ds), dtype=np.int64)
    tok = lm.tokenizer.backend_tokenizer
    for a in range(0, len(ds), block):
        ids = range(a, min(a + block, len(ds)))
        encs = tok.encode_batch([ds.passage(i) for i in ids], add_special_tokens=False)
        out[a : a + len(encs)] = [len(e.ids) for e in encs]
    return out


def run_scaling(ev: Evaluator, eval_sets, variant: Variant, fractions: list[float], seeds: int, candidates: int,
                *, direct: list[float] | None = None, token_counts: np.ndarray | None = None) -> dict[str, Any]:
    """Rows (one per fraction, seed and method), the no-retrieval baseline, warnings and timings."""
    fractions = check_fractions(fractions)
    k = variant.k
    if candidates < k:
        raise ConfigError(f"--candidates K = {candidates} < k = {k}; K must be at least k")
    if direct and ev.retriever_for(variant).kind == "hybrid":
        raise ConfigError("--direct re-searches a subsampled datastore, which changes a fusion's ranks; use a "
                          "dense or BM25 retriever with it")
    warnings = check_candidates(candidates, fractions, k * CANDIDATE_SLACK)
    for w in warnings:
        log.warning(w)
    t0 = time.perf_counter()
    windows = ev.windows(eval_sets)
    full = ev.score([ScoreRequest(w.ids, w.n_target) for w in windows])
    t1 = time.perf_counter()
    tokens = np.array([w.n_tokens for w in windows])
    nbytes = np.array([w.n_bytes for w in windows])
    queries = [ev._query_text(w.context_ids, variant) for w in windows]
    scored_text = [ev.lm.decode(w.target_ids) for w in windows]
    K = min(candidates, len(ev.ds))
    scores, ids = ev.search(variant, queries, K)
    t2 = time.perf_counter()
    token_counts = passage_tokens(ev.ds, ev.lm) if token_counts is None else token_counts

    combos: list[tuple[str, float, int, list[list[int]]]] = []
    for p in fractions:
        for seed in range(seeds):
            _, surv = subsample_topk(scores, ids, p, min(k * CANDIDATE_SLACK, K), seed)
            combos.append(("after-retrieval", p, seed, _filtered(ev, surv, scored_text, k)))
    for p in check_fractions(direct) if direct else []:
        for seed in range(seeds):
            _, surv = ev.search(variant, queries, k * CANDIDATE_SLACK, subsample=Subsample(p, seed))
            combos.append(("direct", p, seed, _filtered(ev, surv, scored_text, k)))
    t3 = time.perf_counter()
    lps = ev.score_with_passages([w for _ in combos for w in windows], [c for *_, ch in combos for c in ch],
                                 baseline=full * len(combos))
    t4 = time.perf_counter()
    shape = ev.lm.shape()
    enc_params = _encoder_params(ev.ds)
    rows = []
    for j, (method, p, seed, chosen) in enumerate(combos):
        part = lps[j * len(windows) : (j + 1) * len(windows)]
        nll = np.array([-lp[w.target_mask].sum() for w, lp in zip(windows, part, strict=True)])
        m = summarize(nll, tokens, nbytes)
        kept = kept_passages(len(ev.ds), p, seed)
        inputs = np.array([len(w.ids) + sum(len(ev.passage_ids(i)) for i in c) for w, c in zip(windows, chosen,
                                                                                              strict=True)])
        lm_flops = sum(lm_flops_per_token(shape["n_params"], shape["n_layers"], shape["d_model"], int(n)) * n
                       for n in inputs)
        q_tokens = sum(len(w.context_ids) for w in windows)
        retr = 2.0 * enc_params * q_tokens + 2.0 * ev.ds.dim * int(kept.sum()) * len(windows)
        rows.append({
            "lm": ev.lm.name, "method": method, "fraction": p, "seed": seed,
            "datastore_tokens": int(token_counts[kept].sum()), "datastore_passages": int(kept.sum()),
            "perplexity": m["perplexity"], "loss": m["loss"], "bits_per_byte": m["bits_per_byte"],
            "mean_k": float(np.mean([len(c) for c in chosen])),
            "flops_per_token": (lm_flops + retr) / tokens.sum(),
            "retrieval_flops_per_token": retr / tokens.sum(),
        })
    base_nll = np.array([-lp[-w.n_target :][w.target_mask].sum() for w, lp in zip(windows, full, strict=True)])
    baseline = summarize(base_nll, tokens, nbytes)
    baseline["flops_per_token"] = sum(
        lm_flops_per_token(shape["n_params"], shape["n_layers"], shape["d_model"], len(w.ids)) * len(w.ids)
        for w in windows) / tokens.sum()
    return {"rows": rows, "baseline": baseline, "warnings": warnings, "windows": len(windows),
            "candidates": K, "variant": variant.to_dict(), "agreement": agreement(rows),
            "datastore": {"passages": len(ev.ds), "tokens": int(token_counts.sum())},
            "seconds": {"baseline": t1 - t0, "retrieve": t2 - t1, "subsample": t3 - t2, "score": t4 - t3}}


def _filtered(ev: Evaluator, surv: np.ndarray, scored_text: list[str], k: int) -> list[list[int]]:
    out = []
    for row, text in zip(surv, scored_text, strict=True):
        cand = [int(i) for i in row if i >= 0]
        kept, _ = apply_filters([ev.passage_text(i) for i in cand], text, ev.filters)
        out.append([cand[j] for j in kept[:k]])
    return out


def _encoder_params(ds) -> int:
    try:
        model = ds.encoder().model
        return int(sum(p.numel() for p in model.parameters()))
    except AttributeError:  # an encoder without a torch model (tests)
        return 0


def agreement(rows: list[dict]) -> list[dict]:
    """For fractions run both ways: the largest |loss difference| between methods over seeds, beside
    the seed-to-seed standard deviation of the loss (the noise the difference is compared with)."""
    out = []
    for p in sorted({r["fraction"] for r in rows if r["method"] == "direct"}):
        a = {r["seed"]: r["loss"] for r in rows if r["fraction"] == p and r["method"] == "after-retrieval"}
        d = {r["seed"]: r["loss"] for r in rows if r["fraction"] == p and r["method"] == "direct"}
        diffs = [abs(a[s] - d[s]) for s in a if s in d]
        noise = float(np.std(list(a.values()), ddof=1)) if len(a) > 1 else 0.0
        out.append({"fraction": p, "max_abs_loss_diff": max(diffs) if diffs else float("nan"),
                    "seed_std_loss": noise,
                    "within_noise": bool(diffs) and max(diffs) <= max(noise, 1e-6)})
    return out


def fit_rows(rows: list[dict], *, n_boot: int = 500) -> dict[str, dict]:
    """The power law L(R) = α·R^−γ + c per LM, over the after-retrieval rows."""
    fits = {}
    for lm in sorted({r["lm"] for r in rows}):
        pts = [r for r in rows if r["lm"] == lm and r["method"] == "after-retrieval"]
        fits[lm] = fit_power_law(np.array([r["datastore_tokens"] for r in pts], float),
                                 np.array([r["loss"] for r in pts]), n_boot=n_boot)
    return fits
