"""Whether an encoder may embed queries for a datastore another backend of the same model built.

A build records, in the manifest's encoder identity, `probe`: the embeddings of `PROBE_TEXTS` by the
building encoder (float16, base64). A query encoder of the same model (same fingerprint) but another
backend embeds the same texts; it is accepted when the mean cosine to the recorded probe is at least
`BACKEND_TOLERANCE` (the quality bar of issue 17: mean cosine >= 0.99 to torch fp32), else refused, or
accepted with a warning when the caller allows a mismatch.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKEND_TOLERANCE = 0.99
# queries and passages of the kinds relm embeds: a question, a title, prose, code, a long passage
PROBE_TEXTS = (
    "What is the capital of France?",
    "Retrieval-augmented language models",
    "The mitochondrion is the powerhouse of the cell; it produces ATP through oxidative phosphorylation.",
    "def search(queries, k=10):\n    return index.search(encode(queries), k)",
    "In 1905 Albert Einstein published four papers that changed physics: on the photoelectric effect, "
    "Brownian motion, special relativity and the equivalence of mass and energy. " * 3,
)


def recorded_backend(identity: dict[str, Any]) -> str:
    """The backend a manifest's encoder identity names (before backends existed: torch)."""
    b = identity.get("backend", "torch")
    return "torch" if b == "sentence-transformers" else b


def encode_probe(encoder, normalize: bool = True) -> str:
    vectors = encoder.encode(list(PROBE_TEXTS), batch_size=len(PROBE_TEXTS), normalize=normalize)
    return base64.b64encode(np.asarray(vectors, dtype="<f2").tobytes()).decode("ascii")


def decode_probe(text: str, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32).reshape(-1, dim)


def probe_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def check_backend_compatible(recorded: dict[str, Any], encoder, *, where: str, allow_mismatch: bool = False,
                             tolerance: float = BACKEND_TOLERANCE) -> float | None:
    """Refuse (ConfigError) `encoder` for a datastore whose encoder identity is `recorded` when it runs
    another backend whose probe embeddings differ beyond `tolerance`; returns the mean probe cosine (None
    for the same backend). `allow_mismatch` turns the refusal into a warning."""
    mine, theirs = recorded_backend(encoder.identity()), recorded_backend(recorded)
    if mine == theirs:
        return None
    probe = recorded.get("probe")
    if probe is None:
        reason = f"it records no probe embeddings to compare the {mine} backend with"
        mean = None
    else:
        ref = decode_probe(probe, int(recorded["dim"]))
        got = np.asarray(encoder.encode(list(PROBE_TEXTS), batch_size=len(PROBE_TEXTS),
                                        normalize=bool(recorded.get("normalize", True))), dtype=np.float32)
        cos = probe_cosines(got, ref)
        mean = float(cos.mean())
        if mean >= tolerance:
            log.info("%s was built with the %s encoder backend; queries use %s (probe cosine mean %.4f, "
                     "min %.4f)", where, theirs, mine, mean, float(cos.min()))
            return mean
        reason = f"their embeddings differ (probe cosine mean {mean:.4f} < {tolerance})"
    message = (f"{where} was built with encoder backend {theirs}, queries would use {mine}: {reason}")
    if not allow_mismatch:
        raise ConfigError(f"{message}; use --encoder-backend {theirs}, or pass --allow-backend-mismatch")
    log.warning("%s; allowed by --allow-backend-mismatch", message)
    return mean
