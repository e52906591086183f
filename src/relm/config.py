"""Dataclass configs, written into every artifact and rebuilt from it with `cls(**d)`.

CLI flags map one to one onto these fields (see `relm build --help`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .errors import ConfigError

OnError = Literal["raise", "skip"]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# how the encoder runs: torch (sentence-transformers as loaded), onnx (the same graph exported to ONNX
# Runtime, fp32) or onnx-int8 (that graph with dynamically quantized int8 weights), see relm.encoders.onnx;
# openvino (fp32), openvino-bf16 (bf16 arithmetic) or openvino-int8 (static int8), see relm.encoders.openvino
ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
DEFAULT_ENCODER_BACKEND = "torch"
DEFAULT_TOKENIZER = "smollm2"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              optional: bool = False) -> int | None:
    """`value` as an int in [minimum, maximum], or a ConfigError naming `name` and the allowed range.

    Used by configs and APIs alike, so the Python API rejects what the CLI rejects. Booleans and
    non-integral numbers are refused; `optional` lets None through (meaning "unset").
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer{_range(minimum, maximum)}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be{_range(minimum, maximum) or ' an integer'}, got {value}")
    return value


def check_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                optional: bool = False) -> float | None:
    """`value` as a finite float in [minimum, maximum], or a ConfigError naming `name` and the range.

    NaN and ±inf are always refused: NaN compares false with everything, so it would silently empty
    (or silently disable) whatever it bounds.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number{_range(minimum, maximum)}, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number{_range(minimum, maximum)}, got {value}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be{_range(minimum, maximum)}, got {value:g}")
    return value


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f" >= {minimum:g}"
    if maximum is not None:
        return f" <= {maximum:g}"
    return ""


def _check_str(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class ReaderConfig:
    """How corpus files are read into documents."""

    text_field: str = "text"
    id_field: str = "id"
    title_field: str = "title"
    domain_field: str = "domain"
    timestamp_field: str = "timestamp"
    # plain-text files: one document per file ("file") or per blank-line block ("blank-line")
    text_split: Literal["file", "blank-line"] = "file"
    # "auto" picks the reader from the file name; otherwise one of jsonl, text, parquet
    format: Literal["auto", "jsonl", "text", "parquet"] = "auto"
    # a label for every input (one value), or one per input (same order)
    domains: tuple[str, ...] = ()
    on_error: OnError = "raise"

    def __post_init__(self):
        if self.text_split not in ("file", "blank-line"):
            raise ConfigError(f"--text-split must be 'file' or 'blank-line', got {self.text_split!r}")
        if self.format not in ("auto", "jsonl", "text", "parquet"):
            raise ConfigError(f"--format must be auto, jsonl, text or parquet, got {self.format!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"--on-error must be 'raise' or 'skip', got {self.on_error!r}")
        for name in ("text_field", "id_field", "title_field", "domain_field", "timestamp_field"):
            _check_str(getattr(self, name), "--" + name.replace("_", "-"))
        if isinstance(self.domains, str):
            raise ConfigError(f"domains must be a list of labels, got the string {self.domains!r}")
        object.__setattr__(self, "domains", tuple(self.domains))
        for d in self.domains:
            _check_str(d, "--domain")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReaderConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ChunkConfig:
    """Passage mode (MassiveDS: <= max_words whitespace words) or token mode (RETRO: chunk_tokens tokens).

    Passage mode also bounds each passage by the encoder's tokens (`max_tokens`): "auto" packs whole
    words into passages whose encoder input (title included when `prepend_title`) fits the encoder's
    max_seq_length, special tokens aside; an int N allows N encoder tokens (special tokens aside); None
    cuts by words alone (the old behaviour: on news ~80% of 256-word passages were cut by the encoder).
    `prepend_title`: each passage is embedded and BM25-indexed as `title + " " + text` (the BEIR /
    sentence-transformers convention); the stored passage text stays the document's own.
    """

    mode: Literal["words", "tokens"] = "words"
    max_words: int = 256
    # a tail shorter than this is merged into the previous passage of the same document
    min_words: int = 32
    chunk_tokens: int = 64
    tokenizer: str = DEFAULT_TOKENIZER
    max_tokens: int | Literal["auto"] | None = "auto"
    prepend_title: bool = False

    def __post_init__(self):
        if self.mode not in ("words", "tokens"):
            raise ConfigError(f"chunk mode must be 'words' or 'tokens', got {self.mode!r}")
        check_int(self.max_words, "--chunk-words", minimum=1)
        check_int(self.min_words, "--min-words")
        if not 0 <= self.min_words <= self.max_words:
            raise ConfigError(f"--min-words must be in [0, --chunk-words={self.max_words}], got {self.min_words}")
        check_int(self.chunk_tokens, "--chunk-tokens", minimum=1)
        _check_str(self.tokenizer, "--tokenizer")
        if self.max_tokens != "auto":
            check_int(self.max_tokens, "--max-tokens", minimum=1, optional=True)
        if not isinstance(self.prepend_title, bool):
            raise ConfigError(f"prepend_title must be true or false, got {self.prepend_title!r}")
        if self.prepend_title and self.mode == "tokens":
            raise ConfigError("titles are prepended to word passages only; token mode (--chunk-tokens) keeps "
                              "chunks as the LM reads them: drop the title prepending (--no-prepend-title)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkConfig:
        """A saved config. One saved before `max_tokens`/`prepend_title` existed cut by words alone and
        embedded the text alone, so those fields default to the old behaviour (None, False) here."""
        return _from_dict(cls, {"max_tokens": None, "prepend_title": False, **d})

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this mode (what the manifest records)."""
        if self.mode == "words":
            return {"mode": "words", "max_words": self.max_words, "min_words": self.min_words,
                    "max_tokens": self.max_tokens, "prepend_title": self.prepend_title}
        return {"mode": "tokens", "chunk_tokens": self.chunk_tokens, "tokenizer": self.tokenizer}


def parse_max_tokens(text: str) -> int | str | None:
    """--max-tokens: 'auto', 'none' or a positive integer."""
    t = str(text).strip().lower()
    if t in ("auto", "none"):
        return None if t == "none" else "auto"
    try:
        n = int(t)
    except ValueError:
        raise ConfigError(f"--max-tokens must be auto, none or a positive integer, got {text!r}") from None
    return check_int(n, "--max-tokens", minimum=1)


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder embeds passages and queries."""

    model: str = DEFAULT_ENCODER
    normalize: bool = True
    max_seq_length: int | None = None  # None: the model's own limit
    device: str | None = None  # None: cuda if available, else cpu
    # fp16 weights on GPU; ignored on CPU where fp16 matmuls are slow
    half_precision: bool = True
    backend: str = DEFAULT_ENCODER_BACKEND

    def __post_init__(self):
        _check_str(self.model, "--encoder")
        check_int(self.max_seq_length, "--max-seq-length", minimum=1, optional=True)
        if self.device is not None:
            _check_str(self.device, "--device")
        check_backend(self.backend)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        # a config saved before backends existed was run by torch, whatever the default is now
        return _from_dict(cls, {"backend": "torch", **d})


def check_backend(backend: Any, name: str = "--encoder-backend") -> str:
    if backend not in ENCODER_BACKENDS:
        raise ConfigError(f"{name} must be one of {', '.join(ENCODER_BACKENDS)}, got {backend!r}")
    return backend


@dataclass(frozen=True)
class BuildConfig:
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 64
    shard_size: int = 65536  # passages per embedding shard (the unit of resumption)

    def __post_init__(self):
        for name, value, cls in (("reader", self.reader, ReaderConfig), ("chunk", self.chunk, ChunkConfig),
                                 ("encoder", self.encoder, EncoderConfig)):
            if not isinstance(value, cls):
                raise ConfigError(f"BuildConfig.{name} must be a {cls.__name__}, got {type(value).__name__}")
        check_int(self.batch_size, "--batch-size", minimum=1)
        check_int(self.shard_size, "--shard-size", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reader"]["domains"] = list(self.reader.domains)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildConfig:
        d = dict(d)
        return cls(
            reader=ReaderConfig.from_dict(d.pop("reader", {})),
            chunk=ChunkConfig.from_dict(d.pop("chunk", {})),
            encoder=EncoderConfig.from_dict(d.pop("encoder", {})),
            **d,
        )
