"""Chunkers: pure functions from one document to character spans of its passages.

Chunks never cross documents: each call sees one document. Spans index into the
document's text, so passage text keeps the original whitespace and newlines.

- Passage mode (MassiveDS): at most `max_words` whitespace-separated words per
  passage; a tail of fewer than `min_words` words is merged into the previous
  passage of the same document (so a merged passage holds up to
  `max_words + min_words - 1` words), and a document shorter than `min_words`
  is still one passage.
- Token mode (RETRO): consecutive chunks of `m` token ids; the last chunk of a
  document may be shorter. Chunk j starts at the character where its first
  token starts (chunk 0 at 0) and ends where chunk j+1 starts (the last at the
  end of the text), so the chunks' texts concatenate back to the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> np.ndarray:
    """(n_words, 2) int64 array of [start, end) character spans of whitespace-separated words."""
    spans = [m.span() for m in _WORD.finditer(text)]
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def word_passage_bounds(n_words: int, max_words: int, min_words: int) -> list[tuple[int, int]]:
    """[start, end) word-index ranges of the passages of a document with n_words words."""
    if n_words == 0:
        return []
    bounds = [(s, min(s + max_words, n_words)) for s in range(0, n_words, max_words)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_words:
        tail = bounds.pop()
        bounds[-1] = (bounds[-1][0], tail[1])
    return bounds


def chunk_words(text: str, max_words: int = 256, min_words: int = 32) -> list[tuple[int, int, int]]:
    """Passages of a document as (char_start, char_end, n_words)."""
    spans = word_spans(text)
    return [
        (int(spans[a, 0]), int(spans[b - 1, 1]), b - a)
        for a, b in word_passage_bounds(len(spans), max_words, min_words)
    ]


def token_chunk_bounds(n_tokens: int, m: int) -> list[tuple[int, int]]:
    """[start, end) token-index ranges of consecutive chunks of m tokens."""
    return [(s, min(s + m, n_tokens)) for s in range(0, n_tokens, m)]


def chunk_tokens(
    offsets: Sequence[tuple[int, int]] | np.ndarray, text_len: int, m: int = 64
) -> list[tuple[int, int, int, int]]:
    """Chunks of a tokenized document as (tok_start, tok_end, char_start, char_end).

    `offsets` are the tokens' character spans (as fast tokenizers return them).
    """
    bounds = token_chunk_bounds(len(offsets), m)
    out = []
    for j, (a, b) in enumerate(bounds):
        char_start = 0 if j == 0 else int(offsets[a][0])
        char_end = text_len if j == len(bounds) - 1 else int(offsets[b][0])
        out.append((a, b, char_start, char_end))
    return out
