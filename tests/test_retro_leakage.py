"""RETRO leakage filter: longest common token substring and bpb below an overlap threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relm.retro.leakage import filtered_bpb, longest_common_substring, overlap_ratios


def brute_lcs(a, b) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            n = 0
            while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
                n += 1
            best = max(best, n)
    return best


def test_lcs_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.integers(0, 4, rng.integers(0, 12)), rng.integers(0, 4, rng.integers(0, 12))
        assert longest_common_substring(a, b) == brute_lcs(list(a), list(b))
    assert longest_common_substring(np.array([1, 2, 3]), np.array([0, 0, 0]), pad=0) == 0
    assert longest_common_substring(np.array([0, 0]), np.array([0, 0, 5]), pad=0) == 0


def test_overlap_ratio_and_filtered_bpb():
    chunks = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    neighbours = np.array([[[1, 2, 3, 0], [4, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]], [[9, 9, 9, 9], [1, 1, 1, 1]]])
    mask = neighbours != 0
    r = overlap_ratios(chunks, neighbours, mask)
    assert r.tolist() == [0.75, 0.0, 1.0]
    rows = filtered_bpb(np.array([8.0, 4.0, 2.0]), np.array([4, 4, 4]), r, alphas=(0.0, 0.75, 1.0))
    assert [x["chunks"] for x in rows] == [1, 2, 3]
    assert rows[0]["bpb"] == pytest.approx(1.0) and rows[1]["bpb"] == pytest.approx(12 / 8)
    assert rows[2]["bpb"] == pytest.approx(14 / 12)
    assert math.isnan(filtered_bpb(np.array([1.0]), np.array([1]), np.array([0.5]), alphas=(0.25,))[0]["bpb"])


def test_filtered_comparison_relative_bpb_and_interval():
    from relm.retro.leakage import filtered_comparison

    rng = np.random.default_rng(0)
    a = rng.uniform(50, 150, size=200)
    nbytes = np.full(200, 100)
    ratios = np.r_[np.zeros(100), np.full(100, 0.5)]
    same = filtered_comparison(a, a.copy(), nbytes, ratios, (0.0, 1.0))
    assert [c["rel_diff"] for c in same] == [0.0, 0.0] and same[1]["rel_diff_ci"] == (0.0, 0.0)
    assert not same[1]["excludes_zero"]
    half = filtered_comparison(a, np.r_[a[:100] * 0.5, a[100:]], nbytes, ratios, (0.0, 0.25, 1.0))
    assert half[0]["rel_diff"] == pytest.approx(-0.5) and half[0]["excludes_zero"] and half[0]["chunks"] == 100
    assert -0.5 < half[2]["rel_diff"] < 0 and half[2]["rel_diff_ci"][0] < half[2]["rel_diff"] < half[2]["rel_diff_ci"][1]
    empty = filtered_comparison(a, a, nbytes, ratios + 0.1, (0.0,))
    assert empty[0]["chunks"] == 0 and math.isnan(empty[0]["rel_diff"])

