"""Evaluation text as token windows: documents packed into one stream per (eval set, domain).

MassiveDS's protocol: a window of W tokens whose first W − s tokens are context (and the retrieval
query) and whose last s = stride tokens are scored; consecutive windows advance by s, so every
token of the stream after the first W − s is scored exactly once, always with W − s tokens before
it (the last window scores what is left). Documents are joined by the LM's end-of-text token; that
separator is context only, never scored, and has no bytes. Each token carries the UTF-8 bytes of
the text it covers, so bits per byte divide by the true byte count of the scored text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import check_int
from ..errors import ConfigError
from .metrics import token_byte_lengths


@dataclass(frozen=True)
class WindowConfig:
    """window W tokens, stride s (default W/2) scored per window; max_windows caps each stream's count
    (None: all), taken evenly spaced over the stream so a capped run still covers every document."""

    window: int = 1024
    stride: int | None = None
    max_windows: int | None = None

    def __post_init__(self):
        check_int(self.window, "window (--window, tokens)", minimum=2)
        check_int(self.stride, "stride (--stride)", minimum=1, maximum=self.window - 1, optional=True)
        check_int(self.max_windows, "max_windows (--max-windows)", minimum=1, optional=True)

    @property
    def scored(self) -> int:
        return self.stride or self.window // 2

    @property
    def context(self) -> int:
        return self.window - self.scored


@dataclass
class Stream:
    """One eval set's documents of one domain as a token stream."""

    name: str  # eval set (file stem)
    domain: str
    ids: np.ndarray  # (T,) int64
    nbytes: np.ndarray  # (T,) int64, 0 for separators
    scorable: np.ndarray  # (T,) bool, False for separators
    doc_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of a stream; the last n_target are scored. `short`: the whole stream is
    shorter than one window, so this window is shorter than the config says (see stream_windows)."""

    index: int
    stream: Stream
    start: int
    end: int
    n_target: int
    short: bool = False

    @property
    def n_context(self) -> int:
        return self.end - self.start - self.n_target

    @property
    def ids(self) -> np.ndarray:
        return self.stream.ids[self.start : self.end]

    @property
    def context_ids(self) -> np.ndarray:
        return self.stream.ids[self.start : self.end - self.n_target]

    @property
    def target_ids(self) -> np.ndarray:
        return self.stream.ids[self.end - self.n_target : self.end]

    @property
    def target_mask(self) -> np.ndarray:
        """Which scored tokens count (False for document separators)."""
        return self.stream.scorable[self.end - self.n_target : self.end]

    @property
    def n_bytes(self) -> int:
        return int(self.stream.nbytes[self.end - self.n_target : self.end].sum())

    @property
    def n_tokens(self) -> int:
        return int(self.target_mask.sum())


def pack_streams(docs: Iterable, lm, *, set_name: str) -> list[Stream]:
    """Documents (with .text, .domain, .id) -> one Stream per domain, in first-seen order."""
    sep = lm.eos_id
    parts: dict[str, list] = {}
    for doc in docs:
        ids, offsets = lm.encode(doc.text)
        if len(ids) == 0:
            continue
        nbytes = token_byte_lengths(doc.text, offsets)
        parts.setdefault(doc.domain or "default", []).append((doc.id, ids, nbytes))
    streams = []
    for domain, items in parts.items():
        ids, nbytes, scorable, names = [], [], [], []
        for j, (doc_id, d_ids, d_bytes) in enumerate(items):
            if j and sep is not None:
                ids.append(np.array([sep], np.int64))
                nbytes.append(np.zeros(1, np.int64))
                scorable.append(np.zeros(1, bool))
            ids.append(d_ids)
            nbytes.append(d_bytes.astype(np.int64))
            scorable.append(np.ones(len(d_ids), bool))
            names.append(doc_id)
        streams.append(Stream(set_name, domain, np.concatenate(ids), np.concatenate(nbytes),
                              np.concatenate(scorable), names))
    return streams


def stream_windows(stream: Stream, config: WindowConfig, first_index: int = 0) -> list[Window]:
    """The windows of one stream: scored spans [a, a + s) for a = W − s, W, W + s, ...; each window
    holds the W − s tokens before its span (the last one scores what is left).

    A stream shorter than one window (T < W tokens) cannot have a W − s token context and s scored
    tokens. It still gets one window, so short eval sets are not dropped, split like the config:
    the first ⌊T·(W − s)/W⌋ tokens (at least 1) are context and the rest is scored; the window is
    marked `short`, and the report counts such windows. (Giving it the full W − s context instead
    would score T − (W − s) tokens: a single token for T = W − s + 1.)"""
    T = len(stream.ids)
    c, s = config.context, config.scored
    if T < 2:
        return []
    if T < config.window:
        c = max(1, T * c // config.window)
        w = Window(first_index, stream, 0, T, T - c, short=True)
        return [w] if w.n_tokens else []
    spans = [(a, min(a + s, T)) for a in range(c, T, s)]
    if config.max_windows is not None and len(spans) > config.max_windows:
        pick = np.linspace(0, len(spans) - 1, config.max_windows).round().astype(int)
        spans = [spans[i] for i in sorted(set(pick.tolist()))]
    out = []
    for a, b in spans:
        w = Window(first_index + len(out), stream, a - c, b, b - a)
        if w.n_tokens:
            out.append(w)
    return out


def make_windows(streams: list[Stream], config: WindowConfig) -> list[Window]:
    windows: list[Window] = []
    for st in streams:
        windows.extend(stream_windows(st, config, len(windows)))
    return windows


def read_eval_sets(paths: list[str], reader_config=None) -> list[tuple[str, list]]:
    """[(set name, documents)] for eval files or directories (every format `relm build` reads); a
    missing or empty file is an error naming it (the reader's own errors name the line)."""
    from ..config import ReaderConfig
    from ..corpus.readers import read_documents, resolve_inputs

    config = reader_config or ReaderConfig()
    out = []
    for inp in resolve_inputs(list(paths), config):
        docs = [d for d in read_documents([inp], config) if d.text.strip()]
        if not docs:
            raise ConfigError(f"{inp.display}: no documents to evaluate on")
        out.append((set_name(inp.path), docs))
    return out


def set_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".zst", ".jsonl", ".json", ".parquet", ".txt"):
        name = name.removesuffix(suffix)
    return name
