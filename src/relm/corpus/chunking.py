"""Chunkers: pure functions from one document to character spans of its passages.

Chunks never cross documents: each call sees one document. Spans index into the
document's text, so passage text keeps the original whitespace and newlines.

- Passage mode (MassiveDS): at most `max_words` whitespace-separated words per
  passage; a tail of fewer than `min_words` words is merged into the previous
  passage of the same document (so a merged passage holds up to
  `max_words + min_words - 1` words), and a document shorter than `min_words`
  is still one passage.
- Passage mode with a token budget: the same, but each passage also holds at
  most `max_tokens` encoder tokens, counted per word (`word_tokens`, from the
  encoder's tokenizer run once over the whole document): whole words are packed
  greedily, and a short tail is merged only when the merged passage still fits
  the budget. A single word longer than the budget is a passage of its own.
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


def budget_passage_bounds(
    word_tokens: Sequence[int] | np.ndarray, max_words: int, min_words: int, max_tokens: int | None
) -> list[tuple[int, int]]:
    """[start, end) word-index ranges of passages of at most max_words words and max_tokens tokens.

    `word_tokens[i]` is how many encoder tokens word i costs. Greedy: a passage takes the next word
    while both bounds hold (a word costing more than max_tokens alone still gets a passage). A tail of
    fewer than min_words words joins the previous passage only if the two together fit max_tokens
    (so no merge ever creates a passage the encoder cuts). max_tokens=None: `word_passage_bounds`.
    """
    n = len(word_tokens)
    if max_tokens is None:
        return word_passage_bounds(n, max_words, min_words)
    costs = np.asarray(word_tokens, dtype=np.int64).tolist()
    bounds: list[tuple[int, int]] = []
    sizes: list[int] = []  # tokens per passage
    start, used = 0, 0
    for i, t in enumerate(costs):
        if i > start and (i - start == max_words or used + t > max_tokens):
            bounds.append((start, i))
            sizes.append(used)
            start, used = i, 0
        used += t
    if n:
        bounds.append((start, n))
        sizes.append(used)
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_words and sizes[-2] + sizes[-1] <= max_tokens:
        tail = bounds.pop()
        bounds[-1] = (bounds[-1][0], tail[1])
    return bounds


def chunk_words(
    text: str,
    max_words: int = 256,
    min_words: int = 32,
    *,
    word_tokens: Sequence[int] | np.ndarray | None = None,
    max_tokens: int | None = None,
) -> list[tuple[int, int, int]]:
    """Passages of a document as (char_start, char_end, n_words).

    With `max_tokens`, `word_tokens` (one count per word of `word_spans(text)`) bounds each passage's
    encoder tokens too (see `budget_passage_bounds`).
    """
    spans = word_spans(text)
    if max_tokens is None:
        bounds = word_passage_bounds(len(spans), max_words, min_words)
    else:
        if word_tokens is None or len(word_tokens) != len(spans):
            raise ValueError(f"word_tokens must give one count per word ({len(spans)} words), "
                             f"got {None if word_tokens is None else len(word_tokens)}")
        bounds = budget_passage_bounds(word_tokens, max_words, min_words, max_tokens)
    return [(int(spans[a, 0]), int(spans[b - 1, 1]), b - a) for a, b in bounds]


def tokens_per_word(word_spans: np.ndarray, token_offsets: np.ndarray) -> np.ndarray:
    """(n_words,) int64: how many tokens start inside each word's character span.

    `token_offsets` (n_tokens, 2) are the tokens' character spans in the same text (as fast tokenizers
    return them). Tokenizers that split on whitespace (WordPiece, BERT's) never let a token cross a
    word; a token that starts in whitespace (some BPE/SentencePiece tokenizers' leading space) is
    counted with the word after it.
    """
    n = len(word_spans)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
    # the word containing the token's start, else the next word (a token in the whitespace before it)
    which = np.searchsorted(word_spans[:, 1], starts, side="right")
    which = np.minimum(which, n - 1)
    return np.bincount(which, minlength=n).astype(np.int64)


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
