"""`relm compact DS`: rewrite the datastore without deleted documents and rebuild its indexes."""

from __future__ import annotations

from .common import HelpFormatter, add_wait_flag, writing


def register(sub) -> None:
    p = sub.add_parser("compact", help="drop deleted documents for good and rebuild the indexes",
                       formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    add_wait_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..retrieval.maintenance import compact_and_reindex

    with writing(args.datastore, args.wait) as ds:
        n = len(ds)
        ds, rebuilt = compact_and_reindex(ds)
    if not rebuilt and len(ds) == n:
        print(f"nothing to compact: {ds.root} has no deleted documents")
        return 0
    print(f"compacted {ds.root}: {n:,} -> {len(ds):,} passages; rebuilt indexes: {', '.join(rebuilt) or 'none'}")
    return 0
