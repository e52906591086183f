"""One progress helper behind one switch.

`progress(...)` returns a tqdm bar. It is shown when `enabled` is True, hidden
when False, and with `None` (the default) shown only when stderr is a terminal,
so CI logs and tests stay clean.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress(
    iterable: Any = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        dynamic_ncols=True,
        smoothing=0.1,
        **kwargs,
    )
