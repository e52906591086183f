"""`relm eval-retrieval DS --queries Q --qrels QRELS`: retrieval quality (nDCG, recall, MRR, MAP) of one or
more retrievers against relevance judgements, at document level, with paired comparisons."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import HelpFormatter, add_query_backend_flags, open_for_queries
from .search import add_retriever_arguments, retriever_config


def register(sub) -> None:
    p = sub.add_parser(
        "eval-retrieval", help="measure retrieval against qrels (nDCG@10, R@100, MRR@10, MAP)",
        description="Search every query, aggregate passage hits to documents (MaxP by default) and score the "
        "document run against the qrels with ir-measures (trec_eval's definitions). --compare evaluates several "
        "retriever kinds in one run and compares each with the first, query by query (paired bootstrap).",
        formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--queries", required=True, metavar="FILE",
                   help="queries as `relm search --queries` reads them (BEIR queries.jsonl: ids from _id)")
    p.add_argument("--query-id-field", metavar="FIELD", help="JSONL queries: the id field")
    p.add_argument("--qrels", required=True, metavar="FILE",
                   help="TREC qrels (qid 0 docid rel) or BEIR TSV (query-id corpus-id score, with header)")
    p.add_argument("-k", type=int, default=100, help="passages retrieved per query (before aggregation)")
    p.add_argument("--doc-agg", default="max", choices=["max", "first", "sum"],
                   help="passage hits -> document score: max (MaxP), first, sum")
    p.add_argument("--metrics", default="nDCG@10,R@100,RR@10,AP",
                   help="ir-measures names, comma-separated (MRR@10 and MAP are read as RR@10 and AP)")
    p.add_argument("--compare", metavar="KINDS",
                   help="several retriever kinds in one run, e.g. exact,bm25,hybrid (each keeps the other flags)")
    p.add_argument("--out", metavar="DIR", help="write summary.json, per_query.jsonl and a TREC run per retriever")
    add_retriever_arguments(p)
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import time

    import numpy as np

    from ..corpus.queries import read_queries
    from ..errors import ConfigError
    from ..eval import retrieval as R
    from ..retrieval.options import SearchOptions
    from ..retrieval.retriever import Retriever

    if args.k <= 0:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    metrics = R.parse_metrics(args.metrics)
    base = retriever_config(args)
    kinds = [k.strip() for k in args.compare.split(",") if k.strip()] if args.compare else [base.kind]
    configs = {k: base.with_kind(k) for k in kinds}
    queries = read_queries(args.queries, args.query_id_field)
    qrels = R.read_qrels(args.qrels)
    judged = [(q, t) for q, t in queries if q in qrels]
    if not judged:
        raise ConfigError(f"none of the {len(queries)} query ids of {args.queries} is in {args.qrels} (e.g. "
                          f"{queries[0][0]!r} vs {next(iter(qrels))!r}); is --query-id-field right?")
    if len(judged) < len(queries):
        print(f"relm eval-retrieval: {len(queries) - len(judged)} of {len(queries)} queries have no judgements "
              "and are not scored", file=sys.stderr)
    ds = open_for_queries(args.datastore, args)
    qids, texts = [q for q, _ in judged], [t for _, t in judged]
    results, per_query, runs, timing = {}, {}, {}, {}
    for name, config in configs.items():
        retriever = Retriever(ds, config)
        t0 = time.perf_counter()
        scores, ids = retriever.search_ids(texts, SearchOptions(k=args.k))
        timing[name] = len(texts) / max(time.perf_counter() - t0, 1e-9)
        runs[name] = R.doc_run(ds, qids, np.asarray(scores), np.asarray(ids), args.doc_agg)
        results[name], per_query[name] = R.evaluate(runs[name], qrels, metrics)
    comparisons = {}
    first = kinds[0]
    for name in kinds[1:]:
        comparisons[f"{name} - {first}"] = {
            str(m): R.paired_bootstrap([per_query[name][q][str(m)] for q in qids],
                                       [per_query[first][q][str(m)] for q in qids]) for m in metrics}
    print(R.table(results, metrics, comparisons))
    print(f"{len(qids)} judged queries; k={args.k} passages, {args.doc_agg} aggregation; queries/s: "
          + ", ".join(f"{n} {v:,.0f}" for n, v in timing.items()), file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        R.dump(out / "summary.json", {
            "datastore": str(ds.root), "queries": args.queries, "qrels": args.qrels, "judged_queries": len(qids),
            "k": args.k, "doc_agg": args.doc_agg, "metrics": [str(m) for m in metrics],
            "retrievers": {n: c.to_dict() for n, c in configs.items()}, "results": results,
            "comparisons": comparisons, "queries_per_s": timing})
        with open(out / "per_query.jsonl", "w", encoding="utf-8") as f:
            for q in qids:
                f.write(json.dumps({"qid": q, **{n: per_query[n][q] for n in kinds}}) + "\n")
        for name in kinds:
            R.write_trec(out / f"run-{name}.trec", runs[name], name)
    return 0
