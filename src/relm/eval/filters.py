"""Filters for retrieved passages before they are prepended to an LM's context (MassiveDS, Shao et al. 2024).

Decontamination drops a passage that leaks the text being scored: 13-gram Jaccard > 0.8, or >= 32
contiguous shared words. Deduplication drops a passage that is a MinHash near-duplicate of a higher-ranked
kept one. Words are `text.lower().split()`: whitespace tokens, lowercased, punctuation left attached
("end." != "end"), so the same text always gives the same words and no tokenizer is needed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import _from_dict
from ..errors import ConfigError

MERSENNE_61 = np.uint64((1 << 61) - 1)
_M30, _M31 = np.uint64((1 << 30) - 1), np.uint64((1 << 31) - 1)
EMPTY_HASH = np.iinfo(np.uint64).max  # signature slot of a text with no n-grams (never a real hash value)
REASONS = ("min_words", "decontamination_jaccard", "decontamination_shared_run", "near_duplicate")


def words(text: str) -> list[str]:
    """Whitespace words, lowercased; punctuation stays attached."""
    return text.lower().split()


def ngrams(words: Sequence[str], n: int = 13) -> set[tuple[str, ...]]:
    """The set of contiguous word n-grams (empty when there are fewer than n words)."""
    if n < 1:
        raise ConfigError(f"n-gram size must be >= 1, got {n}")
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    """|A & B| / |A | B|, 0 when either set is empty."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def jaccard_ngrams(a: str, b: str, n: int = 13) -> float:
    """Jaccard similarity of the word n-gram sets of a and b; 0 when either has fewer than n words."""
    return _jaccard(ngrams(words(a), n), ngrams(words(b), n))


def _longest_run(a: np.ndarray, b: np.ndarray, stop_at: int | None = None) -> int:
    """Longest common substring of two int sequences: L[i, j] = L[i-1, j-1] + 1 if a[i] == b[j] else 0.

    O(len(a) * len(b)) time, one numpy row per element of the shorter sequence; ids < 0 never match.
    Stops early once the run reaches `stop_at`.
    """
    if len(a) > len(b):
        a, b = b, a
    prev = np.zeros(len(b) + 1, dtype=np.int32)
    best = 0
    for x in a.tolist():
        cur = np.zeros_like(prev)
        if x >= 0:
            cur[1:] = np.where(b == x, prev[:-1] + 1, 0)
            best = max(best, int(cur.max()))
            if stop_at is not None and best >= stop_at:
                return best
        prev = cur
    return best


def _ids(ws: Sequence[str], vocab: dict[str, int], grow: bool) -> np.ndarray:
    """Word ids in `vocab`; unknown words get a new id (grow) or -1, which matches nothing."""
    if grow:
        return np.array([vocab.setdefault(w, len(vocab)) for w in ws], dtype=np.int64)
    return np.array([vocab.get(w, -1) for w in ws], dtype=np.int64)


def longest_common_word_run(a: str, b: str) -> int:
    """Length in words of the longest contiguous run of words that occurs in both a and b."""
    vocab: dict[str, int] = {}
    ids_b = _ids(words(b), vocab, grow=True)
    return _longest_run(_ids(words(a), vocab, grow=False), ids_b)


class _Scored:
    """The scored text, prepared once: its n-gram set and word ids."""

    def __init__(self, text: str, n: int):
        ws = words(text)
        self.n = n
        self.grams = ngrams(ws, n)
        self.vocab: dict[str, int] = {}
        self.ids = _ids(ws, self.vocab, grow=True)

    def check(self, passage_words: list[str], jaccard: float, max_shared_words: int) -> str | None:
        if _jaccard(ngrams(passage_words, self.n), self.grams) > jaccard:
            return "ngram_jaccard"
        if min(len(passage_words), len(self.ids)) >= max_shared_words:
            run = _longest_run(_ids(passage_words, self.vocab, grow=False), self.ids, stop_at=max_shared_words)
            if run >= max_shared_words:
                return "shared_run"
        return None


def is_contaminated(passage: str, scored_text: str, *, jaccard: float = 0.8, n: int = 13,
                    max_shared_words: int = 32) -> str | None:
    """Why `passage` leaks `scored_text`: "ngram_jaccard" (n-gram Jaccard > jaccard), "shared_run"
    (>= max_shared_words contiguous shared words), or None when it does not."""
    return _Scored(scored_text, n).check(words(passage), jaccard, max_shared_words)


def _mod61(x: np.ndarray) -> np.ndarray:
    """x mod p for p = 2^61 - 1 and x < 2^64: fold the bits above 61 (2^61 = 1 mod p), then subtract once."""
    x = (x & MERSENNE_61) + (x >> np.uint64(61))
    return np.where(x >= MERSENNE_61, x - MERSENNE_61, x)


def _mulmod61(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact a * x mod (2^61 - 1) for a, x < 2^61 in uint64, without overflow.

    With a = a1 2^31 + a0 and x = x1 2^31 + x0: a x = a1 x1 2^62 + (a1 x0 + a0 x1) 2^31 + a0 x0, where
    2^62 = 2 (mod p) and mid 2^31 = (mid >> 30) 2^61 + (mid & (2^30 - 1)) 2^31; every term stays < 2^62.
    """
    a0, a1, x0, x1 = a & _M31, a >> np.uint64(31), x & _M31, x >> np.uint64(31)
    mid = a1 * x0 + a0 * x1
    total = ((a1 * x1) << np.uint64(1)) + (mid >> np.uint64(30)) + ((mid & _M30) << np.uint64(31)) + a0 * x0
    return _mod61(total)


def _stable_hash(gram: tuple[str, ...]) -> int:
    """64-bit blake2b of the space-joined n-gram: the same in every process (unlike the salted hash())."""
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest(), "little")


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded universal hash parameters: a in [1, p), b in [0, p)."""
    if num_perm < 1:
        raise ConfigError(f"num_perm must be >= 1, got {num_perm}")
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64)
    return a, b


def _signature(grams: set[tuple[str, ...]], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash (Broder 1997): sig[k] = min over n-grams g of (a_k h(g) + b_k) mod (2^61 - 1)."""
    if not grams:
        return np.full(len(a), EMPTY_HASH, dtype=np.uint64)
    h = _mod61(np.fromiter((_stable_hash(g) for g in grams), dtype=np.uint64, count=len(grams)))
    hashed = _mod61(_mulmod61(a[:, None], h[None, :]) + b[:, None])  # (num_perm, n_grams)
    return hashed.min(axis=1)


def minhash_signature(text: str, *, n: int = 13, num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """(num_perm,) uint64 MinHash signature of the word n-gram set of `text` (all EMPTY_HASH if it has none)."""
    return _signature(ngrams(words(text), n), *_permutations(num_perm, seed))


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal MinHash slots, an unbiased estimate of the n-gram Jaccard; 0 if either set is empty."""
    if sig_a.shape != sig_b.shape:
        raise ConfigError(f"signatures differ in length: {sig_a.shape} vs {sig_b.shape}")
    if (sig_a == EMPTY_HASH).all() or (sig_b == EMPTY_HASH).all():
        return 0.0
    return float(np.mean(sig_a == sig_b))


def near_duplicates(texts: Sequence[str], *, threshold: float = 0.8, n: int = 13, num_perm: int = 64,
                    seed: int = 0) -> list[bool]:
    """In rank order, flag each text whose estimated Jaccard with an earlier *kept* text is >= threshold.

    Texts with fewer than n words have no n-grams: they are duplicates only of an earlier kept short text
    with the same normalised word sequence.
    """
    a, b = _permutations(num_perm, seed)
    kept_sigs: list[np.ndarray] = []
    kept_short: set[tuple[str, ...]] = set()
    flags = []
    for text in texts:
        ws = words(text)
        if len(ws) < n:
            dup = tuple(ws) in kept_short
            if not dup:
                kept_short.add(tuple(ws))
        else:
            sig = _signature(ngrams(ws, n), a, b)
            dup = bool(kept_sigs) and bool(((np.stack(kept_sigs) == sig).mean(axis=1) >= threshold).any())
            if not dup:
                kept_sigs.append(sig)
        flags.append(dup)
    return flags


@dataclass(frozen=True)
class PassageFilter:
    """Which retrieved passages may enter the LM context (MassiveDS defaults)."""

    decontaminate: bool = True
    # contaminated: n-gram Jaccard with the scored text > jaccard, or >= max_shared_words contiguous shared words
    jaccard: float = 0.8
    ngram: int = 13
    max_shared_words: int = 32
    # near-duplicate of a higher-ranked kept passage: estimated n-gram Jaccard >= dedup_threshold
    dedup: bool = True
    dedup_threshold: float = 0.8
    # drop passages with fewer whitespace words (0 keeps all)
    min_words: int = 0

    def __post_init__(self):
        for name in ("decontaminate", "dedup"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PassageFilter.{name} must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.jaccard <= 1.0:
            raise ConfigError(f"PassageFilter.jaccard must be in [0, 1], got {self.jaccard}")
        if self.ngram < 1:
            raise ConfigError(f"PassageFilter.ngram must be >= 1, got {self.ngram}")
        if self.max_shared_words < 1:
            raise ConfigError(f"PassageFilter.max_shared_words must be >= 1, got {self.max_shared_words}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ConfigError(f"PassageFilter.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.min_words < 0:
            raise ConfigError(f"PassageFilter.min_words must be >= 0, got {self.min_words}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PassageFilter:
        return _from_dict(cls, d)


def apply_filters(passages: Sequence[str], scored_text: str,
                  config: PassageFilter = PassageFilter()) -> tuple[list[int], Counter]:
    """Indices of the passages kept, in rank order, and a Counter of removals by reason (all REASONS present).

    Checks run in order: min_words, then decontamination against `scored_text`, then near-duplicates among
    the survivors; a passage is counted under the first reason that removes it.
    """
    removed: Counter = Counter(dict.fromkeys(REASONS, 0))
    scored = _Scored(scored_text, config.ngram) if config.decontaminate else None
    survivors: list[int] = []
    for i, passage in enumerate(passages):
        ws = words(passage)
        if len(ws) < config.min_words:
            removed["min_words"] += 1
            continue
        reason = scored.check(ws, config.jaccard, config.max_shared_words) if scored else None
        if reason == "ngram_jaccard":
            removed["decontamination_jaccard"] += 1
        elif reason == "shared_run":
            removed["decontamination_shared_run"] += 1
        else:
            survivors.append(i)
    if not config.dedup:
        return survivors, removed
    dup = near_duplicates([passages[i] for i in survivors], threshold=config.dedup_threshold, n=config.ngram)
    removed["near_duplicate"] += sum(dup)
    return [i for i, d in zip(survivors, dup, strict=True) if not d], removed
