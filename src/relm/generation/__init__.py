"""Streaming generation with retrieval every N tokens (`generate_stream`, `agenerate_stream`)."""

from __future__ import annotations

from .config import MODES, DoneEvent, GenerationConfig, RetrievalEvent, TokenEvent, event_dict
from .stream import PrefixStates, agenerate_stream, generate_stream

__all__ = ["MODES", "DoneEvent", "GenerationConfig", "PrefixStates", "RetrievalEvent", "TokenEvent",
           "agenerate_stream", "event_dict", "generate_stream"]
