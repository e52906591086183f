"""Retrieval-augmented generation as a stream of events: `generate_stream` (sync) and `agenerate_stream`.

Every `retrieve_every` new tokens the retriever is asked for k passages with the last `query_tokens`
tokens as the query (the prompt, for the first), and the LM's input becomes those passages, best last,
then the context (prompt + new tokens), left-truncated to the LM's window (`relm.eval.variants.prepend`,
the layout `relm eval` scores). Between retrievals each new token is one KV-cached step. The input is also
rebuilt, with the same passages, when the context outgrows the window. With a `template` (and/or `chat`)
the input is instead the rendered template (the passages numbered where it says, the prompt) followed by
the new tokens: the layout of a question answered from retrieved passages.

The three modes (see `GenerationConfig`) differ only in how an input is prefilled and when retrieval runs:
naive prefills every rebuilt input from scratch; exact prefills it from the longest prefix it shares with
a state already computed (`PrefixStates`), which gives the naive loop's tokens (up to floating-point
summation order, which greedy decoding only notices at exact ties); prefetch also overlaps retrieval with
decoding. Without a retriever (or `retrieval=False`) it is plain KV-cached generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..lm.base import LMState, chat_text, common_prefix
from ..lm.sampling import sample_next
from .adaptive import token_nll
from .config import DoneEvent, GenerationConfig, RetrievalEvent, TokenEvent, render_prompt
from .text import TextStream


class PrefixStates:
    """The most recent LM states (at most `size`, least recently used dropped). `prefill(ids)` starts from
    the one sharing the longest prefix with ids, copied, so the kept states stay as they were."""

    def __init__(self, lm, size: int):
        self.lm, self.size = lm, size
        self.states: list[LMState] = []
        self.reused = 0  # tokens not prefilled thanks to a kept state

    def prefill(self, ids: np.ndarray, live: LMState | None) -> LMState:
        pool = ([live] if live is not None else []) + self.states
        best = max(pool, key=lambda s: common_prefix(s.ids, ids), default=None)
        shared = min(common_prefix(best.ids, ids), len(ids) - 1) if best is not None else 0
        state = self.lm.prefill(ids, reuse=best if shared > 0 else None, copy=True)
        self.reused += shared
        if self.size and live is not None:  # the live state is kept as it is now (it is not stepped again)
            self.states = [live, *(s for s in self.states if s is not live)][: self.size]
        return state


class _Retrieval:
    """The retriever calls of one generation: passage texts and LM ids cached, timings counted."""

    def __init__(self, lm, retriever, search_options):
        self.lm, self.retriever, self.opts = lm, retriever, search_options
        self.ids_of: dict[int, np.ndarray] = {}
        self.seconds = 0.0
        self.lock = threading.Lock()

    def __call__(self, query: str) -> tuple[tuple[int, ...], tuple[float, ...], tuple[str, ...]]:
        t0 = time.perf_counter()
        scores, ids = self.retriever.search_ids([query], self.opts)
        keep = [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        texts = tuple(self.retriever.ds.passages([i for i, _ in keep])) if keep else ()
        with self.lock:
            self.seconds += time.perf_counter() - t0
        return tuple(i for i, _ in keep), tuple(s for _, s in keep), texts

    def passage_ids(self, pid: int, text: str) -> np.ndarray:
        from ..eval.evaluate import SEPARATOR  # the layout relm eval scores

        if pid not in self.ids_of:
            self.ids_of[pid] = self.lm.encode(text + SEPARATOR)[0]
        return self.ids_of[pid]


def _search_options(config: GenerationConfig, options):
    from ..retrieval.options import SearchOptions

    if isinstance(options, dict):
        options = SearchOptions.from_dict(options)
    base = options or SearchOptions()
    threshold = config.threshold if config.threshold is not None else base.threshold
    return dataclasses.replace(base, k=config.k, threshold=threshold)


def generate_stream(lm, retriever, prompt: str, config: GenerationConfig | None = None, *,
                    search_options=None, cancel: threading.Event | None = None,
                    query: str | None = None) -> Iterator[Any]:
    """Yield a RetrievalEvent at each retrieval, a TokenEvent per new token and a DoneEvent at the end.
    `retriever` may be None (no retrieval); `search_options` (a SearchOptions or dict: filters such as
    before/after/domains) applies to every retrieval; `cancel` (a threading.Event) stops the stream at the
    next token with finish_reason "cancelled"; `query` is the first retrieval's query (default: the
    prompt; e.g. the question alone when the prompt also holds few-shot examples)."""
    from ..eval.variants import prepend

    config = config or GenerationConfig()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty; give some text to continue")
    def head(texts: tuple[str, ...]) -> str:  # what precedes the new tokens, with a template
        text = render_prompt(config.template, prompt, texts) if config.template else prompt
        return chat_text(lm, text) if config.chat else text

    templated = config.template is not None or config.chat
    prompt_ids = lm.encode(head(()))[0]
    limit = lm.context_length
    if len(prompt_ids) >= limit:
        raise ConfigError(f"the prompt is {len(prompt_ids):,} tokens; {lm.name}'s context is {limit:,}: "
                          "shorten it")
    use_retrieval = retriever is not None and config.retrieval
    retrieve = _Retrieval(lm, retriever, _search_options(config, search_options)) \
        if use_retrieval else None
    rng = np.random.default_rng(config.seed)
    stream = TextStream(lm.decode, config.stop)
    prefix = PrefixStates(lm, config.prefix_cache if config.mode != "naive" else 0)
    pool = ThreadPoolExecutor(1, thread_name_prefix="relm-prefetch") if config.mode == "prefetch" else None
    pending: tuple[Future, int, str] | None = None  # prefetch: (future, position it started at, query)

    context = [int(i) for i in prompt_ids]
    new: list[int] = []
    passages: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()
    spans: list[dict[str, Any]] = []  # citations: passages and the new-token span they were in context for
    timing = {"retrieval": 0.0, "retrieval_wait": 0.0, "prefill": 0.0, "decode": 0.0, "first_token": 0.0}
    counts = {"retrievals": 0, "changed_sets": 0, "prefills": 0, "prefilled_tokens": 0, "reused_tokens": 0,
              "stale_differs": 0, "skipped_retrievals": 0}
    adaptive = config.adaptive
    nlls: list[float] = []  # adaptive: the NLL of each new token under the input it was sampled from
    state: LMState | None = None
    t_start = time.perf_counter()
    reason = "length"

    first_query = query if query is not None and query.strip() else prompt

    def query_for(ids: list[int], first: bool) -> str:
        return (first_query if first else lm.decode(ids[-config.query_tokens:]).strip()) or first_query

    def rebuild() -> LMState:
        """Prefill the input of the current passages + context (the naive loop's input)."""
        nonlocal state
        if templated:  # the template around these passages, then the new tokens
            ids = np.concatenate([lm.encode(head(texts))[0], np.asarray(new, dtype=np.int64)])[-(limit - 1):]
        else:
            ids = prepend([retrieve.passage_ids(p, t) for p, t in zip(passages, texts, strict=True)]
                          if retrieve else [], np.asarray(context[-(limit - 1):], dtype=np.int64), limit - 1)
        t0 = time.perf_counter()
        before = prefix.reused
        state = prefix.prefill(ids, None if config.mode == "naive" else state)
        timing["prefill"] += time.perf_counter() - t0
        counts["prefills"] += 1
        counts["reused_tokens"] += prefix.reused - before
        counts["prefilled_tokens"] += len(ids) - (prefix.reused - before)
        return state

    try:
        for t in range(config.max_new_tokens):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            k_now = None
            if retrieve is not None and t % config.retrieve_every == 0 and adaptive is not None and t > 0:
                k_now = min(adaptive.choose(nlls[-config.retrieve_every:]), config.k)
                if k_now == 0:  # confident: keep the passages in context, no retrieval, no re-prefill
                    counts["skipped_retrievals"] += 1
                    yield RetrievalEvent(t, "", passages, (), texts, 0, False, None, 0,
                                         float(np.mean(nlls[-config.retrieve_every:])))
                    if len(state) < limit:
                        t0 = time.perf_counter()
                        lm.step(state, [context[-1]])  # the boundary token was left unfed for a rebuild
                        timing["decode"] += time.perf_counter() - t0
                    k_now = -1
            if retrieve is not None and t % config.retrieve_every == 0 and k_now != -1:
                found, pending = _next_retrieval(retrieve, config, t, context, query_for, pool, pending, timing)
                ids, scores, found_texts, query, stale, differs = found
                if k_now is not None:
                    ids, scores, found_texts = ids[:k_now], scores[:k_now], found_texts[:k_now]
                changed = ids != passages
                passages, texts = ids, found_texts
                counts["retrievals"] += 1
                counts["changed_sets"] += int(changed and t > 0)
                counts["stale_differs"] += int(bool(differs))
                if changed or not spans:
                    spans.append({"passage_ids": list(ids), "scores": list(scores), "start": t, "end": t})
                recent = float(np.mean(nlls[-config.retrieve_every:])) if k_now is not None else None
                yield RetrievalEvent(t, query, ids, scores, texts, stale, changed, differs, k_now, recent)
                state = rebuild()
            elif state is None:
                state = rebuild()
            elif len(state) >= limit:  # the context outgrew the window: the same passages, truncated again
                state = rebuild()
            token = sample_next(state.logits, rng, temperature=config.temperature, top_k=config.top_k,
                                top_p=config.top_p)
            if adaptive is not None:
                nlls.append(token_nll(state.logits, token))
            if t == 0:
                timing["first_token"] = time.perf_counter() - t_start
            if config.stop_at_eos and lm.eos_id is not None and token == lm.eos_id:
                reason = "eos"
                break
            new.append(token)
            context.append(token)
            if spans:
                spans[-1]["end"] = t + 1
            delta = stream.push(token)
            yield TokenEvent(t, token, delta)
            if stream.stopped:
                reason = "stop"
                break
            last = t + 1 == config.max_new_tokens
            boundary = retrieve is not None and (t + 1) % config.retrieve_every == 0
            if not last and not boundary and len(state) < limit:
                t0 = time.perf_counter()
                lm.step(state, [token])
                timing["decode"] += time.perf_counter() - t0
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    tail = stream.finish()
    if tail:
        yield TokenEvent(len(new), -1, tail)
    timing["retrieval"] = retrieve.seconds if retrieve else 0.0
    timing["total"] = time.perf_counter() - t_start
    yield DoneEvent(stream.text(), tuple(new), reason, tuple(spans), timing,
                    {**counts, "new_tokens": len(new), "prompt_tokens": len(prompt_ids)})


def _next_retrieval(retrieve, config, t, context, query_for, pool, pending, timing):
    """((ids, scores, texts, query, stale_tokens, fresh_differs), the next pending prefetch)."""
    if pool is None or pending is None:  # synchronous (naive, exact, and prefetch's first retrieval)
        query = query_for(context, t == 0)
        ids, scores, texts = retrieve(query)
        stale, differs = 0, None
    else:
        future, started, query = pending
        t0 = time.perf_counter()
        ids, scores, texts = future.result()
        timing["retrieval_wait"] += time.perf_counter() - t0
        stale = t - started
        differs = None
        if config.check_staleness and stale:
            differs = retrieve(query_for(context, False))[0] != ids
    if pool is not None:  # start the retrieval for the next span now, with the tokens there are now
        q = query_for(context, False)
        pending = (pool.submit(retrieve, q), t, q)
    return (ids, scores, texts, query, stale, differs), pending


async def agenerate_stream(lm, retriever, prompt: str, config: GenerationConfig | None = None, *,
                           search_options=None, query: str | None = None, executor=None) -> AsyncIterator[Any]:
    """`generate_stream` as an async iterator: the LM runs in a worker thread (of `executor`, default the
    loop's) and the events come through an asyncio queue, so the event loop stays free; leaving the loop
    early cancels the generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    end = object()

    def work():
        try:
            for event in generate_stream(lm, retriever, prompt, config, search_options=search_options,
                                         cancel=cancel, query=query):
                loop.call_soon_threadsafe(queue.put_nowait, event)
        except BaseException as e:  # handed to the consumer, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, end)

    worker = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await queue.get()
            if item is end:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        await worker
