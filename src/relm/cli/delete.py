"""`relm delete DS --doc-id ID...`: tombstone documents; no search returns them afterwards."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import HelpFormatter, add_wait_flag, writing


def register(sub) -> None:
    p = sub.add_parser("delete", help="delete documents (tombstones; `relm compact` reclaims the space)",
                       formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--doc-id", action="append", default=[], metavar="ID", help="document id (repeatable)")
    p.add_argument("--doc-ids-from", metavar="FILE", help="a file of document ids, one per line")
    add_wait_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore.update import delete_documents

    ids = list(args.doc_id)
    if args.doc_ids_from:
        path = Path(args.doc_ids_from)
        if not path.is_file():
            raise InputError(args.doc_ids_from, None, "missing", "no such file")
        ids += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with writing(args.datastore, args.wait) as ds:
        before = ds.revision
        ds = delete_documents(ds, ids)
    d = ds.manifest.get("deleted") or {"documents": 0, "passages": 0}
    if ds.revision == before:
        print(f"nothing to delete: the {len(set(ids)):,} document(s) were already deleted from {ds.root}")
        return 0
    print(f"deleted {len(set(ids)):,} document(s); {d['documents']:,} documents "
          f"({d['passages']:,} passages) are tombstoned in {ds.root}")
    return 0
