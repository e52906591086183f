"""The document record every reader yields, and parsing of its fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# int64 sentinel for "no timestamp" in docs/timestamp.npy
NO_TIMESTAMP = -(2**63)


@dataclass
class Document:
    text: str
    id: str
    domain: str
    source: str  # "path:line" (or "path:row N"), where the document came from
    title: str | None = None
    timestamp: int | None = None  # seconds since the Unix epoch, UTC
    metadata: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The per-document metadata stored in the datastore (everything but the text)."""
        return {
            "id": self.id,
            "domain": self.domain,
            "title": self.title,
            "timestamp": self.timestamp,
            "source": self.source,
            "metadata": self.metadata,
        }


def with_title(title: str | None, text: str) -> str:
    """What the encoder and BM25 see of a passage when titles are prepended: BEIR's
    `(title + " " + text).strip()` (beir.retrieval.models.SentenceBERT.encode_corpus, sep " ").
    A document without a title (None or blank) gives the passage text unchanged."""
    if title is None or not title.strip():
        return text
    return (title + " " + text).strip()


TIMESTAMP_FORMATS = ("epoch seconds (1600000000, -86400 for 1969-12-31, 1.6e9) "
                     "or ISO 8601 (2020-01-31, 2020-01-31T12:00:00Z, 2020-01-31T12:00:00+02:00)")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-"})  # typographic minus signs


def parse_timestamp(value: Any) -> int | None:
    """Seconds since the epoch from a number (seconds, negative before 1970) or an ISO 8601 string.

    Naive date-times are taken as UTC; fractional seconds round down (floor, also before 1970).
    Raises ValueError, saying which formats are accepted, for anything else (NaN and inf included).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int):
        return _in_range(value)
    if isinstance(value, float):
        return _from_float(value)
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        s = value.strip().translate(_MINUS_SIGNS)
        if not s:
            return None
        number = _number(s)
        if number is not None:
            return _in_range(number) if isinstance(number, int) else _from_float(number)
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
        except ValueError:
            raise ValueError(f"cannot read {value!r} as a date or time; accepted: {TIMESTAMP_FORMATS}") from None
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _number(s: str) -> int | float | None:
    """An int or float spelled by `s` (sign, digits, decimal point, exponent), else None.

    Only plain decimal numbers: not '0x10', not '1_000', and not 'nan'/'inf', which float() would take.
    """
    body = s[1:] if s[:1] in "+-" else s
    if not body or not body[0].isdigit() and not (body[0] == "." and body[1:2].isdigit()):
        return None
    if not all(c.isdigit() or c in ".eE+-" for c in body) or not body.isascii():
        return None
    try:
        return int(s) if body.isdigit() else float(s)
    except ValueError:
        return None


def _from_float(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError(f"timestamp {value} is not a finite number; accepted: {TIMESTAMP_FORMATS}")
    return _in_range(math.floor(value))


# year 1 to year 9999 in seconds: what datetime can show, and far inside int64
_MIN_TS, _MAX_TS = -62_135_596_800, 253_402_300_799


def _in_range(ts: int) -> int:
    if not _MIN_TS <= ts <= _MAX_TS:
        raise ValueError(f"timestamp {ts} is outside years 1-9999 (is it in milliseconds?)")
    return ts


def format_timestamp(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
