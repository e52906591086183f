"""An encoder's own tokenizer, used for counting: passage token budgets and truncation counts.

sentence-transformers cuts every input to `max_seq_length` tokens, special tokens ([CLS], [SEP])
included, and silently drops the rest. `EncoderTokens` counts tokens exactly as the encoder's fast
tokenizer produces them, without truncation or padding (the tokenizer.json of all-MiniLM-L6-v2 carries
a truncation to 128 and padding that the encoder overrides per call; here both are switched off).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..corpus.chunking import tokens_per_word, word_spans

# texts per tokenizer call when counting: bounded memory, still batched (tokenizers' per-call overhead is small)
COUNT_BLOCK = 1024


class EncoderTokens:
    """Token counts of an encoder: `max_length` tokens read per input, `n_special` of them added around it."""

    def __init__(self, backend, max_length: int, n_special: int):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(backend.to_str())  # a copy: the encoder's own keeps its settings
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.max_length = int(max_length)
        self.n_special = int(n_special)

    @property
    def text_budget(self) -> int:
        """Tokens of text an input may hold before the encoder cuts it (special tokens aside)."""
        return max(self.max_length - self.n_special, 1)

    def offsets(self, text: str) -> np.ndarray:
        """(n_tokens, 2) character spans of `text`'s tokens (no special tokens)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)

    def word_tokens(self, text: str) -> np.ndarray:
        """(n_words,) tokens per whitespace word of `text` (`chunking.word_spans`), from one tokenizer pass."""
        return tokens_per_word(word_spans(text), self.offsets(text))

    def count(self, texts: Sequence[str], block: int = COUNT_BLOCK) -> np.ndarray:
        """(len(texts),) int64 tokens per text, special tokens excluded, tokenized `block` texts at a time:
        an `Encoding` costs ~150 bytes per token (ids, strings, offsets, masks), so the 20,771 passages of
        the shared corpus in one `encode_batch` held 1.0 GB, and the allocator kept it (issue 17)."""
        out = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), block):
            encs = self._tok.encode_batch(list(texts[start:start + block]), add_special_tokens=False)
            out[start:start + len(encs)] = [len(e.ids) for e in encs]
        return out

    def truncated(self, texts: Sequence[str]) -> int:
        """How many of `texts` the encoder cuts (more than max_length tokens with the special ones)."""
        return int(np.sum(self.count(texts) + self.n_special > self.max_length))


def resolve_passage_tokens(max_tokens: int | str | None, tokens: EncoderTokens | None) -> int | None:
    """The token budget of a passage's encoder input: None (words alone), N, or "auto" -> the encoder's
    text budget (None when the encoder has no tokenizer to count with, e.g. a test stand-in)."""
    if max_tokens is None:
        return None
    if max_tokens == "auto":
        return tokens.text_budget if tokens is not None else None
    return int(max_tokens)


def text_budget_after_title(budget: int, title_tokens: int) -> int:
    """Tokens left for a passage's text once its document's title is prepended. A title eating more
    than three quarters of the budget leaves a quarter of it (those passages are cut, and counted)."""
    return max(budget - title_tokens, max(budget // 4, 1))
