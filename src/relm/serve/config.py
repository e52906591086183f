"""`ServeConfig`: what a `relm serve` process serves and the bounds it holds every request to.

One frozen dataclass; the `relm serve` flags map onto its fields one to one (`--max-k` -> `max_k`), and
`GET /info` reports it (the API key excepted)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import check_float, check_int
from ..errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServeConfig:
    """`datastore` and the `retriever` (a `RetrieverConfig` as a dict) and `lm` ("smollm2", a model
    directory, or None: search only) to load once. Bounds: request bodies of at most `max_body_bytes`, at
    most `max_queries` queries per /search request, k <= `max_k`, prompts of at most `max_prompt_chars`
    characters, at most `max_tokens` new tokens; every request ends within `timeout_s` seconds (504).
    Batching: concurrent /search requests gathered for `batch_window_ms` (or until `max_batch` queries)
    into one `Retriever.search` per identical options; `search_threads` batches run at once, `gen_threads`
    generations. The retriever follows the datastore's updates, checking manifest.json at most every
    `refresh_s` seconds (before a batch or a generation). `torch_threads`: torch's intra-op threads (None:
    the CPUs shared out over the search and generation threads, at least 1; see `torch_threads_for`).
    `ray` (`--ray`): the sharded retriever searches through one Ray actor per shard (`relm.distributed`)."""

    datastore: str
    retriever: dict[str, Any] = field(default_factory=dict)
    lm: str | None = "smollm2"
    device: str = "auto"
    max_body_bytes: int = 1 << 20
    max_queries: int = 256
    max_k: int = 1000
    max_prompt_chars: int = 32_000
    max_tokens: int = 1024
    timeout_s: float = 60.0
    batch_window_ms: float = 3.0
    max_batch: int = 8  # MiniLM on a CPU (1 thread): 35 q/s at 4-8 queries a call, 17 at 64 (serve_bench)
    search_threads: int = 1
    gen_threads: int = 2
    refresh_s: float = 0.5
    torch_threads: int | None = None
    ray: dict[str, Any] | None = None  # a `relm.distributed.RayConfig` as a dict: the sharded index on Ray actors

    def __post_init__(self):
        if not isinstance(self.datastore, str) or not self.datastore:
            raise ConfigError(f"datastore must be a path, got {self.datastore!r}")
        if self.lm is not None and (not isinstance(self.lm, str) or not self.lm.strip()):
            raise ConfigError(f"lm (--lm) must be 'smollm2', a model directory or 'none', got {self.lm!r}")
        for name, flag in (("max_body_bytes", "--max-body-bytes"), ("max_queries", "--max-queries"),
                           ("max_k", "--max-k"), ("max_prompt_chars", "--max-prompt-chars"),
                           ("max_tokens", "--max-tokens"), ("max_batch", "--max-batch"),
                           ("search_threads", "--search-threads"), ("gen_threads", "--gen-threads")):
            check_int(getattr(self, name), f"{name} ({flag})", minimum=1)
        check_float(self.timeout_s, "timeout_s (--timeout)", minimum=0.001)
        check_float(self.batch_window_ms, "batch_window_ms (--batch-window-ms)", minimum=0, maximum=1000)
        check_float(self.refresh_s, "refresh_s (--refresh-s)", minimum=0)
        check_int(self.torch_threads, "torch_threads (--torch-threads)", minimum=1, optional=True)

    def torch_threads_for(self, cpus: int | None) -> int:
        """Intra-op threads per torch call: the server runs `search_threads + gen_threads` calls at once, so
        each gets its share of the CPUs. Measured on 2 busy cores: one MiniLM query took 26 ms with 1
        thread and 564 ms with 2 (every op waits for the slower thread), and batches of 64 ran 14 vs 12 q/s."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, (cpus or 1) // (self.search_threads + self.gen_threads))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"serve config: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
