"""`relm <subcommand>`: a thin layer over the library.

Each subcommand lives in its own module with `register(subparsers)` and
`run(args) -> int`. `main(argv)` returns the exit code, so tests call it
in-process. User errors (`RelmError`) print one line and exit 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from ..errors import RelmError
from ..version import __version__
from . import (
    add,
    build,
    compact,
    delete,
    eval,
    eval_retrieval,
    generate,
    index,
    index_eval,
    info,
    qa,
    quickstart,
    recover,
    retro,
    scale,
    search,
    serve,
)
from .common import HelpFormatter

SUBCOMMANDS = (build, info, search, index, index_eval, add, delete, compact, recover, eval, eval_retrieval, generate, qa,
               serve, scale, quickstart, retro)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relm",
        description="Retrieval-based language models at datastore scale.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"relm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (tests and tools swap it), not the stream seen at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("relm")
    root.setLevel(level)
    if not any(getattr(h, "_relm", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("relm: %(message)s"))
        handler._relm = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def _quiet_offline_hub() -> None:
    """relm never downloads at run time; make the Hugging Face stack agree, and drop its load bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    _quiet_offline_hub()
    parser = make_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.run(args) or 0)
    except RelmError as e:
        print(f"relm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"relm {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the disk is full, a path is not writable, ...: one line, nothing lost
        if args.verbose:
            raise
        where = f"{e.filename}: " if e.filename else ""
        hint = {errno.ENOSPC: "free some space and rerun the same command (it resumes)",
                errno.EACCES: "check the permissions", errno.EROFS: "the file system is read-only",
                errno.EDQUOT: "free some space and rerun the same command (it resumes)"}.get(e.errno, "")
        print(f"relm {args.command}: error: {where}{e.strerror or e}" + (f"; {hint}" if hint else ""),
              file=sys.stderr)
        return 2


def entry_point() -> int:
    try:
        return main()
    except BrokenPipeError:  # `relm search ... | head`
        return 0


__all__ = ["main", "make_parser"]
