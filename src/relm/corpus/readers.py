"""Corpus readers: JSONL (plain, .gz, .zst), plain text and Parquet, from files, directories and globs.

`resolve_inputs` turns what the user typed into a sorted list of `InputFile`s
(failing loudly on a missing path or a glob that matches nothing), and
`read_documents` streams `Document`s out of them.

Bad input never disappears silently. With `on_error="raise"` the first problem
stops the read with an `InputError` naming the file and line; with
`on_error="skip"` the bad line (or file) is skipped and counted by reason in
`ReadStats`, and the first few locations are kept for the build stats.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import gzip
import io
import json
import logging
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..config import ReaderConfig
from ..errors import InputError
from .documents import Document, parse_timestamp

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSIONS = (".gz", ".zst")
MAX_EXAMPLES = 20  # skipped locations kept in the build stats


@dataclass(frozen=True)
class InputFile:
    path: Path
    display: str  # the path as shown in messages and generated ids
    format: str  # jsonl | text | parquet
    compression: str | None  # gz | zst | None
    domain: str  # the label for documents without a domain field


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)
    bytes_done: int = 0  # raw (compressed) bytes of input consumed so far
    non_finite_nulled: int = 0  # Parquet NaN/inf values read as null (JSONL NaN is an error: not JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "skipped_examples": list(self.skipped_examples),
            "non_finite_nulled": self.non_finite_nulled,
        }


def detect_format(path: Path, forced: str = "auto") -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None when the name is not a known corpus file."""
    name = path.name.lower()
    compression = None
    for c in COMPRESSIONS:
        if name.endswith(c):
            compression = c[1:]
            name = name[: -len(c)]
            break
    if forced != "auto":
        return forced, compression
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    if name.endswith(TEXT_SUFFIXES):
        return "text", compression
    if name.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    return None


def _label_from_name(path: Path) -> str:
    name = path.name
    for suffix in (*COMPRESSIONS, *JSONL_SUFFIXES, *TEXT_SUFFIXES, *PARQUET_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def resolve_inputs(paths: list[str | os.PathLike], config: ReaderConfig = ReaderConfig()) -> list[InputFile]:
    """Expand files, directories (recursively) and globs into a deterministic list of input files."""
    if not paths:
        raise InputError("<inputs>", None, "missing", "no input given; pass files, directories or globs")
    if config.domains and len(config.domains) not in (1, len(paths)):
        raise InputError(
            "<inputs>",
            None,
            "bad_domain",
            f"--domain given {len(config.domains)} times for {len(paths)} inputs; "
            "give it once (for all inputs) or once per input",
        )
    out: list[InputFile] = []
    for i, raw in enumerate(paths):
        label = None
        if config.domains:
            label = config.domains[0] if len(config.domains) == 1 else config.domains[i]
        raw = str(raw)
        if glob.has_magic(raw):
            if "**" in Path(raw).parts:
                candidates = _recursive_glob(raw, config)
            else:  # a glob may match directories: read them whole
                candidates = _walk([Path(m) for m in sorted(glob.glob(raw))], config)
            if not candidates:
                raise InputError(raw, None, "missing", "glob matches no file")
            explicit = False
        else:
            p = Path(raw)
            if not p.exists():
                hint = f" (a broken symbolic link to {os.readlink(p)})" if p.is_symlink() else ""
                raise InputError(raw, None, "missing", f"no such file or directory{hint}")
            if p.is_dir():
                candidates = walk_directory(p, config)
                explicit = False
            else:
                candidates = [p]
                explicit = True
        ignored = 0
        for c in candidates:
            fmt = detect_format(c, config.format)
            if fmt is None:
                if explicit:
                    raise InputError(
                        str(c),
                        None,
                        "unknown_format",
                        "unknown file type; name it .jsonl[.gz|.zst], .txt[.gz|.zst] or .parquet, or pass --format",
                    )
                ignored += 1
                continue
            out.append(InputFile(c, str(c), fmt[0], fmt[1], label or _label_from_name(c)))
        if ignored:
            log.warning("%s: ignored %d file(s) with unknown extensions", raw, ignored)
    if not out:
        raise InputError(", ".join(map(str, paths)), None, "missing", "no corpus files found")
    return out


def walk_directory(root: Path, config: ReaderConfig = ReaderConfig()) -> list[Path]:
    """Every file under `root`, recursively, sorted; names starting with '.' (.git, .cache) are skipped.

    Symbolic links are followed, to files and to directories (like `find -L` or `rsync -L`), and the
    paths keep the link's name. Each real directory and file is read once, by resolved path, and a
    real path wins over a path through a link: a link back to an ancestor (a cycle) or a second path
    to something already listed is skipped with a warning naming both paths, and so is a broken
    link. A directory that cannot be listed is an InputError (with `on_error="skip"`: a warning).
    """
    return _walk([root], config, top=False)


def _walk(paths: list[Path], config: ReaderConfig, *, top: bool = True) -> list[Path]:
    """The files of `paths` (files and directories, as if listed in one directory when `top`) and of
    every directory below them; see `walk_directory`."""
    seen_dirs: dict[str, Path] = {}
    files: dict[str, tuple[bool, Path]] = {}  # real path -> (reached through a link, path)
    pending: list[tuple[Path, bool]] = []  # directories to list, depth first
    links: list[tuple[Path, Path]] = []  # (symlinked directory, its parent): walked after every real one

    def consider(path: Path, parent: Path, via_link: bool, is_dir: bool, is_file: bool, is_link: bool,
                 subdirs: list) -> None:
        if is_dir and is_link:
            links.append((path, parent))
        elif is_dir:
            real = os.path.realpath(path)
            if real in seen_dirs:  # a bind mount, or a glob naming one directory twice: still read once
                log.warning("%s: skipped, it is the same directory as %s (already read)", path, seen_dirs[real])
                return
            seen_dirs[real] = path
            subdirs.append((path, via_link))
        elif is_file:
            real = os.path.realpath(path)
            mine = (via_link or is_link, path)
            other = files.get(real)
            if other is None:
                files[real] = mine
            elif other[1] != path:  # one file under two names: keep the real path over one through a link
                keep, drop = (mine, other) if mine[0] < other[0] else (other, mine)
                files[real] = keep
                log.warning("%s: skipped, it is the same file as %s (read once)", drop[1], keep[1])
        elif is_link:
            log.warning("%s: skipped a broken symbolic link (it points to %s)", path, os.readlink(path))

    if top:
        subdirs: list[tuple[Path, bool]] = []
        for path in paths:
            consider(path, path.parent, False, path.is_dir(), path.is_file(), path.is_symlink(), subdirs)
        pending.extend(reversed(subdirs))
    else:
        seen_dirs[os.path.realpath(paths[0])] = paths[0]
        pending.append((paths[0], False))
    while pending or links:
        if not pending:
            link, parent = links.pop(0)
            real = os.path.realpath(link)
            if real in seen_dirs:
                why = "a symbolic link loop" if _is_ancestor(real, parent) else "already read"
                log.warning("%s: skipped, it is the same directory as %s (%s)", link, seen_dirs[real], why)
                continue
            seen_dirs[real] = link
            pending.append((link, True))
            continue
        d, via_link = pending.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            error = InputError(str(d), None, "unreadable", f"cannot list directory: {e.strerror or e}")
            if config.on_error == "raise":
                raise error from e
            log.warning("skipped %s", error)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir, is_file, is_link = e.is_dir(), e.is_file(), e.is_symlink()  # dir/file follow links
            except OSError:
                is_dir, is_file, is_link = False, False, True
            consider(Path(e.path), d, via_link, is_dir, is_file, is_link, subdirs)
        pending.extend(reversed(subdirs))
    return sorted(path for _, path in files.values())


def _recursive_glob(pattern: str, config: ReaderConfig) -> list[Path]:
    """Files matching a pattern with a `**` segment (zero or more directories), found with
    `walk_directory` from the pattern's literal prefix, so symbolic link loops cannot make it run
    forever (glob.glob(recursive=True) follows them without a guard). As with a glob that matches a
    directory, a matching directory is read whole."""
    parts = Path(pattern).parts
    cut = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base, pats = Path(*parts[:cut]) if cut else Path("."), parts[cut:]
    if not base.is_dir():
        return []
    return [f for f in walk_directory(base, config)
            if any(_match(f.relative_to(base).parts[:n], pats) for n in range(1, len(f.relative_to(base).parts) + 1))]


def _match(parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    """glob semantics on path segments: `**` is any number of segments, other segments are fnmatch."""
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:])


def _is_ancestor(real: str, directory: Path) -> bool:
    here = os.path.realpath(directory)
    return here == real or here.startswith(real.rstrip(os.sep) + os.sep)


def read_documents(
    inputs: list[InputFile], config: ReaderConfig = ReaderConfig(), stats: ReadStats | None = None
) -> Iterator[Document]:
    """Stream documents from the inputs in order, applying the error policy."""
    stats = stats if stats is not None else ReadStats()
    done_before = 0
    for inp in inputs:
        stats.files += 1
        n_before, skipped_before = stats.documents, sum(stats.skipped.values())
        try:
            size = inp.path.stat().st_size
            if size == 0:
                raise InputError(inp.display, None, "empty_file", "file is empty")
            with open(inp.path, "rb") as raw:
                reader = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet}[inp.format]
                for doc in reader(inp, raw, config, stats):
                    stats.documents += 1
                    stats.bytes_done = done_before + raw.tell()
                    yield doc
            if stats.documents == n_before and sum(stats.skipped.values()) == skipped_before:
                raise InputError(inp.display, None, "empty_file", "file holds no documents")
        except InputError as e:
            _handle(e, config, stats)
        except OSError as e:
            _handle(InputError(inp.display, None, "unreadable", f"cannot read: {e}"), config, stats)
        done_before += inp.path.stat().st_size if inp.path.exists() else 0
        stats.bytes_done = done_before


def _handle(error: InputError, config: ReaderConfig, stats: ReadStats) -> None:
    if config.on_error == "raise":
        raise error
    stats.skipped[error.reason] += 1
    if len(stats.skipped_examples) < MAX_EXAMPLES:
        stats.skipped_examples.append(str(error))
    log.warning("skipped %s", error)


def _open_stream(inp: InputFile, raw: BinaryIO) -> BinaryIO:
    if inp.compression == "gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 20)
    if inp.compression == "zst":
        return io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 20)
    return raw


class _ZstdReader(io.RawIOBase):
    """A (possibly multi-frame) zst stream that raises EOFError when it ends mid-frame.

    zstandard's own `stream_reader` just stops at a truncated frame, which would
    drop the rest of the file silently; gzip raises in that case, and so do we.
    """

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # decompressor of the current frame; None between frames
        self._pending = b""  # compressed bytes read but not yet decompressed
        self._out = memoryview(b"")  # decompressed bytes not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._out:
            if not self._pending:
                self._pending = self._raw.read(1 << 16)  # small reads: text expands ~5-100x
                if not self._pending:
                    if self._frame is not None:
                        raise EOFError("stream ends in the middle of a frame (truncated file?)")
                    return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            data, self._pending = self._pending, b""
            self._out = memoryview(self._frame.decompress(data))
            if self._frame.eof:  # the frame is complete; what follows is the next frame
                self._pending, self._frame = self._frame.unused_data, None
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _lines(inp: InputFile, raw: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a corrupt compressed stream becomes an InputError at its line."""
    stream = _open_stream(inp, raw)
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):  # noqa: B007 (lineno used after the loop)
            yield lineno, line
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(inp.display, lineno + 1, "corrupt_file", f"corrupt {inp.compression} stream: {e}") from e
    except Exception as e:  # zstandard.ZstdError does not derive from OSError
        if type(e).__name__ == "ZstdError":
            raise InputError(inp.display, lineno + 1, "corrupt_file", f"corrupt zst stream: {e}") from e
        raise


def _decode(inp: InputFile, lineno: int, data: bytes) -> str:
    if lineno == 1 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]  # a byte-order mark (Windows editors) is not part of the text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            inp.display,
            lineno,
            "non_utf8",
            f"invalid UTF-8 at byte {e.start} of the line ({data[max(0, e.start - 10) : e.start + 10]!r}); "
            "re-encode the file as UTF-8 or pass --on-error skip",
        ) from e


def _read_jsonl(inp: InputFile, raw: BinaryIO, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    constants: list[str] = []  # the NaN / Infinity / -Infinity of the current line

    def constant(name: str) -> object:
        constants.append(name)
        return _NON_FINITE

    for lineno, line in _lines(inp, raw):
        try:
            text = _decode(inp, lineno, line)
            if not text.strip():
                continue  # blank lines are separators, not data
            constants.clear()
            try:
                obj = json.loads(text, parse_constant=constant)
            except json.JSONDecodeError as e:
                raise InputError(
                    inp.display, lineno, "bad_json", f"malformed JSON ({e.msg} at column {e.colno})"
                ) from e
            if constants:  # NaN, Infinity, -Infinity: Python's json reads them, but they are not JSON
                where = _find(obj, _NON_FINITE)
                raise InputError(
                    inp.display,
                    lineno,
                    "bad_json",
                    f"{constants[0]} {f'in field {where!r} ' if where else ''}is not valid JSON "
                    "(it cannot be stored or written back out); write null for a missing value, "
                    "or pass --on-error skip",
                )
            if not isinstance(obj, dict):
                raise InputError(
                    inp.display, lineno, "bad_json", f"expected a JSON object, got {type(obj).__name__}"
                )
            yield _document(inp, lineno, f"{inp.display}:{lineno}", obj, config)
        except InputError as e:
            _handle(e, config, stats)


_NON_FINITE = object()  # what json.loads gives for NaN / Infinity here, to find the field


def _find(obj: Any, target: object, path: str = "") -> str | None:
    """The path (a.b[2]) of the first `target` in a parsed JSON value, or None."""
    if obj is target:
        return path or None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        found = _find(v, target, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else k)
        if found:
            return found
    return None


def _null_non_finite(value: Any) -> tuple[Any, int]:
    """(value with NaN/±inf floats replaced by None, how many were replaced); Parquet's NaN means missing."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = [(k, _null_non_finite(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(value, list | tuple):
        pairs = [_null_non_finite(v) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    return value, 0


def _read_text(inp: InputFile, raw: BinaryIO, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    if config.text_split == "file":
        lines = []
        for lineno, line in _lines(inp, raw):
            lines.append(_decode(inp, lineno, line))
        text = "".join(lines)
        if not text.strip():
            raise InputError(inp.display, None, "empty_text", "file holds only whitespace")
        yield _document(inp, None, inp.display, {config.text_field: text}, config)
        return
    # one document per block of non-blank lines
    block: list[str] = []
    start = 0
    bad = False  # the current block holds an undecodable line: drop it whole, count it once
    for lineno, line in _lines(inp, raw):
        if bad:
            # skip the rest of the bad block, up to the next blank line
            bad = bool(line.decode("utf-8", errors="replace").strip())
            continue
        try:
            s = _decode(inp, lineno, line)
        except InputError as e:
            _handle(e, config, stats)
            block, start, bad = [], 0, True
            continue
        if s.strip():
            if not block:
                start = lineno
            block.append(s)
        elif block:
            yield _document(inp, start, f"{inp.display}:{start}", {config.text_field: "".join(block)}, config)
            block = []
    if block:
        yield _document(inp, start, f"{inp.display}:{start}", {config.text_field: "".join(block)}, config)


def _read_parquet(inp: InputFile, raw: BinaryIO, config: ReaderConfig, stats: ReadStats) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(raw)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(inp.display, None, "corrupt_file", f"not a readable Parquet file: {e}") from e
    columns = pf.schema_arrow.names
    if config.text_field not in columns:
        raise InputError(
            inp.display,
            None,
            "missing_text",
            f"no column {config.text_field!r} (columns: {', '.join(columns)}); pass --text-field",
        )
    row = nulled = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            obj, n = _null_non_finite(obj)  # NaN is pandas' missing value: read it as null, counted
            nulled += n
            try:
                yield _document(inp, row, f"{inp.display}:row {row}", obj, config)
            except InputError as e:
                _handle(e, config, stats)
    if nulled:
        stats.non_finite_nulled += nulled
        log.warning("%s: read %d NaN/inf value(s) as null (missing)", inp.display, nulled)


def _document(inp: InputFile, line: int | None, source: str, obj: dict, config: ReaderConfig) -> Document:
    """Build a Document from one record, checking every field it uses."""
    if config.text_field not in obj:
        fields = ", ".join(sorted(obj)) or "none"
        raise InputError(
            inp.display, line, "missing_text", f"no field {config.text_field!r} (fields: {fields}); pass --text-field"
        )
    text = obj[config.text_field]
    if not isinstance(text, str):
        raise InputError(
            inp.display, line, "bad_text", f"field {config.text_field!r} is {type(text).__name__}, not a string"
        )
    if not text.strip():
        raise InputError(inp.display, line, "empty_text", f"field {config.text_field!r} is empty")
    raw_id = obj.get(config.id_field)
    if raw_id is None:
        doc_id = source
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
        doc_id = str(raw_id)
    else:
        raise InputError(inp.display, line, "bad_id", f"field {config.id_field!r} must be a non-empty string or int")
    # an explicit --domain wins over the field, which wins over the file name
    domain = inp.domain
    if not config.domains:
        value = obj.get(config.domain_field)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise InputError(inp.display, line, "bad_domain", f"field {config.domain_field!r} must be a string")
            domain = value
    title = obj.get(config.title_field)
    if title is not None and not isinstance(title, str):
        title = str(title)
    try:
        timestamp = parse_timestamp(obj.get(config.timestamp_field))
    except (ValueError, OverflowError) as e:
        hint = "" if "accepted:" in str(e) else "; use seconds since the epoch or ISO 8601"
        raise InputError(
            inp.display, line, "bad_timestamp", f"field {config.timestamp_field!r}: {e}{hint}"
        ) from e
    used = {config.text_field, config.id_field, config.domain_field, config.title_field, config.timestamp_field}
    metadata = {k: _jsonable(v) for k, v in obj.items() if k not in used}
    return Document(text, doc_id, domain, source, title, timestamp, metadata)


def _jsonable(value: Any) -> Any:
    """Parquet rows may carry dates, bytes or decimals; store them as JSON-safe values."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
