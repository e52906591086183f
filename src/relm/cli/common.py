"""What the subcommands share."""

from __future__ import annotations

import argparse
import contextlib


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show real defaults in --help, but not the noise of `(default: None)` or `(default: False)`."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default == []:
            return action.help
        return super()._get_help_string(action)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """'8GB' -> 8e9, '512MiB' -> 512 * 2**20, '1000' -> 1000."""
    from ..errors import ConfigError

    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in _UNITS or value < 0:
        raise ConfigError(f"cannot read {text!r} as a size; write e.g. 8GB, 512MB, 2GiB")
    return int(value * _UNITS[unit])


def add_progress_flags(parser) -> None:
    """--progress / --no-progress; unset (None) shows bars only on a terminal."""
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")


def add_wait_flag(parser) -> None:
    """--wait: queue behind another process writing the datastore instead of refusing."""
    parser.add_argument("--wait", action="store_true",
                        help="if another relm process is writing the datastore, wait for it instead of refusing")


@contextlib.contextmanager
def writing(path: str, wait: bool):
    """Hold the writer lock of datastore `path`, finish or undo an interrupted update, and yield the
    datastore as it is now: how every writing subcommand starts."""
    from ..datastore import Datastore, read_manifest
    from ..datastore.journal import recover
    from ..datastore.lock import writer_lock

    read_manifest(path)  # a clear error for a missing or foreign directory before anything is created
    with writer_lock(path, wait=wait):
        recover(path, keep_new=True)
        yield Datastore.open(path)


def add_query_backend_flags(parser) -> None:
    """--encoder-backend / --allow-backend-mismatch for a subcommand that embeds queries."""
    from ..config import ENCODER_BACKENDS

    parser.add_argument("--encoder-backend", choices=ENCODER_BACKENDS,
                        help="embed queries with this encoder backend (default: the one that built the datastore;"
                             " another is accepted when its embeddings of a recorded probe agree, mean cosine"
                             " >= 0.99)")
    parser.add_argument("--allow-backend-mismatch", action="store_true",
                        help="with --encoder-backend: accept a backend whose embeddings differ, with a warning")


def open_for_queries(path, args):
    """The datastore at `path`, read-only, with the query encoder backend `add_query_backend_flags` set."""
    from ..datastore import Datastore

    return Datastore.open(path, query_backend=getattr(args, "encoder_backend", None),
                          allow_backend_mismatch=getattr(args, "allow_backend_mismatch", False))
