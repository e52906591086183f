"""The one contract every encoder meets."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


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
    ) -> np.ndarray:
        """Embed texts into a float32 (n, dim) array, rows in input order."""
        ...

    def identity(self) -> dict[str, Any]:
        """What a datastore records to refuse queries from a different encoder."""
        ...

    # Optional: `tokens() -> relm.encoders.tokens.EncoderTokens | None`, the encoder's tokenizer for
    # counting (passage token budgets, truncation counts). An encoder without it is not counted.
