"""LM evaluation metrics: bits per byte, token-weighted summaries, bootstrap intervals, token byte lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relm import ConfigError
from relm.eval import metrics as M
from relm.eval.metrics import (
    bits_per_byte,
    bootstrap_ppl_ci,
    mean_loss,
    paired_bootstrap,
    perplexity,
    summarize,
    token_byte_lengths,
)


def test_bits_per_byte_by_hand():
    # 3 tokens, each with NLL ln 2 nats = 1 bit, over 6 bytes -> 3 bits / 6 bytes
    assert bits_per_byte(3 * math.log(2), 6) == pytest.approx(0.5)
    assert bits_per_byte(0.0, 1) == 0.0
    with pytest.raises(ConfigError, match="n_bytes"):
        bits_per_byte(1.0, 0)


def test_perplexity_and_loss():
    assert mean_loss(3.0, 2) == pytest.approx(1.5)
    assert perplexity(4 * math.log(2), 2) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="n_tokens"):
        perplexity(1.0, 0)


def test_summarize_is_token_weighted():
    nll = np.array([100 * 1.0, 1 * 3.0])  # window losses 1 and 3 nats/token
    tokens = np.array([100, 1])
    bytes_ = np.array([400, 4])
    s = summarize(nll, tokens, bytes_)
    assert s["windows"] == 2 and s["tokens"] == 101 and s["bytes"] == 404
    assert s["nll"] == pytest.approx(103.0)
    assert s["loss"] == pytest.approx(103 / 101)
    assert s["perplexity"] == pytest.approx(math.exp(103 / 101))
    assert s["perplexity"] < (math.e + math.e**3) / 2 - 5  # not the mean of per-window perplexities
    assert s["bits_per_byte"] == pytest.approx(103 / math.log(2) / 404)


@pytest.mark.parametrize("args", [
    ([1.0, 2.0], [1, 2], [1]),
    ([[1.0]], [[1]], [[1]]),
    ([], [], []),
])
def test_summarize_rejects_bad_shapes(args):
    with pytest.raises(ConfigError):
        summarize(*map(np.asarray, args))


def synthetic_run(n=200, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 200, size=n)
    nll = tokens * rng.normal(3.0, 0.5, size=n)  # about 3 nats/token, varying by window
    return nll, tokens


def test_paired_bootstrap_identical_runs():
    nll, tokens = synthetic_run()
    r = paired_bootstrap(nll, nll.copy(), tokens, n_boot=200)
    assert r["loss_diff"] == 0.0 and r["ppl_rel_diff"] == 0.0
    assert r["loss_diff_ci"] == (0.0, 0.0) and r["ppl_rel_diff_ci"] == (0.0, 0.0)
    assert r["excludes_zero"] is False


def test_paired_bootstrap_detects_a_better_run():
    nll_a, tokens = synthetic_run()
    rng = np.random.default_rng(1)
    nll_b = nll_a - tokens * rng.normal(0.1, 0.05, size=len(tokens))  # b about 0.1 nats/token better
    r = paired_bootstrap(nll_a, nll_b, tokens, n_boot=500)
    assert r["excludes_zero"] is True
    lo, hi = r["loss_diff_ci"]
    assert lo <= r["loss_diff"] <= hi < 0
    assert r["loss_diff"] == pytest.approx(-0.1, abs=0.02)
    assert r["ppl_rel_diff"] == pytest.approx(r["ppl_b"] / r["ppl_a"] - 1)
    plo, phi = r["ppl_rel_diff_ci"]
    assert plo <= r["ppl_rel_diff"] <= phi < 0
    # swapping the runs flips the sign
    r2 = paired_bootstrap(nll_b, nll_a, tokens, n_boot=500)
    assert r2["loss_diff_ci"] == pytest.approx((-hi, -lo))


def test_paired_bootstrap_noise_does_not_exclude_zero():
    nll_a, tokens = synthetic_run()
    rng = np.random.default_rng(2)
    nll_b = nll_a + tokens * rng.normal(0.0, 0.05, size=len(tokens))
    assert paired_bootstrap(nll_a, nll_b, tokens, n_boot=500)["excludes_zero"] is False


def test_bootstrap_is_seeded_and_independent_of_block_size(monkeypatch):
    nll_a, tokens = synthetic_run()
    nll_b = nll_a * 0.99
    r1 = paired_bootstrap(nll_a, nll_b, tokens, n_boot=300, seed=7)
    r2 = paired_bootstrap(nll_a, nll_b, tokens, n_boot=300, seed=7)
    r3 = paired_bootstrap(nll_a, nll_b, tokens, n_boot=300, seed=8)
    assert r1 == r2
    assert r1["loss_diff_ci"] != r3["loss_diff_ci"]
    monkeypatch.setattr(M, "_BOOT_BLOCK_CELLS", len(tokens) * 7)  # 7 resamples per block
    assert paired_bootstrap(nll_a, nll_b, tokens, n_boot=300, seed=7) == r1


def test_bootstrap_ppl_ci_brackets_the_point_estimate():
    nll, tokens = synthetic_run()
    ppl = summarize(nll, tokens, tokens * 4)["perplexity"]
    lo, hi = bootstrap_ppl_ci(nll, tokens, n_boot=400)
    assert lo < ppl < hi
    lo99, hi99 = bootstrap_ppl_ci(nll, tokens, n_boot=400, level=0.99)
    assert lo99 <= lo and hi <= hi99
    assert bootstrap_ppl_ci(nll, tokens, n_boot=400) == (lo, hi)


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"level": 1.0}, {"level": 0.0}])
def test_bootstrap_rejects_bad_arguments(kwargs):
    nll, tokens = synthetic_run(10)
    with pytest.raises(ConfigError):
        bootstrap_ppl_ci(nll, tokens, **kwargs)


def test_bootstrap_rejects_empty_windows():
    with pytest.raises(ConfigError, match="scored token"):
        paired_bootstrap([1.0, 2.0], [1.0, 2.0], [1, 0])


def reference_byte_lengths(text, offsets):
    """Brute force: slice the text between consecutive (clipped, non-decreasing) starts and encode it."""
    starts, last = [], 0
    for s, _ in offsets:
        last = max(last, min(max(s, 0), len(text)))
        starts.append(last)
    bounds = [0] + starts[1:] + [len(text)]
    return [len(text[a:b].encode("utf-8")) for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize("text, offsets", [
    ("hello world", [(0, 5), (5, 11)]),
    ("hello world", [(0, 5), (6, 11)]),  # offsets trimmed of the space: it goes to "hello"
    ("  lead and trail  ", [(2, 6), (7, 10), (11, 16)]),
    ("café", [(0, 3), (3, 4)]),
    ("日本語のテキスト", [(0, 2), (2, 3), (3, 4), (4, 8)]),
    ("emoji 😀 here", [(0, 5), (5, 7), (6, 7), (6, 7), (7, 12)]),  # 😀 split into three byte-level tokens
    ("é", [(0, 1), (0, 1)]),  # one character, two tokens sharing its offsets
    ("<s> text", [(0, 0), (0, 3), (3, 8), (0, 0)]),  # special tokens at (0, 0), one at the end
    ("short", [(0, 5), (9, 12)]),  # offsets past the end are clipped
])
def test_token_byte_lengths_sum_to_the_byte_length(text, offsets):
    lengths = token_byte_lengths(text, offsets)
    assert lengths.dtype == np.int64 and lengths.shape == (len(offsets),)
    assert (lengths >= 0).all()
    assert lengths.sum() == len(text.encode("utf-8"))
    assert lengths.tolist() == reference_byte_lengths(text, offsets)
    assert token_byte_lengths(text, np.asarray(offsets)).tolist() == lengths.tolist()


def test_token_byte_lengths_by_hand():
    assert token_byte_lengths("café au", [(0, 3), (3, 4), (4, 7)]).tolist() == [3, 2, 3]
    assert token_byte_lengths("a😀", [(0, 1), (1, 2), (1, 2)]).tolist() == [1, 0, 4]


def test_token_byte_lengths_empty():
    assert token_byte_lengths("", []).tolist() == []
    assert token_byte_lengths("", [(0, 0), (0, 0)]).tolist() == [0, 0]
    with pytest.raises(ConfigError, match="no token offsets"):
        token_byte_lengths("text", [])


def test_token_byte_lengths_random_against_brute_force():
    rng = np.random.default_rng(0)
    alphabet = list("ab é日😀\n")
    for _ in range(50):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        t = int(rng.integers(1, 12))
        starts = np.sort(rng.integers(0, len(text) + 1, size=t))
        offsets = [(int(s), int(s) + 1) for s in starts]
        lengths = token_byte_lengths(text, offsets)
        assert lengths.sum() == len(text.encode("utf-8"))
        assert lengths.tolist() == reference_byte_lengths(text, offsets)
