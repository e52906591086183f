"""Requests -> relm's own configs (`SearchOptions`, `GenerationConfig`), held to `ServeConfig`'s bounds.

Beyond a bound is a `LimitExceeded` (422) naming the field, the bound and its flag; a value relm itself
refuses is its `ConfigError` (422) with relm's message. Pure functions of (request, config).
"""

from __future__ import annotations

from typing import Any

from ..retrieval.options import SearchOptions, check_queries
from .config import ServeConfig
from .errors import LimitExceeded
from .schemas import Filters, GenerationFields, SearchRequest


def check_at_most(value: int | None, bound: int, name: str, flag: str) -> None:
    if value is not None and value > bound:
        raise LimitExceeded(f"{name} = {value:,} exceeds this server's limit of {bound:,} ({flag})")


def search_request(req: SearchRequest, config: ServeConfig) -> tuple[str | None, SearchOptions, list[str]]:
    """(retriever kind or None for the server's own, options, query texts) of a /search body."""
    texts = req.texts()
    check_at_most(len(texts), config.max_queries, "the number of queries", "--max-queries")
    check_at_most(req.k, config.max_k, "k", "--max-k")
    texts = check_queries(texts)
    opts = SearchOptions(k=req.k, before=req.before, after=req.after, domains=tuple(req.domains),
                         threshold=req.threshold, adaptive=req.adaptive, subsample=req.subsample)
    return req.retriever, opts, texts


def check_prompt(prompt: str, config: ServeConfig, name: str = "prompt") -> str:
    from ..errors import ConfigError

    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{name} is empty; give some text to continue")
    check_at_most(len(prompt), config.max_prompt_chars, f"the {name}'s length in characters", "--max-prompt-chars")
    return prompt


def filters(req: Filters, k: int | None) -> SearchOptions:
    """The filters every retrieval of a generation applies (k is the generation's own)."""
    return SearchOptions(k=k or 1, before=req.before, after=req.after, domains=tuple(req.domains))


def generation_config(fields: dict[str, Any], config: ServeConfig, tokens_name: str = "max_new_tokens"):
    """A `GenerationConfig` of the given fields (absent ones keep its defaults), max_new_tokens bounded."""
    from ..generation import GenerationConfig

    fields = {k: v for k, v in fields.items() if v is not None}
    if "stop" in fields and isinstance(fields["stop"], list):
        fields["stop"] = tuple(fields["stop"])
    fields.setdefault("max_new_tokens", min(GenerationConfig.max_new_tokens, config.max_tokens))
    check_at_most(fields["max_new_tokens"], config.max_tokens, tokens_name, "--max-tokens")
    check_at_most(fields.get("k"), config.max_k, "k", "--max-k")
    return GenerationConfig(**fields)


GENERATION_FIELDS = tuple(f for f in GenerationFields.model_fields if f not in Filters.model_fields)


def generate_request(req, config: ServeConfig):
    """(prompt, GenerationConfig, filters) of a /generate body."""
    prompt = check_prompt(req.prompt, config)
    gconfig = generation_config({f: getattr(req, f) for f in GENERATION_FIELDS}, config)
    return prompt, gconfig, filters(req, gconfig.k)
