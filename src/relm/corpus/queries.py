"""Query files: `(query id, text)` pairs from JSONL, TSV or plain lines, plain or gzip/zst compressed.

- JSONL (`.jsonl`, `.ndjson`): one object per line with the text in `query` or `text` and the id in
  `id_field`. By default that is `id`, or `_id` (BEIR's `queries.jsonl`) when the file uses that one.
  A file with no id field at all is numbered by line (1, 2, ...). A file where only some lines have
  one is refused, since line numbers could collide with the real ids.
- TSV (`.tsv`): `id<TAB>query`. A first line `query-id<TAB>...` or `id<TAB>...` is taken as a header.
- anything else: one query per line, numbered by line.

`.gz` and `.zst` are read like corpus files. Errors name the file and line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import InputError
from .readers import COMPRESSIONS, InputFile, _lines

log = logging.getLogger(__name__)

_HEADERS = ("query-id", "query_id", "qid", "id", "_id")


def _kind(path: Path) -> tuple[str, str | None]:
    name, compression = path.name.lower(), None
    for c in COMPRESSIONS:
        if name.endswith(c):
            name, compression = name[: -len(c)], c[1:]
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl", compression
    if name.endswith(".tsv"):
        return "tsv", compression
    return "lines", compression


def _no_constant(name: str):
    raise ValueError(name)


def read_queries(path: str, id_field: str | None = None) -> list[tuple[str, str]]:
    """(id, text) pairs from a query file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(path, None, "missing", "no such query file")
    kind, compression = _kind(p)
    inp = InputFile(p, path, kind, compression, "")
    rows: list[tuple[int, str]] = []
    with open(p, "rb") as raw:
        for n, data in _lines(inp, raw):
            try:
                line = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                hint = "; is it gzip-compressed without a .gz name?" if data[:2] == b"\x1f\x8b" else ""
                raise InputError(path, n, "non_utf8", f"not UTF-8 ({e.reason}){hint}") from e
            if line.strip():
                rows.append((n, line))
    if kind == "jsonl":
        out = _jsonl(path, rows, id_field)
    elif kind == "tsv":
        if rows and rows[0][1].partition("\t")[0].strip().lower() in _HEADERS:
            rows = rows[1:]
        out = []
        for n, line in rows:
            qid, sep, text = line.partition("\t")
            if not sep:
                raise InputError(path, n, "bad_tsv", "expected 'id<TAB>query'")
            out.append((qid, text))
    else:
        out = [(str(n), line) for n, line in rows]
    if not out:
        raise InputError(path, None, "empty_file", "no queries in file")
    return out


def _jsonl(path: str, rows: list[tuple[int, str]], id_field: str | None) -> list[tuple[str, str]]:
    objs = []
    for n, line in rows:
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise InputError(path, n, "bad_json", f"malformed JSON ({e.msg})") from e
        except ValueError as e:
            raise InputError(path, n, "bad_json", f"{e} is not valid JSON; write null or a number") from e
        text = obj.get("query", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise InputError(path, n, "missing_text", "expected an object with a 'query' or 'text' string")
        objs.append((n, obj, text))
    field = id_field
    if field is None:
        field = next((f for f in ("id", "_id") if any(f in o for _, o, _ in objs)), None)
        if field is None:
            log.warning("%s has no query ids ('id' or '_id'); numbering the queries by line", path)
            return [(str(n), text) for n, _, text in objs]
    out = []
    for n, obj, text in objs:
        if field not in obj or obj[field] is None:
            raise InputError(path, n, "missing_id", f"no {field!r} field (other lines have one; line numbers could "
                                                    "collide with real ids); give every query an id, or name the "
                                                    "id field with --query-id-field")
        out.append((str(obj[field]), text))
    return out


__all__ = ["read_queries"]
