"""Multiple-choice scoring (MMLU / MedQA style, as MassiveDS runs them through lm-evaluation-harness):
each choice is a continuation of the prompt (passages, examples, question), scored by the LM's
log-likelihood; the prediction is the most likely choice, raw (sum of the choice's token log-probs) and
length-normalized (that sum over the choice's characters, lm-evaluation-harness's acc_norm).

log p(choice | context) = sum_t log p(c_t | context, c_<t), with the context and the choice tokenized
apart (the choice after a space, unless the context ends in whitespace) so every choice shares one context,
prefilled once (the step API), each choice fed after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..lm.base import chat_text
from ..lm.continuations import score_continuation
from .context import Found
from .data import QAItem
from .prompts import QAPrompt
from .run import QAConfig, condition_name, fitted


def continuation(context: str, choice: str) -> str:
    return choice if context[-1:].isspace() else " " + choice


def choice_logprobs(lm, context: str, choices: Sequence[str]) -> list[np.ndarray]:
    """Per choice, the log-probs of its tokens after the context: the context prefilled once, each choice
    fed on a copy of its state (`relm.lm.continuations`)."""
    conts = []
    for c in choices:
        ids = lm.encode(continuation(context, c))[0]
        if len(ids) == 0:
            raise ConfigError(f"choice {c!r} has no tokens")
        conts.append(ids)
    state = lm.prefill(lm.encode(context)[0])
    return [score_continuation(lm, state, ids)[0] for ids in conts]


def choice_scores(logprobs: Sequence[np.ndarray], choices: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(raw, normalized) per choice: sum of its token log-probs, and that over its length in characters."""
    raw = np.array([float(np.sum(lp)) for lp in logprobs])
    return raw, raw / np.array([max(1, len(c)) for c in choices], dtype=np.float64)


def choice_context(lm, prompt: QAPrompt, shots: Sequence[QAItem], item: QAItem, texts: Sequence[str], k: int,
                   chat: bool) -> str:
    """The text before each choice: the prompt as `generate_stream` would render it (a chat turn when chat)."""
    from ..generation.config import render_prompt

    text = render_prompt(prompt.generation_template(shots, k), item.question, list(texts))
    return chat_text(lm, text) if chat else text


def run_choices(lm, prompt: QAPrompt, items: Sequence[QAItem], found: Sequence[Found], shots_pool: Sequence[QAItem],
                k: int, n_shots: int, config: QAConfig, bar=None) -> Iterator[dict[str, Any]]:
    """Per item, its record under (k, n_shots): choice log-likelihoods, raw and normalized picks, accuracy."""
    shots = list(shots_pool[:n_shots])
    for item, f in zip(items, found, strict=True):
        t0 = time.perf_counter()
        longest = max(len(lm.encode(" " + c)[0]) for c in item.choices)
        kept = fitted(lm, prompt, shots, item, f, k, config.chat, longest + 1)
        context = choice_context(lm, prompt, shots, item, kept.texts, k, config.chat)
        raw, norm = choice_scores(choice_logprobs(lm, context, item.choices), item.choices)
        pick_raw, pick_norm = int(np.argmax(raw)), int(np.argmax(norm))
        top = f.top(k)
        if bar is not None:
            bar.update(1)
        yield {"id": item.id, "question": item.question, "condition": condition_name(k, n_shots), "k": k,
               "shots": n_shots, "choices": list(item.choices), "answer": item.answer,
               "loglik": [round(float(x), 5) for x in raw], "pred_raw": pick_raw, "pred_norm": pick_norm,
               "acc": float(pick_raw == item.answer), "acc_norm": float(pick_norm == item.answer),
               "retrieved": len(top.ids), "in_prompt": len(kept.ids), "dropped": len(top.ids) - len(kept.ids),
               "passage_ids": list(top.ids), "passage_scores": [round(s, 5) for s in top.scores],
               "seconds": time.perf_counter() - t0}
