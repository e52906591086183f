"""RETRO runs on disk: building the model a run trains, loading a finished run, and the streams it reads.

A run directory holds `checkpoint.json`, which names the live checkpoint `checkpoints/step-NNNNNNN/` and
the size and sha256 of its files: `state.json` (the model and training configs, the step, the history and,
for a retrofit, the base LM spec), `model.safetensors` (the trainable parameters) and
`optimizer.safetensors` (see relm.retro.train.write_checkpoint: a checkpoint is swapped in as one unit).
`OUT/state.json` is a copy of the live state for people and scripts. Runs in the earlier flat layout
(those three files directly in the run directory) still load. A retrofit's frozen base weights are not
copied: loading reads them from the base LM again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatastoreError
from .data import ChunkStream
from .model import RetroConfig, RetroModel
from .neighbours import NeighbourDB, datastore_stream, resolve_tokenizer, text_stream

RETRIEVAL_FIELDS = ("chunk_size", "n_neighbours", "neighbour_len", "cca_layers", "enc_layers", "enc_d_model",
                    "enc_heads", "enc_d_ff", "fusion", "passage_dim", "dropout", "cca_positions")


def retrofit_model(base: str, **retrieval) -> tuple[RetroModel, Any]:
    """(RetroModel copying the base LM's decoder with CCA layers inserted and the base frozen, the LM)."""
    from ..lm import load_lm

    lm = load_lm(base)
    model = RetroModel.from_llama(lm.model, **retrieval)
    model.freeze_base()
    return model, lm


def check_tokenizer(ds, tokenizer_fingerprint: str, what: str) -> None:
    want = ds.manifest["tokens"]["tokenizer"]["fingerprint"]
    if want != tokenizer_fingerprint:
        raise ConfigError(f"{what}'s tokenizer differs from the datastore's ({tokenizer_fingerprint} vs {want}); "
                          "build the datastore with the model's tokenizer (--chunk-tokens 64 --tokenizer ...)")


def lm_tokenizer_fingerprint(lm) -> str:
    import hashlib

    return hashlib.sha256(lm.tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_run(run: str | Path) -> tuple[RetroModel, dict[str, Any]]:
    """The trained model of a run directory and its state (read from the checkpoint that checkpoint.json
    names; a missing, truncated or garbled file raises ConfigError naming it). Never writes to `run`."""
    from .train import CHECKPOINT, read_checkpoint

    run = Path(run)
    ck = read_checkpoint(run)
    if ck is None:
        what = "no such directory" if not run.is_dir() else f"no {CHECKPOINT}"
        raise ConfigError(f"{run}: not a RETRO run ({what}); train one with `relm retro train`")
    state = ck.state
    try:
        config = RetroConfig.from_dict(state["model"])
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{ck.dir / 'state.json'}: its model config cannot be read ({e}); the run is damaged: "
                          "train it again") from None
    if state.get("base"):
        model, _ = retrofit_model(state["base"], **{k: config.to_dict()[k] for k in RETRIEVAL_FIELDS})
        if model.config.to_dict() != config.to_dict():
            raise ConfigError(f"{run}: the base LM {state['base']!r} no longer matches the run's model config")
    else:
        model = RetroModel(config)
    weights = ck.tensors("model.safetensors")
    params = dict(model.named_parameters())
    unknown = set(weights) - set(params)
    if unknown:
        raise ConfigError(f"{run}: checkpoint holds parameters this config lacks ({sorted(unknown)[:3]})")
    import torch

    with torch.no_grad():
        for name, w in weights.items():
            if w.shape != params[name].shape:
                raise ConfigError(f"{ck.dir / 'model.safetensors'}: {name} has shape {tuple(w.shape)}, the "
                                  f"model config says {tuple(params[name].shape)}; the run is damaged")
            params[name].copy_(w.to(params[name].dtype))
    model.eval()
    return model, state


def train_stream(ds, neighbours: str | Path, *, vectors: bool = False) -> ChunkStream:
    """The datastore's own chunks with their neighbour database (built by `relm retro neighbours DS`)."""
    db = NeighbourDB.open(neighbours, ds)
    chunks, _ = datastore_stream(ds)
    if db.manifest["stream"].get("description") not in ("datastore", None, ""):
        raise DatastoreError(f"{neighbours}: built for the stream {db.manifest['stream']['description']!r}, "
                             "not the datastore's own chunks; build with `relm retro neighbours DS --out DIR`")
    return ChunkStream(chunks, db, vectors=np.asarray(ds.embeddings(np.arange(len(ds)))) if vectors else None)


def eval_stream(ds, neighbours: str | Path, docs, *, vectors: bool = False) -> tuple[ChunkStream, np.ndarray]:
    """Eval documents as chunks with their neighbour database; also the chunks' UTF-8 byte counts."""
    from .evaluate import chunk_byte_counts

    db = NeighbourDB.open(neighbours, ds)
    tok = resolve_tokenizer(ds)
    chunks, _, _ = text_stream(docs, tok, ds)
    if len(chunks) != len(db):
        raise DatastoreError(f"{neighbours}: holds {len(db):,} chunks, these eval files make {len(chunks):,}; "
                             "build the neighbours for the same --eval files")
    stream = ChunkStream(chunks, db, vectors=np.asarray(ds.embeddings(np.arange(len(ds)))) if vectors else None)
    return stream, chunk_byte_counts(chunks, tok)
