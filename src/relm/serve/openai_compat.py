"""The OpenAI API's shapes over relm's generation: /v1/completions and /v1/chat/completions.

A request becomes (prompt, `GenerationConfig`, filters) with OpenAI's defaults (temperature 1, top_p 1;
completions max_tokens 16); relm's retrieval fields ride along (`extra_body` in the openai client). An
answer carries the OpenAI fields and `retrieved`: the passages that were in context, with the new-token
spans they were there for. Chat messages become one prompt through the LM tokenizer's chat template when
it has one, else a plain "role: content" transcript ending in "assistant:".
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..errors import ConfigError
from .bounds import check_prompt, filters, generation_config
from .config import ServeConfig
from .schemas import ChatRequest, CompletionRequest

FINISH = {"length": "length", "eos": "stop", "stop": "stop", "cancelled": "stop"}


def _unsupported(req) -> None:
    if req.n != 1:
        raise ConfigError(f"n = {req.n}: relm returns one choice per request; send n = 1 (or several requests)")
    if req.logprobs not in (None, False):
        raise ConfigError("logprobs are not supported by relm's OpenAI endpoints; leave them unset")


def _config(req, max_tokens: int | None, config: ServeConfig):
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    fields = {"max_new_tokens": max_tokens, "temperature": 1.0 if req.temperature is None else req.temperature,
              "top_p": req.top_p, "seed": req.seed, "stop": stop, "k": req.k, "retrieve_every": req.retrieve_every,
              "query_tokens": req.query_tokens, "retrieval": req.retrieval, "mode": req.mode}
    gconfig = generation_config(fields, config, "max_tokens")
    return gconfig, filters(req, gconfig.k)


def completion_request(req: CompletionRequest, config: ServeConfig):
    """(prompt, GenerationConfig, filters) of a /v1/completions body."""
    _unsupported(req)
    if req.echo:
        raise ConfigError("echo is not supported; the prompt is not repeated in the answer")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ConfigError("prompt must be one string (or a list of one); send one request per prompt")
        prompt = prompt[0]
    check_prompt(prompt, config)
    return (prompt, *_config(req, 16 if req.max_tokens is None else req.max_tokens, config))


def chat_prompt(lm, messages) -> str:
    """One prompt for the LM from chat messages (see the module docstring)."""
    turns = [{"role": m.role, "content": m.text()} for m in messages]
    tok = getattr(lm, "tokenizer", None)
    if tok is not None and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"


def chat_request(req: ChatRequest, lm, config: ServeConfig):
    """(prompt, GenerationConfig, filters, query) of a /v1/chat/completions body; the query of the first
    retrieval is the last user message, not the whole templated conversation."""
    _unsupported(req)
    if lm is None:
        raise ConfigError("this server was started with --lm none (search only); it cannot chat")
    for m in req.messages:
        check_prompt(m.text() or " ", config, "message")
    prompt = chat_prompt(lm, req.messages)
    check_prompt(prompt, config)
    max_tokens = req.max_completion_tokens or req.max_tokens
    users = [m.text() for m in req.messages if m.role == "user" and m.text().strip()]
    return (prompt, *_config(req, max_tokens, config), users[-1] if users else None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(done) -> dict[str, int]:
    p, c = done.counts["prompt_tokens"], done.counts["new_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(rid: str, model: str, done, retrieved: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": done.text, "logprobs": None,
                         "finish_reason": FINISH.get(done.finish_reason, "stop")}],
            "usage": usage(done), "retrieved": retrieved}


def chat_completion(rid: str, model: str, done, retrieved: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "logprobs": None, "finish_reason": FINISH.get(done.finish_reason, "stop")}],
            "usage": usage(done), "retrieved": retrieved}


def completion_chunk(rid: str, model: str, text: str, finish: str | None = None, **extra) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], **extra}


def chat_chunk(rid: str, model: str, delta: dict[str, str], finish: str | None = None, **extra) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
