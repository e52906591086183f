"""Encoders: one `encode(texts, *, batch_size, normalize, show_progress)` contract."""

from __future__ import annotations

from ..config import EncoderConfig
from .base import Encoder
from .sentence_transformers import SentenceTransformerEncoder, resolve_model_path


def load_encoder(config: EncoderConfig | str = EncoderConfig()) -> Encoder:
    """The encoder for a config (or a model name/path with default settings)."""
    if isinstance(config, str):
        config = EncoderConfig(model=config)
    return SentenceTransformerEncoder(config)


__all__ = ["Encoder", "EncoderConfig", "SentenceTransformerEncoder", "load_encoder", "resolve_model_path"]
