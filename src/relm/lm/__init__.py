"""Language models behind one contract: tokenize, score a batch into per-token log-probabilities, generate."""

from __future__ import annotations

from .base import LanguageModel, LMConfig, ScoreRequest, length_batches
from .hf import HFCausalLM, resolve_lm


def load_lm(config: LMConfig | str = LMConfig()) -> HFCausalLM:
    """The LM for a config (or a spec: "smollm2", a model directory or a .gguf file)."""
    if isinstance(config, str):
        config = LMConfig(model=config)
    return HFCausalLM(config)


__all__ = ["HFCausalLM", "LMConfig", "LanguageModel", "ScoreRequest", "length_batches", "load_lm", "resolve_lm"]
