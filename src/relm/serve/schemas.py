"""Request bodies (pydantic): their shapes and fixed bounds. What the values mean is checked where relm
checks it already (`SearchOptions`, `GenerationConfig`), and the server's configurable bounds
(`ServeConfig`: k, queries, prompt length, max_tokens) by `bounds.py`, so every message names the field.

relm's own endpoints refuse unknown fields (a typo is a 422, not a silently ignored option); the
OpenAI-compatible ones ignore the OpenAI parameters relm has no use for (`IGNORED`), as other servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Time = int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    """The `SearchOptions` filters a generation's retrievals share with /search."""

    before: Time | None = None
    after: Time | None = None
    domains: list[str] = Field(default_factory=list, max_length=1000)


class SearchRequest(Filters):
    """`query` (one text) or `queries` (a batch), and the `SearchOptions` fields; `retriever` picks a kind
    other than the one the server was started with (opened on the same datastore at first use)."""

    query: str | None = None
    queries: list[str] | None = None
    k: int = Field(10, ge=1)
    threshold: float | None = None
    adaptive: dict[str, Any] | None = None
    subsample: dict[str, Any] | None = None
    retriever: str | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either 'query' (a string) or 'queries' (a list of strings)")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries)


class GenerationFields(Filters):
    """`GenerationConfig`'s fields; None (absent) keeps its default."""

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_at_eos: bool | None = None
    retrieval: bool | None = None
    k: int | None = Field(None, ge=1)
    retrieve_every: int | None = Field(None, ge=1)
    query_tokens: int | None = Field(None, ge=1)
    threshold: float | None = None
    mode: Literal["naive", "exact", "prefetch"] | None = None


class GenerateRequest(GenerationFields):
    prompt: str
    stream: bool = False


# -- OpenAI-compatible ------------------------------------------------------------------------------------

IGNORED = ("presence_penalty", "frequency_penalty", "logit_bias", "user", "best_of", "suffix", "stream_options",
           "service_tier", "store", "metadata", "parallel_tool_calls", "response_format")


class _OpenAI(BaseModel):
    """OpenAI's sampling fields (its defaults: temperature 1, top_p 1) plus relm's retrieval ones."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    seed: int | None = None
    logprobs: Any = None
    # relm's extras (send with the client's extra_body)
    k: int | None = Field(None, ge=1)
    retrieve_every: int | None = Field(None, ge=1)
    query_tokens: int | None = Field(None, ge=1)
    retrieval: bool | None = None
    mode: Literal["naive", "exact", "prefetch"] | None = None
    before: Time | None = None
    after: Time | None = None
    domains: list[str] = Field(default_factory=list, max_length=1000)


class CompletionRequest(_OpenAI):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts are read
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_OpenAI):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
