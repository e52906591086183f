"""Open-domain QA runs: every question answered under each condition (k passages, n few-shot examples),
greedily through `generate_stream` with stop strings, and scored: exact match and token F1 (SQuAD v1.1,
max over the golds), answer recall@k of the retrieved passages and of those that fit the prompt.

A condition is (k, shots); k = 0 is closed-book. Passages are searched once per question at the largest
k (every retriever's top-k is a prefix of its top-K: exact, BM25, and hybrid by `check_hybrid_k`) and
each condition takes its prefix, so conditions differ only in k and shots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..config import check_int
from ..errors import ConfigError
from ..eval.answers import answer_recall, exact_match, token_f1
from .context import Found, FoundPassages, fit_passages
from .data import QAItem
from .prompts import QAPrompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAConfig:
    """What a QA run varies and fixes: the k and shots grid, greedy answers of at most `max_new_tokens`
    cut at the first `stop` string, `chat` (the prompt as a user turn), `seed` (examples, sample)."""

    ks: tuple[int, ...] = (0, 5)
    shots: tuple[int, ...] = (0,)
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    chat: bool = False
    seed: int = 0

    def __post_init__(self):
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731  (normalising a frozen dataclass)
        ks = tuple(sorted({check_int(k, "-k", minimum=0) for k in self.ks}))
        set_("ks", ks if 0 in ks else (0, *ks))  # closed-book always runs beside: the baseline of every change
        set_("shots", tuple(sorted({check_int(s, "--shots", minimum=0, maximum=64) for s in self.shots})))
        set_("max_new_tokens", check_int(self.max_new_tokens, "--max-new-tokens", minimum=1))
        set_("stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))

    @property
    def conditions(self) -> list[tuple[int, int]]:
        return [(k, s) for s in self.shots for k in self.ks]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ks": list(self.ks), "shots": list(self.shots), "stop": list(self.stop)}


def condition_name(k: int, shots: int) -> str:
    return f"k{k}-shots{shots}"


def prompt_counter(lm, prompt: QAPrompt, shots: Sequence[QAItem], question: str, k: int, texts: Sequence[str],
                   chat: bool):
    """prompt_tokens(j): the tokens of the prompt holding the best j passages exactly as `generate_stream`
    renders it (`render_prompt` of the generation template, then the chat turn when `chat`)."""
    from ..generation.config import render_prompt
    from ..lm.base import chat_text

    template = prompt.generation_template(shots, k)

    def count(j: int) -> int:
        text = render_prompt(template, question, list(texts[:j]))
        return len(lm.encode(chat_text(lm, text) if chat else text)[0])

    return count


def fitted(lm, prompt: QAPrompt, shots: Sequence[QAItem], item: QAItem, found: Found, k: int, chat: bool,
           reserve: int) -> Found:
    """The best of `found`'s top k whose prompt leaves `reserve` tokens of the window free (the answer's
    max_new_tokens, or the longest choice); a ConfigError when the question and examples alone do not."""
    top = found.top(k)
    budget = lm.context_length - reserve
    n = fit_passages(len(top.ids), prompt_counter(lm, prompt, shots, item.question, k, top.texts, chat), budget)
    if n < 0:
        raise ConfigError(f"question {item.id}: the prompt with {len(shots)} examples and no passages leaves less "
                          f"than {reserve} tokens of {lm.name}'s {lm.context_length}-token window for the answer; "
                          "use fewer --shots or a smaller --max-new-tokens")
    return top.top(n)


def answer(lm, ds, prompt: QAPrompt, shots: Sequence[QAItem], item: QAItem, passages: Found, k: int,
           config: QAConfig) -> dict[str, Any]:
    """One greedy answer through `generate_stream` (one retrieval, returning `passages`; none for k = 0)."""
    from ..generation import DoneEvent, GenerationConfig, generate_stream

    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=0.0, stop=config.stop,
                           retrieval=k > 0, k=max(1, len(passages.ids)), retrieve_every=config.max_new_tokens,
                           template=prompt.generation_template(shots, k), chat=config.chat, mode="naive",
                           prefix_cache=0)
    retriever = FoundPassages(ds, passages) if k > 0 else None
    done = None
    for event in generate_stream(lm, retriever, item.question, gen, query=item.question):
        if isinstance(event, DoneEvent):
            done = event
    return {"prediction": done.text.strip(), "finish_reason": done.finish_reason,
            "new_tokens": done.counts["new_tokens"], "prefill_s": round(done.timing["prefill"], 4),
            "decode_s": round(done.timing["decode"], 4)}


def run_condition(lm, ds, prompt: QAPrompt, items: Sequence[QAItem], found: Sequence[Found],
                  shots_pool: Sequence[QAItem], k: int, n_shots: int, config: QAConfig,
                  bar=None) -> Iterator[dict[str, Any]]:
    """Per question, its record under condition (k, n_shots): the prediction, golds, passages (retrieved
    and in the prompt), EM, F1, recall@k (retrieved) and recall in the prompt, seconds."""
    shots = list(shots_pool[:n_shots])
    if len(shots) < n_shots:
        raise ConfigError(f"--shots {n_shots}: only {len(shots_pool)} examples were drawn")
    for item, f in zip(items, found, strict=True):
        t0 = time.perf_counter()
        top = f.top(k)
        kept = fitted(lm, prompt, shots, item, f, k, config.chat, config.max_new_tokens)
        out = answer(lm, ds, prompt, shots, item, kept, k, config)
        rec = {"id": item.id, "question": item.question, "condition": condition_name(k, n_shots), "k": k,
               "shots": n_shots, "prediction": out["prediction"], "gold": list(item.answers),
               "em": exact_match(out["prediction"], item.answers), "f1": token_f1(out["prediction"], item.answers),
               "recall": answer_recall(item.answers, top.texts) if k else None,
               "recall_in_prompt": answer_recall(item.answers, kept.texts) if k else None,
               "retrieved": len(top.ids), "in_prompt": len(kept.ids), "dropped": len(top.ids) - len(kept.ids),
               "passage_ids": list(top.ids), "passage_scores": [round(s, 5) for s in top.scores],
               "finish_reason": out["finish_reason"], "new_tokens": out["new_tokens"], "prefill_s": out["prefill_s"],
               "decode_s": out["decode_s"], "seconds": time.perf_counter() - t0}
        if bar is not None:
            bar.update(1)
        yield rec


def run_qa(lm, retriever, prompt: QAPrompt, items: Sequence[QAItem], shots_pool: Sequence[QAItem],
           config: QAConfig, *, task: str = "open", conditions: Sequence[tuple[int, int]] | None = None,
           search_options=None, show_progress: bool | None = None,
           found: Sequence[Found] | None = None) -> Iterator[tuple[tuple[int, int], list[dict[str, Any]]]]:
    """Yield ((k, shots), records) per condition (default: all of `config`), one condition at a time (a
    caller can save each as it ends). The passages are searched once, at the largest k, unless `found`
    (per item) is given. task "open": generated answers; "choices": multiple-choice log-likelihoods."""
    from ..progress import progress
    from .context import check_k, retrieve_all

    conditions = list(conditions if conditions is not None else config.conditions)
    if task not in ("open", "choices"):
        raise ConfigError(f"task must be open or choices, got {task!r}")
    prompt.check_k([k for k, _ in conditions])
    top_k = max(k for k, _ in conditions)
    ds = retriever.ds if retriever is not None else None
    if top_k and retriever is None:
        raise ConfigError("k > 0 needs a retriever")
    if top_k:
        check_k([top_k], ds)
    if found is None:
        found = retrieve_all(retriever, [q.question for q in items], top_k, search_options)
    if task == "choices":
        from .choices import run_choices
    bar = progress(total=len(items) * len(conditions), desc="qa", unit="q", enabled=show_progress)
    try:
        for k, s in conditions:
            bar.set_postfix_str(condition_name(k, s))
            if task == "open":
                recs = list(run_condition(lm, ds, prompt, items, found, shots_pool, k, s, config, bar))
            else:
                recs = list(run_choices(lm, prompt, items, found, shots_pool, k, s, config, bar))
            yield (k, s), recs
    finally:
        bar.close()
