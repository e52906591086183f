"""What a generation is, as data: `GenerationConfig` (sampling, stopping, retrieval schedule, mode) and
the events a stream yields (`TokenEvent`, `RetrievalEvent`, `DoneEvent`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import check_float, check_int
from ..errors import ConfigError
from ..lm.sampling import check_sampling
from .adaptive import AdaptiveK

MODES = ("naive", "exact", "prefetch")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling: `temperature` (0 = greedy), `top_k` (0 = all), `top_p`, `seed`; stopping: `max_new_tokens`,
    `stop` strings (the text ends before the first one), `stop_at_eos`. Retrieval (when a retriever is
    given and `retrieval` is on): every `retrieve_every` new tokens, with the last `query_tokens` tokens as
    the query (the whole prompt for the first), `k` passages prepended best-last (MassiveDS / In-Context
    RALM), hits below `threshold` dropped. With `adaptive` (an `AdaptiveK` of calibrated thresholds), each
    retrieval after the first takes k from the LM's mean NLL on the tokens since the last one (at most
    `k`); k = 0 skips that retrieval and its re-prefill. With a `template` (instructions, a question) the
    passages go where it says instead, numbered best first (`render_prompt`), and `chat` wraps the result
    as one user turn for an instruction-tuned LM; the new tokens follow it. Modes:

    - naive: the reference loop: at each retrieval rebuild the whole input and prefill it from scratch.
    - exact: the same tokens as naive, faster: an input is prefilled only from where it differs from a
      state already computed (the live one, or one of `prefix_cache` recent ones, e.g. an earlier set of
      passages coming back).
    - prefetch: the next retrieval runs in a worker thread while the LM decodes the current span, with the
      query taken from the tokens there when it starts (stale by up to `retrieve_every` tokens, PipeRAG).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    retrieval: bool = True
    k: int = 2
    retrieve_every: int = 10
    query_tokens: int = 32
    threshold: float | None = None
    mode: str = "exact"
    prefix_cache: int = 4
    check_staleness: bool = False  # prefetch: also run the fresh query, to count how often the sets differ
    adaptive: AdaptiveK | None = None  # choose k per retrieval from the recent tokens' NLL (at most k)
    template: str | None = None  # a prompt with {passages} and {prompt} (see `render_prompt`); None: prepend
    chat: bool = False  # wrap the prompt (rendered template) as one user turn of the LM's chat template

    def __post_init__(self):
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731  (normalising a frozen dataclass)
        set_("max_new_tokens", check_int(self.max_new_tokens, "max_new_tokens (--max-new-tokens)", minimum=1))
        t, k, p = check_sampling(self.temperature, self.top_k, self.top_p)
        set_("temperature", t), set_("top_k", k), set_("top_p", p)
        set_("seed", check_int(self.seed, "seed (--seed)"))
        set_("k", check_int(self.k, "k (-k)", minimum=1))
        set_("retrieve_every", check_int(self.retrieve_every, "retrieve_every (--retrieve-every)", minimum=1))
        set_("query_tokens", check_int(self.query_tokens, "query_tokens (--query-tokens)", minimum=1))
        set_("threshold", check_float(self.threshold, "threshold (--threshold)", optional=True))
        set_("prefix_cache", check_int(self.prefix_cache, "prefix_cache", minimum=0))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {list(stop)!r}")
        set_("stop", stop)
        if self.adaptive is not None and not isinstance(self.adaptive, AdaptiveK):
            if not isinstance(self.adaptive, dict):
                raise ConfigError(f"adaptive must be an AdaptiveK or its dict, got {self.adaptive!r}")
            set_("adaptive", AdaptiveK(**{**self.adaptive, "thresholds": tuple(self.adaptive["thresholds"])}))
        if self.template is not None:
            check_template(self.template)
        if self.mode not in MODES:
            raise ConfigError(f"mode (--mode) {self.mode!r}: choose from {list(MODES)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        if self.adaptive is not None:
            d["adaptive"]["thresholds"] = list(self.adaptive.thresholds)
        return d


def check_template(template: str) -> str:
    """A prompt template: a string with a {prompt} field and at most one {passages} field, nothing else."""
    import string

    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"template (--template): {e}; write literal braces as {{{{ and }}}}") from None
    unknown = sorted(set(names) - {"passages", "prompt"})
    if unknown or "prompt" not in names:
        raise ConfigError(f"template (--template) must contain {{prompt}} and may contain {{passages}}, "
                          f"nothing else; it has {sorted(set(names))}")
    return template


def render_prompt(template: str, prompt: str, passages: tuple[str, ...] | list[str]) -> str:
    """The template with the passages numbered best first ("[1] text", blank lines between) and the prompt."""
    listed = "\n\n".join(f"[{i + 1}] {' '.join(t.split())}" for i, t in enumerate(passages))
    return template.format(passages=listed, prompt=prompt)


@dataclass(frozen=True)
class TokenEvent:
    """A generated token: its index among the new tokens, its id, and the text it adds (may be "" while a
    multi-byte character or a possible stop string is incomplete)."""

    index: int
    token_id: int
    text: str
    type: str = "token"


@dataclass(frozen=True)
class RetrievalEvent:
    """A retrieval: the passages (ids, scores, texts) in context from new token `position` on, the query
    that found them, how many tokens stale that query was (prefetch), and whether the set changed."""

    position: int
    query: str
    passage_ids: tuple[int, ...]
    scores: tuple[float, ...]
    texts: tuple[str, ...] = field(repr=False, default=())
    stale_tokens: int = 0
    changed: bool = True
    fresh_differs: bool | None = None  # check_staleness: the fresh query would have retrieved another set
    k: int | None = None  # adaptive: the k chosen (0: skipped, the passages in context kept)
    recent_nll: float | None = None  # adaptive: the mean NLL it was chosen from
    type: str = "retrieval"


@dataclass(frozen=True)
class DoneEvent:
    """The end: the whole text, the new token ids, why it stopped (length, eos, stop, cancelled), the
    passages used with the [start, end) new-token spans they were in context for, and timings (seconds)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    citations: tuple[dict[str, Any], ...]
    timing: dict[str, float]
    counts: dict[str, int]
    type: str = "done"


def event_dict(event) -> dict[str, Any]:
    """An event as JSON-ready data (`relm generate --json`, the server's SSE)."""
    d = asdict(event)
    for key, value in d.items():
        if isinstance(value, tuple):
            d[key] = list(value)
    return d
