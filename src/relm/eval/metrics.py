"""LM evaluation metrics: loss, perplexity, bits per byte, bootstrap intervals, token byte lengths.

Small pure numpy functions. A *window* is one scored span of text; an evaluation run is described by
per-window arrays: total NLL in nats (float), scored token count (int) and UTF-8 byte count (int).
Aggregates are token- (or byte-) weighted over all windows, never means of per-window perplexities.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

LN2 = math.log(2.0)
# bootstrap resamples are drawn in blocks of rows so that (rows, n_windows) stays under ~32 MB of int64
_BOOT_BLOCK_CELLS = 4_000_000


def mean_loss(nll_nats_total: float, n_tokens: int) -> float:
    """Mean token loss in nats: L = sum_t -ln p(x_t | x_<t) / T."""
    if n_tokens <= 0:
        raise ConfigError(f"n_tokens must be > 0 to compute a loss, got {n_tokens}")
    return float(nll_nats_total) / n_tokens


def perplexity(nll_nats_total: float, n_tokens: int) -> float:
    """Token perplexity: PPL = exp(L), L the mean token loss in nats."""
    return math.exp(mean_loss(nll_nats_total, n_tokens))


def bits_per_byte(nll_nats_total: float, n_bytes: int) -> float:
    """Bits per UTF-8 byte: BPB = (sum_t -ln p(x_t | x_<t) / ln 2) / B, B the byte count of the scored text.

    Comparable across tokenizers, unlike perplexity. Not log2(PPL) / 8: that is bits per *token* over 8 and
    ignores how many bytes a token covers.
    """
    if n_bytes <= 0:
        raise ConfigError(f"n_bytes must be > 0 to compute bits per byte, got {n_bytes}")
    return float(nll_nats_total) / LN2 / n_bytes


def _windows(*arrays: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    """Check that the per-window arrays are 1-D, of one length, and non-empty."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    for a, name in zip(out, names, strict=True):
        if a.ndim != 1:
            raise ConfigError(f"{name} must be a 1-D per-window array, got shape {a.shape}")
        if len(a) != len(out[0]):
            raise ConfigError(f"{name} has {len(a)} windows, {names[0]} has {len(out[0])}")
    if len(out[0]) == 0:
        raise ConfigError("no windows to evaluate")
    return out


def summarize(nll: np.ndarray, tokens: np.ndarray, bytes_: np.ndarray) -> dict:
    """Token-weighted totals of one run: loss = sum(nll) / sum(tokens), PPL = exp(loss), BPB over sum(bytes)."""
    nll, tokens, bytes_ = _windows(nll, tokens, bytes_, names=("nll", "tokens", "bytes_"))
    total_nll, n_tokens, n_bytes = float(nll.sum()), int(tokens.sum()), int(bytes_.sum())
    return {
        "windows": len(nll),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "nll": total_nll,
        "loss": mean_loss(total_nll, n_tokens),
        "perplexity": perplexity(total_nll, n_tokens),
        "bits_per_byte": bits_per_byte(total_nll, n_bytes),
    }


def _check_boot(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")


def _resampled_losses(nlls: list[np.ndarray], tokens: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Loss of each run on each bootstrap resample of the windows: sum(nll[idx]) / sum(tokens[idx]).

    All runs share one (n_boot, n) index matrix (a paired bootstrap), drawn with default_rng(seed).
    """
    if (tokens <= 0).any():
        raise ConfigError("every window needs >= 1 scored token for the bootstrap; drop empty windows first")
    n = len(tokens)
    rng = np.random.default_rng(seed)
    out = [np.empty(n_boot) for _ in nlls]
    rows = max(1, _BOOT_BLOCK_CELLS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (rows, n) windows drawn with replacement
        tok = tokens[idx].sum(axis=1)
        for o, nll in zip(out, nlls, strict=True):
            o[start:stop] = nll[idx].sum(axis=1) / tok
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval: the (1 - level) / 2 and (1 + level) / 2 quantiles."""
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap_ppl_ci(nll: np.ndarray, tokens: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of one run's token perplexity, resampling windows with replacement."""
    _check_boot(n_boot, level)
    nll, tokens = _windows(nll, tokens, names=("nll", "tokens"))
    (loss,) = _resampled_losses([nll], tokens, n_boot, seed)
    lo, hi = _percentiles(loss, level)
    return math.exp(lo), math.exp(hi)


def paired_bootstrap(nll_a: np.ndarray, nll_b: np.ndarray, tokens: np.ndarray, *, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of run b against run a, scored on the same windows (Koehn 2004; Efron & Tibshirani 1993).

    Each resample draws windows with replacement, the same windows for both runs, and computes
    loss_b - loss_a (nats/token) and ppl_b / ppl_a - 1 = exp(loss_b - loss_a) - 1 (negative: b is better).
    Returns point estimates on all windows, percentile intervals, and whether the interval excludes 0
    (both differences have the same sign, so one flag serves both).
    """
    _check_boot(n_boot, level)
    nll_a, nll_b, tokens = _windows(nll_a, nll_b, tokens, names=("nll_a", "nll_b", "tokens"))
    n_tokens = tokens.sum()
    loss_a, loss_b = nll_a.sum() / n_tokens, nll_b.sum() / n_tokens
    boot_a, boot_b = _resampled_losses([nll_a, nll_b], tokens, n_boot, seed)
    lo, hi = _percentiles(boot_b - boot_a, level)
    return {
        "windows": len(tokens),
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "ppl_a": math.exp(loss_a),
        "ppl_b": math.exp(loss_b),
        "loss_diff": float(loss_b - loss_a),
        "loss_diff_ci": (lo, hi),
        "ppl_rel_diff": math.expm1(loss_b - loss_a),
        "ppl_rel_diff_ci": (math.expm1(lo), math.expm1(hi)),
        "excludes_zero": bool(lo > 0.0 or hi < 0.0),
    }


def char_byte_offsets(text: str) -> np.ndarray:
    """(len(text) + 1,) int64: the UTF-8 byte offset of every character position, the last one = byte length."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    # UTF-8 width of a code point: 1 below U+0080, 2 below U+0800, 3 below U+10000, else 4
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    out = np.zeros(len(cp) + 1, dtype=np.int64)
    np.cumsum(width, out=out[1:])
    return out


def token_byte_lengths(text: str, char_offsets: list[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """(T,) int64: the UTF-8 bytes each token accounts for; >= 0 and summing to len(text.encode("utf-8")).

    Token i owns the bytes from its start offset up to token i + 1's start; the first token also owns any
    bytes before it and the last one everything to the end of the text. `char_offsets` are (start, end)
    *character* offsets (a HF fast tokenizer's offset_mapping); only starts are used. Starts are clipped to
    the text and made non-decreasing, so tokens that share offsets (byte-level BPE splitting one character,
    special tokens at (0, 0)) are not double-counted: all but the last of a tied group get 0 bytes.
    """
    offsets = np.asarray(char_offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2)
    total = len(text.encode("utf-8"))
    if len(offsets) == 0:
        if total:
            raise ConfigError(f"no token offsets to assign the {total} bytes of a non-empty text to")
        return np.zeros(0, dtype=np.int64)
    starts = np.clip(offsets[:, 0], 0, len(text))
    byte_starts = np.maximum.accumulate(char_byte_offsets(text)[starts])
    bounds = np.concatenate([[0], byte_starts[1:], [total]])
    return np.diff(bounds).astype(np.int64)
