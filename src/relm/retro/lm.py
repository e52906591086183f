"""A RETRO model behind the LM step contract (`prefill` / `step`, see relm.lm.base), so that
`relm.generate_stream` drives RETRO checkpoints and retrofits with the same loop as any HF LM.

Retrieval happens inside the model, per chunk, through chunked cross-attention: before tokens are fed,
every chunk of m tokens they complete is retrieved for (`retrieve(chunk ids)`, as
`retro.neighbours.generation_retriever` builds it) and queued in the DecodeState, exactly as
`RetroModel.generate` does, so the two produce the same tokens. The stream is therefore run with no
passage retriever of its own (nothing is prepended). A RETRO state is not croppable (its CCA memory is
per completed chunk), so `prefill(reuse=...)` always starts afresh; the loop only re-prefills when the
context outgrows max_seq_len.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..lm.base import LMState
from .model import DecodeState, RetroModel


class RetroLM:
    def __init__(self, model: RetroModel, tokenizer, retrieve: Callable[[np.ndarray], Any] | None = None,
                 name: str = "retro"):
        self.model, self.tokenizer, self.retrieve = model.eval(), tokenizer, retrieve
        self.name = name
        self.context_length = model.config.max_seq_len
        self.eos_id = getattr(tokenizer, "eos_id", None)
        self.chunks_retrieved = 0

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids, offsets = self.tokenizer.encode(text)
        return np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64).reshape(-1, 2)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def prefill(self, ids, reuse: LMState | None = None, *, copy: bool = True) -> LMState:
        del reuse, copy  # not croppable: see the module docstring
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ConfigError("prefill needs at least one token; the prompt is empty")
        cache = DecodeState(retrieval=self.retrieve is not None, kv=[None] * len(self.model.layers))
        state = LMState(np.empty(0, np.int64), {"decode": cache, "fetched": 0}, None, self)
        self.step(state, ids)
        return state

    @torch.no_grad()
    def step(self, state: LMState, next_ids) -> np.ndarray:
        new = np.asarray(next_ids, dtype=np.int64).reshape(-1)
        if len(state) + len(new) > self.context_length:
            raise ConfigError(f"{len(state) + len(new):,} tokens exceed the RETRO model's max_seq_len of "
                              f"{self.context_length:,}; shorten the prompt or max_new_tokens")
        tokens = np.concatenate([state.ids, new])
        m, cache = self.model.config.chunk_size, state.cache
        while self.retrieve is not None and cache["fetched"] < len(tokens) // m:
            u = cache["fetched"]
            x, mask = self.model._as_retrieved(self.retrieve(tokens[u * m:(u + 1) * m]))
            cache["decode"].add_pending(x[None, None], mask[None, None])
            cache["fetched"] += 1
            self.chunks_retrieved += 1
        device = self.model.embed_tokens.weight.device
        hidden = self.model._run(torch.from_numpy(new)[None].to(device), cache["decode"])
        state.ids = tokens
        state.logits = self.model.lm_head(hidden[0, -1]).float().cpu().numpy()
        return state.logits

    def identity(self) -> dict[str, Any]:
        return {"model": self.name, "kind": "retro", "context_length": self.context_length,
                "fusion": self.model.config.fusion}


def is_retro_run(path: str) -> bool:
    """Whether `path` is a `relm retro train|retrofit` run directory (it has checkpoint.json or state.json)."""
    from pathlib import Path

    p = Path(path)
    return p.is_dir() and ((p / "checkpoint.json").exists() or (p / "state.json").exists())


def load_retro_lm(run_dir: str, ds, retriever=None) -> RetroLM:
    """The RETRO model of a run with the datastore's tokenizer (checked) and, given a `Retriever` over that
    token-mode datastore, chunk retrieval for its CCA; retriever=None generates without retrieval."""
    from .neighbours import generation_retriever, resolve_tokenizer
    from .runs import load_run

    if ds.manifest.get("tokens") is None:
        raise ConfigError(f"{ds.root} holds word passages, not token chunks; a RETRO model retrieves chunks "
                          "from `relm build ... --chunk-tokens 64`")
    model, _ = load_run(run_dir)
    tok = resolve_tokenizer(ds)
    retrieve = None
    if retriever is not None:
        retrieve = generation_retriever(retriever, tok, model.config.n_neighbours,
                                        vectors=model.config.fusion == "relm")
    return RetroLM(model, tok, retrieve, name=str(run_dir))
