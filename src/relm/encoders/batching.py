"""Batch plans: which passages an encoder sees together, decided by relm so that a build's vectors do not
depend on how the work was split.

A transformer's vector for a text depends, by a float16 step now and then, on what it was batched with:
a batch is padded to its longest member, and the padded matrix products round differently. A build
that encodes a shard in one `encode` call lets the encoder decide the batches; a build split across
processes would decide others. So relm plans the batches itself, once per shard (`batch_plan`: longest
first by characters, as sentence-transformers sorts, but stable, so ties do not depend on the sort
algorithm) and encodes each planned batch alone (`encode_batches`). Any process that encodes a batch of
the plan gets the rows the one-process build gets: the batch, not the process, is the unit of identity.
Measured here: the same MiniLM batch gives the same float16 rows with 1 and 2 torch threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def batch_plan(texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Row indexes of `texts`, batch by batch: sorted by length (characters, longest first, ties in input
    order), cut every `batch_size`. Length-sorted batches waste little padding; the order restores below."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def encode_batches(encoder, batches: Sequence[Sequence[str]], *, normalize: bool) -> np.ndarray:
    """The float16 vectors of each batch's texts, encoded one batch per `encode` call, stacked in batch
    order (rows of the first batch first)."""
    rows = [np.asarray(encoder.encode(list(b), batch_size=max(len(b), 1), normalize=normalize), dtype=np.float32)
            for b in batches if len(b)]
    if not rows:
        return np.zeros((0, int(encoder.dim)), dtype=np.float16)
    return np.concatenate(rows).astype(np.float16)


def encode_planned(encoder, texts: Sequence[str], *, batch_size: int, normalize: bool,
                   show_progress: bool = False) -> np.ndarray:
    """float16 (len(texts), dim) vectors in input order, encoded batch by batch as `batch_plan` cuts them:
    what the one-process build stores for a shard, and what the parts of a split build add up to."""
    from ..progress import progress

    plan = batch_plan(texts, batch_size)
    out = np.zeros((len(texts), int(encoder.dim)), dtype=np.float16)
    bar = progress(total=len(texts), desc="encode", unit="passage", enabled=show_progress)
    try:
        for idx in plan:
            out[idx] = encode_batches(encoder, [[texts[i] for i in idx]], normalize=normalize)
            bar.update(len(idx))
    finally:
        bar.close()
    return out
