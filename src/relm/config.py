"""Dataclass configs, written into every artifact and rebuilt from it with `cls(**d)`.

CLI flags map one to one onto these fields (see `relm build --help`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .errors import ConfigError

OnError = Literal["raise", "skip"]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_TOKENIZER = "smollm2"


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
        object.__setattr__(self, "domains", tuple(self.domains))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReaderConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ChunkConfig:
    """Passage mode (MassiveDS: <= max_words whitespace words) or token mode (RETRO: chunk_tokens tokens)."""

    mode: Literal["words", "tokens"] = "words"
    max_words: int = 256
    # a tail shorter than this is merged into the previous passage of the same document
    min_words: int = 32
    chunk_tokens: int = 64
    tokenizer: str = DEFAULT_TOKENIZER

    def __post_init__(self):
        if self.mode not in ("words", "tokens"):
            raise ConfigError(f"chunk mode must be 'words' or 'tokens', got {self.mode!r}")
        if self.max_words < 1:
            raise ConfigError(f"--chunk-words must be >= 1, got {self.max_words}")
        if not 0 <= self.min_words <= self.max_words:
            raise ConfigError(f"--min-words must be in [0, --chunk-words={self.max_words}], got {self.min_words}")
        if self.chunk_tokens < 1:
            raise ConfigError(f"--chunk-tokens must be >= 1, got {self.chunk_tokens}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkConfig:
        return _from_dict(cls, d)

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this mode (what the manifest records)."""
        if self.mode == "words":
            return {"mode": "words", "max_words": self.max_words, "min_words": self.min_words}
        return {"mode": "tokens", "chunk_tokens": self.chunk_tokens, "tokenizer": self.tokenizer}


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder embeds passages and queries."""

    model: str = DEFAULT_ENCODER
    normalize: bool = True
    max_seq_length: int | None = None  # None: the model's own limit
    device: str | None = None  # None: cuda if available, else cpu
    # fp16 weights on GPU; ignored on CPU where fp16 matmuls are slow
    half_precision: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class BuildConfig:
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 64
    shard_size: int = 65536  # passages per embedding shard (the unit of resumption)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be >= 1, got {self.shard_size}")

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
