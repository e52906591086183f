"""A relm datastore under lm-evaluation-harness (`pip install lm-eval`): `RetrievalLM`, an lm-eval `LM`
that prepends the passages a request's query retrieves to its context, then scores or generates with a
relm LM. What MassiveDS does with its fork of the harness, as a model wrapper.

    import lm_eval
    from relm.qa.harness import RetrievalLM
    lm = RetrievalLM(datastore="ds/", lm="smollm2", k=3, retriever="bm25", index="bm25")
    tasks = lm_eval.tasks.TaskManager(include_path="my_tasks/", include_defaults=False)  # local YAML tasks
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=tasks)

(or `model="relm", model_args="datastore=ds/,k=3"` once this module is imported). Per request:

- the query is the context's last paragraph (the text after its last blank line: in a few-shot prompt,
  the question asked), or `query(context)` when a callable is given;
- the context becomes `{passages}` (numbered best first, `render_prompt`) + a blank line + the context;
  passages that would overflow the window (with the continuation, or `max_gen_toks`) are dropped,
  the least relevant first, and counted in `self.dropped`;
- loglikelihood: sum of the continuation's token log-probs through the step API (`prefill` of the
  context, reused across the choices that share it, then one `step` per token), and is_greedy (each
  continuation token the argmax); generate_until: `generate_stream`, greedy, stopping at `until`;
  loglikelihood_rolling: the text alone (no retrieval: perplexity has no question), scored in windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # an optional dependency (the dev extra has it)
    raise ImportError("relm.qa.harness needs lm-evaluation-harness: pip install lm-eval") from e

from ..errors import ConfigError
from ..generation.config import render_prompt
from ..lm.continuations import score_continuation
from .context import Found, FoundPassages, fit_passages, retrieve_all

log = logging.getLogger(__name__)

TEMPLATE = "{passages}\n\n{prompt}"


def last_paragraph(context: str) -> str:
    """The text after the context's last blank line (the whole context when it has none)."""
    parts = [p for p in context.strip().split("\n\n") if p.strip()]
    return parts[-1].strip() if parts else context.strip()


@register_model("relm")
class RetrievalLM(LM):
    """`lm`: a relm LM or its spec ("smollm2", a model directory, a .gguf); `retriever`: a relm Retriever, or
    a kind ("exact", "bm25", "hybrid", ...) searched over `datastore` with `index`/`bm25_index`; `k` = 0
    turns retrieval off (the same LM closed-book, for the side-by-side run)."""

    def __init__(self, lm: Any = "smollm2", retriever: Any = "exact", datastore: str | None = None, k: int = 3,
                 index: str | None = None, bm25_index: str | None = None,
                 query: Callable[[str], str] = last_paragraph, threads: int | None = None, **_: Any):
        super().__init__()
        from ..lm import LMConfig, load_lm
        from ..retrieval.options import RetrieverConfig
        from ..retrieval.retriever import Retriever

        self.k = int(k)
        if self.k < 0:
            raise ConfigError(f"k must be >= 0, got {k}")
        self.lm = load_lm(LMConfig(model=lm, threads=int(threads) if threads else None)) if isinstance(lm, str) else lm
        if isinstance(retriever, str) and self.k:
            if datastore is None:
                raise ConfigError("RetrievalLM needs datastore=DS (or a Retriever object, or k=0)")
            from ..datastore import Datastore

            retriever = Retriever(Datastore.open(datastore), RetrieverConfig(retriever, index=index,
                                                                               bm25_index=bm25_index))
        self.retriever = retriever if self.k else None
        if self.k and self.k > len(self.retriever.ds):
            raise ConfigError(f"k = {self.k} exceeds the datastore's {len(self.retriever.ds):,} passages")
        self.query = query
        self.dropped = 0  # passages dropped so that a request fits the window
        self._found: dict[str, Found] = {}

    # -- passages --------------------------------------------------------------------------------------
    def _retrieve(self, contexts: list[str]) -> None:
        """Search every new context's query once, in batches."""
        new = list(dict.fromkeys(c for c in contexts if c not in self._found))
        if self.retriever is None or not new:
            return
        for c, f in zip(new, retrieve_all(self.retriever, [self.query(c) or c for c in new], self.k), strict=True):
            self._found[c] = f

    def _with_passages(self, context: str, reserve: int) -> tuple[str, Found]:
        """(the context with its passages in front, those passages): as many of the best as fit the window
        with `reserve` tokens left."""
        if self.retriever is None:
            return context, Found((), (), ())
        found = self._found[context]
        count = lambda j: len(self.lm.encode(render_prompt(TEMPLATE, context, list(found.texts[:j])))[0])  # noqa: E731
        n = fit_passages(len(found.ids), count, self.lm.context_length - reserve)
        if n < 0:
            raise ConfigError(f"a request's context alone leaves less than {reserve} tokens of {self.lm.name}'s "
                              f"{self.lm.context_length}-token window")
        self.dropped += len(found.ids) - n
        kept = found.top(n)
        return (render_prompt(TEMPLATE, context, list(kept.texts)) if n else context), kept

    # -- lm-eval's three calls -----------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        self._retrieve([r.args[0] for r in requests])
        out: list[tuple[float, bool]] = []
        state = None
        for r in requests:
            context, continuation = r.args
            cont = self.lm.encode(continuation)[0]
            if len(cont) == 0:
                raise ConfigError(f"continuation {continuation!r} has no tokens")
            text, _ = self._with_passages(context, len(cont))
            ctx = self.lm.encode(text)[0]
            if len(ctx) == 0:  # an empty context: condition on the end-of-text token, as lm-eval's HF model does
                ctx = np.asarray([self.lm.eos_id or 0], dtype=np.int64)
            state = self.lm.prefill(ctx, reuse=state)  # choices after one context reuse its KV cache
            logp, greedy = score_continuation(self.lm, state, cont)
            total = float(logp.sum())
            out.append((total, bool(greedy)))
        return out

    def generate_until(self, requests) -> list[str]:
        from ..generation import DoneEvent, GenerationConfig, generate_stream

        self._retrieve([r.args[0] for r in requests])
        out = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
                raise ConfigError("RetrievalLM generates greedily; the task asks for sampling")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            _, kept = self._with_passages(context, max_new)
            config = GenerationConfig(max_new_tokens=max_new, stop=tuple(u for u in until if u),
                                      retrieval=bool(kept.ids), k=max(1, len(kept.ids)), retrieve_every=max_new,
                                      template=TEMPLATE if kept.ids else None, mode="naive", prefix_cache=0)
            retriever = FoundPassages(self.retriever.ds, kept) if kept.ids else None
            done = [e for e in generate_stream(self.lm, retriever, context, config) if isinstance(e, DoneEvent)][-1]
            out.append(done.text)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        from ..lm.base import ScoreRequest

        out = []
        window = self.lm.context_length
        for r in requests:
            ids = self.lm.encode(r.args[0])[0]
            ids = np.concatenate([[self.lm.eos_id or 0], ids]).astype(np.int64)  # the first token gets a context
            total = 0.0
            for start in range(1, len(ids), window - 1):  # disjoint scored spans, each with what fits before it
                end = min(len(ids), start + window - 1)
                lo = max(0, end - window)
                total += float(np.sum(self.lm.score([ScoreRequest(ids[lo:end], end - start)],
                                                    show_progress=False)[0]))
            out.append(total)
        return out
