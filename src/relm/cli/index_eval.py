"""`relm index-eval DS --name X`: recall of a faiss, sharded or BM25 index against exact search (dense,
or exact BM25 scoring), with `relm search`'s filters, speed and size; an aligned table or --json."""

from __future__ import annotations

import json

from .common import HelpFormatter, add_query_backend_flags, open_for_queries

METRICS = (  # (report key, label, format)
    ("recall@1", "recall@1", "{:.4f}"),
    ("recall@10", "recall@10", "{:.4f}"),
    ("recall@100", "recall@100", "{:.4f}"),
    ("matched", "queries with a BM25 hit", "{:.4f}"),
    ("qps_batched", "queries/s, batched", "{:,.0f}"),
    ("qps_single", "queries/s, one at a time", "{:,.0f}"),
    ("index_bytes", "index bytes", "{:,}"),
    ("bytes_per_vector", "bytes per passage", "{:,.1f}"),
)


def register(sub) -> None:
    p = sub.add_parser(
        "index-eval", formatter_class=HelpFormatter,
        help="measure an index (faiss, sharded, BM25): recall@1/10/100 against exact search, queries/s, bytes",
        description="Recall of index NAME against exact search over the same (filtered) passages: exact dense "
        "search for faiss and sharded indexes, exact BM25 scoring of every passage for BM25 indexes. Queries: "
        "--queries FILE (a query file, or held-out documents, cut into 256-word passages), else a sample of "
        "the datastore's own passages (each searched without itself; flatters an index).")
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--name", required=True, help="index name")
    p.add_argument("--queries", metavar="FILE",
                   help="held-out query texts: .jsonl ('query' or 'text'), .tsv or lines, .gz/.zst read too")
    p.add_argument("--n-queries", type=int, default=1000, metavar="N", help="queries sampled (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--before", metavar="TIME", help="only documents dated before this (as relm search)")
    p.add_argument("--after", metavar="TIME", help="only documents dated at or after this (as relm search)")
    p.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    p.add_argument("--probe-shards", type=int, metavar="N", help="sharded: search only the N nearest shards")
    p.add_argument("--nprobe", type=int, metavar="N", help="faiss: IVF lists to probe (default: the stored value)")
    p.add_argument("--ef-search", type=int, metavar="N", help="faiss: HNSW efSearch (default: the stored value)")
    p.add_argument("--refine", type=int, dest="refine_factor", metavar="N",
                   help="faiss: exact re-score of k x N candidates (default: the stored value)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..config import check_int
    from ..retrieval.index_eval import evaluate_index
    from ..retrieval.options import time_bound

    check_int(args.n_queries, "--n-queries", minimum=1)
    before, after = time_bound(args.before, "--before"), time_bound(args.after, "--after")
    ds = open_for_queries(args.datastore, args)
    allowed = ds.allowed(before=before, after=after, domains=tuple(args.domain))
    knobs = {k: getattr(args, k) for k in ("nprobe", "ef_search", "refine_factor") if getattr(args, k) is not None}
    report = evaluate_index(ds, args.name, queries_file=args.queries, n_queries=args.n_queries, seed=args.seed,
                            allowed=allowed, probe_shards=args.probe_shards, **knobs)
    report["filter"] = filter_text(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report_table(report, len(ds)))
    return 0


def filter_text(args) -> str:
    parts = [f"--{flag} {getattr(args, flag)}" for flag in ("before", "after") if getattr(args, flag)]
    parts += [f"--domain {d}" for d in args.domain]
    return " ".join(parts) or "none"


def knob_text(knobs: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in knobs.items() if v is not None) or "defaults"


def report_table(report: dict, n_passages: int) -> str:
    """The report as a header and an aligned two-column table."""
    lines = [
        f"index      {report['name']} ({report['type']}: {report['factory']}"
        + (f", {report['partition']} partition, {report['n_shards']} shards" if report["type"] == "sharded" else "")
        + ")",
        f"search     {knob_text(report.get('search', {}))}" if report.get("search") else None,
        f"queries    {report['queries']}",
        f"filter     {report['filter']} ({report['allowed']:,} of {n_passages:,} passages allowed)",
        "",
    ]
    rows = [(label, fmt.format(report[key])) for key, label, fmt in METRICS if key in report]
    width = max(len(label) for label, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    lines += [f"{'metric':<{width}}  {'value':>{vwidth}}"] + [f"{label:<{width}}  {v:>{vwidth}}" for label, v in rows]
    return "\n".join(line for line in lines if line is not None)


def tuning_table(result: dict) -> str:
    """`tune_ann_index`'s grid as an aligned table, the chosen setting marked with *."""
    keys = [k for k in ("nprobe", "ef_search", "refine_factor") if any(k in row for row in result["table"])]
    head = [*keys, f"recall@{result['k']}", "queries/s"]
    chosen = result["chosen"]
    body = [[*(str(row.get(k, "")) for k in keys), f"{row['recall']:.4f}", f"{row['qps']:,.0f}",
             "*" if all(row.get(k) == chosen.get(k) for k in keys) else ""] for row in result["table"]]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    status = "reached" if result["reached"] else "NOT reached (best recall chosen)"
    lines = [f"tuned on {result['queries']}: target recall@{result['k']} {result['target_recall']} {status}",
             fmt(head)] + [fmt(r[:-1]) + (" *" if r[-1] else "") for r in body]
    return "\n".join(lines)
