"""`relm add DS INPUT...`: embed new documents and add them to the datastore and every index."""

from __future__ import annotations

from ..config import ReaderConfig
from .common import HelpFormatter, add_progress_flags, add_wait_flag, writing


def register(sub) -> None:
    p = sub.add_parser("add", help="add documents to a datastore and its indexes (no retraining)",
                       formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or globs")
    p.add_argument("--text-field", default=ReaderConfig.text_field)
    p.add_argument("--id-field", default=ReaderConfig.id_field)
    p.add_argument("--title-field", metavar="F",
                   help="document title field (default: the one the datastore was built with; whether titles "
                        "are prepended for embedding is the datastore's own setting)")
    p.add_argument("--domain", action="append", default=[], metavar="D",
                   help="domain label: once for all inputs, or once per input")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    add_wait_flag(p)
    add_progress_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore.update import add_documents
    from ..retrieval.indexes import list_indexes

    with writing(args.datastore, args.wait) as ds:
        n, docs = len(ds), ds.n_documents
        built = ds.manifest["build"]["plan"]["config"].get("reader", {})
        reader = ReaderConfig(text_field=args.text_field, id_field=args.id_field, domains=tuple(args.domain),
                              title_field=args.title_field or built.get("title_field", ReaderConfig.title_field),
                              on_error=args.on_error)
        ds = add_documents(ds, args.inputs, reader, show_progress=args.progress)
    names = [c["name"] for c in list_indexes(ds)]
    print(f"added {ds.n_documents - docs:,} documents ({len(ds) - n:,} passages) to {ds.root}; "
          f"updated indexes: {', '.join(names) or 'none'}")
    return 0
