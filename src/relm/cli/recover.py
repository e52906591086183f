"""`relm recover DS`: finish or undo an update that was interrupted (a crash, a kill, a full disk)."""

from __future__ import annotations

from .common import HelpFormatter, add_wait_flag


def register(sub) -> None:
    p = sub.add_parser(
        "recover", help="finish or undo an interrupted update of a datastore",
        description="Every command that writes does this first; run it to make an interrupted datastore "
        "readable again without changing anything else. An update killed after its commit was journaled is "
        "finished; one killed before is undone.", formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    add_wait_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore.update import recover

    what = recover(args.datastore, wait=args.wait)
    print(f"{args.datastore}: " + ({"rolled forward": "finished the interrupted update",
                                    "rolled back": "undid the interrupted update"}.get(what, "nothing to recover")))
    return 0
