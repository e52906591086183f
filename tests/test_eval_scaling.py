"""Datastore scaling study: subsampling after retrieval, shortfall checks, scaling-law fits, FLOPs, reports."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from relm import ConfigError
from relm.eval import scaling as S
from relm.eval.report import FIELDS, markdown_table, plot_scaling, summarize, write_csv
from relm.retrieval.topk import topk


def candidates(n_q: int = 30, n: int = 300, K: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each query's K candidates: distinct ids drawn from 0..n-1 (overlapping across queries), best first."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(n, K, replace=False) for _ in range(n_q)]).astype(np.int64)
    scores = rng.normal(size=(n_q, K)).astype(np.float32)
    return topk(scores, K, ids)


# ---- subsampling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
def test_kept_fraction_is_p(p):
    assert abs(S.kept_passages(100_000, p, seed=3).mean() - p) < 0.01


def test_kept_mask_is_keyed_on_the_passage_id_across_queries():
    scores, ids = candidates()
    out_s, out_i = S.subsample_topk(scores, ids, p=0.5, k=ids.shape[1], seed=7)
    decision: dict[int, set[bool]] = {}
    for q in range(ids.shape[0]):
        survivors = set(out_i[q][out_i[q] >= 0].tolist())
        for i in ids[q].tolist():
            decision.setdefault(i, set()).add(i in survivors)
    assert all(len(d) == 1 for d in decision.values())  # kept for one query -> kept for all
    assert any(d == {True} for d in decision.values()) and any(d == {False} for d in decision.values())
    mask = S.kept_passages(300, 0.5, seed=7)
    assert all(mask[i] == d.pop() for i, d in decision.items())


def test_different_seeds_differ_and_same_seed_repeats():
    ids = np.arange(1000)
    assert not np.array_equal(S.kept_mask(ids, 0.5, 0), S.kept_mask(ids, 0.5, 1))
    assert np.array_equal(S.kept_mask(ids, 0.5, 0), S.kept_mask(ids, 0.5, 0))
    assert not S.kept_mask(np.array([-1, -1]), 1.0, 0).any()  # padding never survives


def test_nested_fractions_for_one_seed():
    """u(seed, id) < p: a smaller fraction keeps a subset of a larger one (nested datastores, as MassiveDS)."""
    small, large = S.kept_passages(10_000, 0.1, 5), S.kept_passages(10_000, 0.4, 5)
    assert np.all(large[small])


def test_p_one_returns_topk_unchanged():
    scores, ids = candidates()
    s, i = S.subsample_topk(scores, ids, p=1.0, k=10, seed=0)
    np.testing.assert_array_equal(s, scores[:, :10])
    np.testing.assert_array_equal(i, ids[:, :10])


@pytest.mark.parametrize("p,seed", [(0.5, 0), (0.1, 1), (0.03, 2)])
def test_equals_subsampling_the_datastore_then_exact_topk(p, seed):
    rng = np.random.default_rng(seed)
    n, k = 2000, 10
    scores = rng.normal(size=(25, n)).astype(np.float32)
    kept = S.kept_passages(n, p, seed)
    want_s, want_i = topk(scores[:, kept], k, np.nonzero(kept)[0])
    # candidates = the full set
    got_s, got_i = S.subsample_topk(scores, np.broadcast_to(np.arange(n), scores.shape), p, k, seed)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)
    # candidates = the full datastore's top K: exact on every row where at least k candidates survive
    K = S.candidates_needed(p, k, tolerance=0.05)
    cand_s, cand_i = topk(scores, K)
    got_s, got_i = S.subsample_topk(cand_s, cand_i, p, k, seed)
    enough = (got_i >= 0).sum(axis=1) == k
    assert enough.mean() > 0.8
    np.testing.assert_array_equal(got_i[enough], want_i[enough])


def test_padding_when_fewer_than_k_survive():
    scores, ids = candidates(K=20)
    s, i = S.subsample_topk(scores, ids, p=0.05, k=20, seed=1)
    assert (i == -1).any()
    assert np.all(np.isneginf(s[i == -1]))
    valid = s[:, :-1] >= s[:, 1:]
    assert np.all(valid | np.isneginf(s[:, 1:]))  # survivors stay sorted by score


def test_subsample_argument_errors():
    scores, ids = candidates(K=5)
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            S.subsample_topk(scores, ids, p, 3, 0)
    with pytest.raises(ConfigError, match="K < k"):
        S.subsample_topk(scores, ids, 0.5, 6, 0)
    with pytest.raises(ConfigError, match="k must be"):
        S.subsample_topk(scores, ids, 0.5, 0, 0)


# ---- candidate shortfall --------------------------------------------------------------------------

def test_shortfall_probability_is_the_binomial_cdf():
    assert S.shortfall_probability(10, 1.0, 10) == 0.0
    assert S.shortfall_probability(9, 1.0, 10) == 1.0
    assert S.shortfall_probability(2, 0.5, 1) == pytest.approx(0.25)  # both dropped
    assert S.shortfall_probability(3, 0.5, 2) == pytest.approx(0.5)  # 0 or 1 of 3 survive: (1 + 3) / 8


def test_check_candidates_warns_with_a_sufficient_K():
    msgs = S.check_candidates(100, [1.0, 0.5, 0.1, 0.05], k=10)
    assert len(msgs) == 2 and "fraction 0.1" in msgs[0] and "fraction 0.05" in msgs[1]
    need = int(msgs[0].split("K >= ")[1].split()[0])
    assert S.shortfall_probability(need, 0.1, 10) <= 0.01 < S.shortfall_probability(need - 1, 0.1, 10)
    assert S.check_candidates(need, [0.1], k=10) == []


# ---- scaling-law fits -----------------------------------------------------------------------------

@pytest.mark.parametrize("noise_seed", [0, 1])
def test_fit_power_law_recovers_gamma(noise_seed):
    alpha, gamma, c = 50.0, 0.3, 1.8
    R = np.repeat(np.logspace(7, 10, 7), 3)  # 7 sizes x 3 seeds
    L = alpha * R**-gamma + c + np.random.default_rng(noise_seed).normal(0, 0.005, len(R))
    fit = S.fit_power_law(R, L, n_boot=200, seed=0)
    assert "warning" not in fit and fit["n_points"] == 21
    assert fit["gamma"] == pytest.approx(gamma, abs=0.03)
    assert fit["c"] == pytest.approx(c, abs=0.02)
    for name, true in (("gamma", gamma), ("c", c), ("alpha", alpha)):
        lo, hi = fit[f"{name}_ci"]
        assert lo <= true <= hi
    assert fit["rmse"] < 0.01


def test_fit_power_law_with_too_few_sizes_warns():
    fit = S.fit_power_law([1e6, 1e6, 1e7, 1e7], [3.0, 3.1, 2.5, 2.6])
    assert "warning" in fit and "3 distinct" in fit["warning"]
    assert all(math.isnan(v) for v in fit["gamma_ci"]) and math.isnan(fit["gamma"])
    with pytest.raises(ConfigError):
        S.fit_power_law([1e6, 1e7], [3.0])


def test_fit_joint_law_recovers_beta_and_gamma():
    R = np.tile(np.logspace(7, 10, 5), 3)
    N = np.repeat([1e8, 4e8, 1.6e9], 5)
    N, R = np.tile(N, 2), np.tile(R, 2)  # 2 seeds
    L = 300 * N**-0.2 * R**-0.25 + 1.5 + np.random.default_rng(0).normal(0, 0.003, len(R))
    fit = S.fit_joint_law(N, R, L, n_boot=150, seed=0)
    assert "warning" not in fit
    assert fit["beta"] == pytest.approx(0.2, abs=0.04) and fit["gamma"] == pytest.approx(0.25, abs=0.04)
    assert fit["beta_ci"][0] <= 0.2 <= fit["beta_ci"][1]
    assert fit["gamma_ci"][0] <= 0.25 <= fit["gamma_ci"][1]
    with pytest.raises(ConfigError, match="distinct LM sizes"):
        S.fit_joint_law(np.full(6, 1e8), np.logspace(6, 8, 6), np.ones(6))


# ---- FLOPs ----------------------------------------------------------------------------------------

def test_flops_hand_checked():
    assert S.lm_flops_per_token(1000, 2, 8, 10) == 2000 + 2 * 2 * 10 * 8  # 2320
    assert S.retrieval_flops_per_query(100, 5, 50, 4) == 1000 + 400
    # ivfpq: encode 1000 + coarse 2*4*10 + table 2*4*2**4 + scan 2*(1000/10)*2 + refine 2*4*5
    got = S.retrieval_flops_per_query(100, 5, 1000, 4, search="ivfpq", nlist=10, nprobe=2, pq_m=2, pq_nbits=4,
                                      refine=5)
    assert got == 1000 + 80 + 128 + 400 + 40
    # (2320 FLOPs/token * 10 input tokens + 1400 retrieval FLOPs) / 4 scored tokens
    assert S.flops_per_evaluated_token(1000, 2, 8, 10, 4, retrieval_flops=1400) == (23200 + 1400) / 4
    with pytest.raises(ConfigError, match="unknown search"):
        S.retrieval_flops_per_query(1, 1, 1, 1, search="hnsw")
    with pytest.raises(ConfigError, match="nprobe"):
        S.retrieval_flops_per_query(1, 1, 1, 1, search="ivfpq", nlist=4)


# ---- reports --------------------------------------------------------------------------------------

def scaling_rows() -> tuple[list[dict], dict]:
    rows = []
    for lm, offset in (("small", 4.0), ("large", 2.0)):
        for fraction in (0.1, 0.5, 1.0):
            for seed in (0, 1, 2):
                ppl = offset + 10.0 * fraction**-0.2 / 10 + 0.01 * seed
                rows.append({"lm": lm, "fraction": fraction, "seed": seed,
                             "datastore_tokens": int(fraction * 1e9), "perplexity": ppl, "loss": math.log(ppl),
                             "bits_per_byte": math.log2(ppl) / 4, "flops_per_token": 1e9})
    baselines = {"small": {"perplexity": 6.5, "loss": math.log(6.5), "bits_per_byte": 0.7},
                 "large": {"perplexity": 4.5, "loss": math.log(4.5), "bits_per_byte": 0.55}}
    return rows, baselines


def test_csv_and_markdown(tmp_path):
    rows, baselines = scaling_rows()
    path = write_csv(rows, tmp_path / "scaling.csv")
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 18 and list(back[0]) == FIELDS
    assert float(back[0]["perplexity"]) == pytest.approx(rows[0]["perplexity"])
    table = markdown_table(rows, baselines)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 2 + 6
    assert "| small | no retrieval | 0 | - | 6.500 | 0.7000 |" in lines
    small_01 = [r["perplexity"] for r in rows if r["lm"] == "small" and r["fraction"] == 0.1]
    want = f"{np.mean(small_01):.3f} ± {np.std(small_01, ddof=1):.3f}"
    assert any(line.startswith("| small | 0.1 | 100M | 3 |") and want in line for line in lines)
    assert summarize(rows)[0]["perplexity"]["min"] <= summarize(rows)[0]["perplexity"]["max"]


@pytest.mark.parametrize("with_fit", [False, True])
def test_plot_scaling_writes_a_png(tmp_path, with_fit):
    rows, baselines = scaling_rows()
    fit = None
    if with_fit:
        small = [r for r in rows if r["lm"] == "small"]
        R = [r["datastore_tokens"] for r in small]
        fit = {"small": S.fit_power_law(R, [r["loss"] for r in small], n_boot=20)}
    out = plot_scaling(rows, baselines, tmp_path / "scaling.png", fit=fit, title="test")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaling.png"]  # no .tmp.png left behind
