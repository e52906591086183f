"""The document record every reader yields, and parsing of its fields."""

from __future__ import annotations

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


def parse_timestamp(value: Any) -> int | None:
    """Seconds since the epoch from a number (seconds) or an ISO 8601 string.

    Naive date-times are taken as UTC. Raises ValueError for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float):
        return _in_range(int(value))
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        try:
            return _in_range(int(float(s)) if any(c in s for c in ".eE") else int(s))
        except ValueError:
            pass  # not a number: try ISO 8601
        dt = datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


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
