"""`Metrics`: the server's Prometheus series, in a registry of its own (one per app, so tests can run several).

relm_requests_total{endpoint,status}, relm_errors_total{endpoint,status} (status >= 400),
relm_request_seconds{endpoint} (histogram), relm_search_batch_queries / relm_search_batch_requests
(histograms of what each retriever call carried), relm_generations_active, relm_generations_total{finish},
relm_generated_tokens_total, relm_cache_{hits,misses}_total and relm_cache_hit_rate (read from the
retriever's result cache at scrape time), relm_datastore_revision.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _CacheCollector:
    """Cache and revision gauges read when scraped, from `stats()` -> (hits, misses, revision)."""

    def __init__(self, stats: Callable[[], tuple[int, int, int | None]]):
        self.stats = stats

    def collect(self):
        hits, misses, revision = self.stats()
        yield CounterMetricFamily("relm_cache_hits", "result cache hits", value=hits)
        yield CounterMetricFamily("relm_cache_misses", "result cache misses", value=misses)
        total = hits + misses
        yield GaugeMetricFamily("relm_cache_hit_rate", "result cache hits / lookups (0 before any lookup)",
                                value=hits / total if total else 0.0)
        if revision is not None:
            yield GaugeMetricFamily("relm_datastore_revision", "the datastore revision being served", value=revision)


class Metrics:
    def __init__(self, cache_stats: Callable[[], tuple[int, int, int | None]]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("relm_requests", "requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("relm_errors", "requests answered with status >= 400", ["endpoint", "status"],
                              registry=r)
        self.latency = Histogram("relm_request_seconds", "time to answer (streams: to the last byte)", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_queries = Histogram("relm_search_batch_queries", "queries per retriever call",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("relm_search_batch_requests", "requests per retriever call",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.gen_active = Gauge("relm_generations_active", "generations running", registry=r)
        self.generations = Counter("relm_generations", "generations ended", ["finish"], registry=r)
        self.tokens = Counter("relm_generated_tokens", "tokens generated", registry=r)
        r.register(_CacheCollector(cache_stats))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch(self, n_requests: int, n_queries: int) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_queries.observe(n_queries)

    def text(self) -> bytes:
        return generate_latest(self.registry)
