"""The one contract every encoder meets."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

# which end of a text longer than the encoder's max_seq_length is cut: "right" keeps the start (every
# encoder's default), "left" keeps the end (an LM eval query: the tokens next to the scored text)
TRUNCATE_SIDES = ("right", "left")


@runtime_checkable
class Encoder(Protocol):
    name: str
    dim: int

    def encode(
        self,
        texts: list[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool = False,
        truncate: str = "right",
    ) -> np.ndarray:
        """Embed texts into a float32 (n, dim) array, rows in input order; a text longer than the encoder
        reads loses its end (`truncate="right"`) or its start ("left"). An encoder without a length
        limit ignores `truncate`; callers pass it only when it is not "right"."""
        ...

    def identity(self) -> dict[str, Any]:
        """What a datastore records to refuse queries from a different encoder."""
        ...

    # Optional: `tokens() -> relm.encoders.tokens.EncoderTokens | None`, the encoder's tokenizer for
    # counting (passage token budgets, truncation counts). An encoder without it is not counted.
