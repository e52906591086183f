"""`python -m relm ...`: the same as the `relm` command."""

from .cli import entry_point

raise SystemExit(entry_point())
