"""`relm compact DS`: rewrite the datastore without deleted documents and rebuild its indexes."""

from __future__ import annotations

from .common import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser("compact", help="drop deleted documents for good and rebuild the indexes",
                       formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore import Datastore
    from ..retrieval.maintenance import compact_and_reindex

    ds = Datastore.open(args.datastore)
    n = len(ds)
    ds, rebuilt = compact_and_reindex(ds)
    print(f"compacted {ds.root}: {n:,} -> {len(ds):,} passages; rebuilt indexes: {', '.join(rebuilt) or 'none'}")
    return 0
