"""`relm index-eval DS --name X`: recall against exact search, speed and size of an ANN index."""

from __future__ import annotations

import json

from .common import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser("index-eval", help="measure an ANN index: recall@1/10/100, queries/s, bytes/vector",
                       formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--name", required=True, help="index name")
    p.add_argument("--queries", type=int, default=1000, help="held-out query sample size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore import Datastore
    from ..retrieval.ann import evaluate_ann_index

    ds = Datastore.open(args.datastore)
    report = evaluate_ann_index(ds, args.name, n_queries=args.queries, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key:<24} {value:,.4f}" if isinstance(value, float) else f"{key:<24} {value}")
    return 0
