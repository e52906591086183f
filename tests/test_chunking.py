"""Chunkers: word passages (MassiveDS) and token chunks (RETRO), as pure functions on one document."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relm.corpus.chunking import (
    chunk_tokens,
    chunk_words,
    token_chunk_bounds,
    word_passage_bounds,
    word_spans,
)

# whitespace of several kinds (ASCII, no-break, ideographic, information separators) and a few letters
TEXTS = st.text(alphabet=st.sampled_from(list("ab cd\n\t\r\u00a0\u3000\x1c\u2028é文")), max_size=200)
SETTINGS = settings(max_examples=200, deadline=None)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def passages(text: str, max_words: int, min_words: int) -> list[str]:
    return [text[a:b] for a, b, _ in chunk_words(text, max_words, min_words)]


def check_passages(text: str, max_words: int, min_words: int) -> None:
    """Every invariant of word passages for one document."""
    chunks = chunk_words(text, max_words, min_words)
    all_words = text.split()
    if not all_words:
        assert chunks == []
        return
    counts = [n for _, _, n in chunks]
    # nothing lost, nothing duplicated: the passages' words are the document's words, in order
    assert [w for a, b, _ in chunks for w in text[a:b].split()] == all_words
    assert sum(counts) == len(all_words)
    for a, b, n in chunks:
        piece = text[a:b]
        assert len(piece.split()) == n >= 1
        assert piece == piece.strip()  # starts and ends on a word
    # passages are ordered, and only whitespace lies between and around them
    ends = [0] + [x for a, b, _ in chunks for x in (a, b)] + [len(text)]
    for gap_start, gap_end in zip(ends[::2], ends[1::2], strict=True):
        assert gap_start <= gap_end and text[gap_start:gap_end].strip() == ""
    # sizes: every passage but the last is full; the last may hold a merged tail
    assert all(n == max_words for n in counts[:-1])
    assert 1 <= counts[-1] <= max_words + max(min_words - 1, 0)
    if len(chunks) > 1:
        assert counts[-1] >= min_words  # a short tail was merged away
    if counts[-1] > max_words:
        assert counts[-1] - max_words < min_words  # only a short tail is ever merged


# ---------------------------------------------------------------- word passages


def test_full_passages_and_a_tail_long_enough_to_stay():
    assert word_passage_bounds(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    assert [n for *_, n in chunk_words(words(10), 4, 2)] == [4, 4, 2]


def test_short_tail_merges_into_the_previous_passage():
    assert word_passage_bounds(9, 4, 2) == [(0, 4), (4, 9)]
    assert passages(words(9), 4, 2) == ["w0 w1 w2 w3", "w4 w5 w6 w7 w8"]


def test_largest_merged_tail_is_max_plus_min_minus_one():
    assert word_passage_bounds(4 + 4 + 3, 4, 4) == [(0, 4), (4, 11)]  # 7 == 4 + 4 - 1
    assert word_passage_bounds(4 + 4 + 4, 4, 4) == [(0, 4), (4, 8), (8, 12)]


def test_exact_multiple_has_no_tail():
    assert word_passage_bounds(8, 4, 3) == [(0, 4), (4, 8)]


def test_min_words_zero_never_merges():
    assert word_passage_bounds(9, 4, 0) == [(0, 4), (4, 8), (8, 9)]


def test_max_words_one():
    assert word_passage_bounds(3, 1, 1) == [(0, 1), (1, 2), (2, 3)]
    assert passages("a  b\nc", 1, 0) == ["a", "b", "c"]


def test_document_shorter_than_min_words_is_one_passage():
    text = "only three words"
    assert chunk_words(text, 10, 5) == [(0, len(text), 3)]
    assert word_passage_bounds(3, 10, 5) == [(0, 3)]


def test_document_exactly_max_words_is_one_passage():
    assert word_passage_bounds(256, 256, 32) == [(0, 256)]
    assert word_passage_bounds(257, 256, 32) == [(0, 257)]


@pytest.mark.parametrize("text", ["", " ", "\n\n", " \t\r\n\u00a0\u3000 "])
def test_empty_text_has_no_passages(text):
    assert chunk_words(text, 4, 2) == []
    assert word_spans(text).shape == (0, 2)


def test_no_words_no_bounds():
    assert word_passage_bounds(0, 4, 2) == []
    assert token_chunk_bounds(0, 4) == []


def test_passages_keep_the_original_whitespace():
    text = "\n  alpha beta\n\ngamma\t\tdelta  \r\nepsilon   "
    assert passages(text, 4, 0) == ["alpha beta\n\ngamma\t\tdelta", "epsilon"]
    assert passages(text, 4, 2) == ["alpha beta\n\ngamma\t\tdelta  \r\nepsilon"]  # merged tail, spacing kept
    assert passages(text, 2, 0) == ["alpha beta", "gamma\t\tdelta", "epsilon"]
    for a, b, _ in chunk_words(text, 2, 0):
        assert text[a:b] in text


def test_unicode_whitespace_separates_words():
    text = "a\u00a0b\u3000c\u2028d e"
    assert word_spans(text).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert passages(text, 2, 0) == ["a\u00a0b", "c\u2028d", "e"]


def test_chunk_words_returns_plain_ints():
    ((a, b, n),) = chunk_words("x y", 4, 0)
    assert all(type(v) is int for v in (a, b, n))


def test_defaults_are_256_and_32():
    text = words(256 + 31)
    assert [n for *_, n in chunk_words(text)] == [287]
    assert [n for *_, n in chunk_words(words(256 + 32))] == [256, 32]


@pytest.mark.parametrize("n", range(0, 30))
@pytest.mark.parametrize(
    "max_words, min_words", [(1, 0), (1, 1), (3, 0), (3, 2), (3, 3), (5, 1), (5, 4), (7, 7)]
)
def test_word_passage_bounds_exhaustive_small(n, max_words, min_words):
    bounds = word_passage_bounds(n, max_words, min_words)
    check_passages(words(n), max_words, min_words)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))  # contiguous, complete


@SETTINGS
@given(text=TEXTS, max_words=st.integers(1, 12), data=st.data())
def test_word_passages_property(text, max_words, data):
    min_words = data.draw(st.integers(0, max_words))
    check_passages(text, max_words, min_words)


@SETTINGS
@given(n=st.integers(0, 2000), max_words=st.integers(1, 300), data=st.data())
def test_word_passage_bounds_property(n, max_words, data):
    min_words = data.draw(st.integers(0, max_words))
    bounds = word_passage_bounds(n, max_words, min_words)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert all(s == max_words for s in sizes[:-1])
    if sizes and sizes[-1] > max_words:  # a merged tail: it was shorter than min_words
        assert sizes[-1] - max_words < min_words
    if len(sizes) > 1:
        assert min_words <= sizes[-1]  # a short tail never stands alone


# ---------------------------------------------------------------- token chunks


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A synthetic tokenizer: one token per whitespace word, with its character span."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def subword_offsets(text: str, size: int = 2) -> list[tuple[int, int]]:
    """A synthetic sub-word tokenizer: words cut into pieces of `size` characters (no gaps inside words)."""
    return [(i, min(i + size, b)) for a, b in word_offsets(text) for i in range(a, b, size)]


def check_token_chunks(text: str, offsets, m: int) -> None:
    """Every invariant of token chunks for one document."""
    chunks = chunk_tokens(offsets, len(text), m)
    n = len(offsets)
    if n == 0:
        assert chunks == []
        return
    # token ranges: consecutive [a, b) of m tokens, the last one shorter or equal
    assert [(a, b) for a, b, _, _ in chunks] == token_chunk_bounds(n, m)
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(b - a == m for a, b, _, _ in chunks[:-1]) and 1 <= chunks[-1][1] - chunks[-1][0] <= m
    # character spans tile the text exactly
    assert chunks[0][2] == 0 and chunks[-1][3] == len(text)
    assert all(chunks[j][3] == chunks[j + 1][2] for j in range(len(chunks) - 1))
    assert "".join(text[cs:ce] for _, _, cs, ce in chunks) == text
    for j, (a, b, cs, ce) in enumerate(chunks):
        assert cs <= ce
        if j > 0:
            assert cs == offsets[a][0]  # a chunk starts where its first token starts
        # each chunk's text holds exactly its own tokens
        assert all(cs <= offsets[t][0] and offsets[t][1] <= ce for t in range(a, b))


def test_token_chunk_bounds():
    assert token_chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert token_chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert token_chunk_bounds(3, 4) == [(0, 3)]
    assert token_chunk_bounds(1, 1) == [(0, 1)]


def test_token_chunks_with_word_offsets():
    text = "  The quick brown fox\njumps over the lazy dog.  "
    offsets = word_offsets(text)
    chunks = chunk_tokens(offsets, len(text), 4)
    assert [(a, b) for a, b, _, _ in chunks] == [(0, 4), (4, 8), (8, 9)]
    assert [text[cs:ce] for *_, cs, ce in chunks] == [
        "  The quick brown fox\n",  # the first chunk starts at 0, leading whitespace included
        "jumps over the lazy ",
        "dog.  ",  # the last chunk ends at the end of the text
    ]
    check_token_chunks(text, offsets, 4)


def test_token_chunks_with_subword_offsets():
    text = "retrieval datastore\n\nencoder"
    offsets = subword_offsets(text, 3)
    chunks = chunk_tokens(offsets, len(text), 3)
    assert [text[cs:ce] for *_, cs, ce in chunks] == ["retrieval ", "datastore\n\n", "encoder"]
    check_token_chunks(text, offsets, 3)


def test_token_chunks_numpy_offsets_match_lists():
    text = "a bb ccc dddd eeeee"
    offsets = word_offsets(text)
    as_array = np.asarray(offsets, dtype=np.int64)
    assert chunk_tokens(as_array, len(text), 2) == chunk_tokens(offsets, len(text), 2)
    assert all(type(v) is int for chunk in chunk_tokens(as_array, len(text), 2) for v in chunk[2:])


def test_one_chunk_when_m_covers_the_document():
    text = "three little tokens "
    assert chunk_tokens(word_offsets(text), len(text), 64) == [(0, 3, 0, len(text))]
    assert chunk_tokens(word_offsets(text), len(text), 3) == [(0, 3, 0, len(text))]


def test_no_tokens_no_chunks():
    assert chunk_tokens([], 0, 4) == []
    assert chunk_tokens(np.zeros((0, 2), dtype=np.int64), 5, 4) == []


def test_default_chunk_size_is_64():
    text = words(130)
    assert [(a, b) for a, b, _, _ in chunk_tokens(word_offsets(text), len(text))] == [
        (0, 64),
        (64, 128),
        (128, 130),
    ]


@SETTINGS
@given(text=TEXTS, m=st.integers(1, 10), piece=st.integers(1, 4))
def test_token_chunks_property(text, m, piece):
    check_token_chunks(text, word_offsets(text), m)
    check_token_chunks(text, subword_offsets(text, piece), m)


@SETTINGS
@given(n=st.integers(0, 1000), m=st.integers(1, 100))
def test_token_chunk_bounds_property(n, m):
    bounds = token_chunk_bounds(n, m)
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    assert all(b - a == m for a, b in bounds[:-1])
    assert len(bounds) == -(-n // m)
