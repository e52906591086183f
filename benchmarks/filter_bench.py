"""Filtered and routed search on a real datastore: how many queries come back with fewer than k hits
while at least k allowed passages exist, and recall@k against exact search over the allowed set.

    python benchmarks/filter_bench.py DS --queries HELDOUT.jsonl [--n-queries 200] [-k 10] [--json OUT]

Queries are passages of held-out documents (`relm.retrieval.ann_tune.query_texts`); indexes that DS
lacks are built: `hnsw` (HNSW32, efSearch 64), `ivf` (IVF64,Flat, nprobe 4), `km8` (8 k-means Flat
shards), `dom` (one Flat shard per domain). Every search goes through `Retriever`, as `relm search`
does. Filters are `relm search`'s (`--after`, `--domain`); the datastore needs timestamps for --after.
ms/q: batched search of all queries, median of 3 runs, divided by the query count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from relm.datastore import Datastore
from relm.retrieval import ann_tune
from relm.retrieval.options import SearchOptions, time_bound
from relm.retrieval.retriever import Retriever, RetrieverConfig

INDEXES = {
    "hnsw": ("ann", dict(factory="HNSW32", ef_search=64)),
    "ivf": ("ann", dict(factory="IVF64,Flat", nprobe=4)),
    "km8": ("sharded", dict(by="kmeans", n_shards=8)),
    "dom": ("sharded", dict(by="domain")),
}
FILTERS = {
    "none": {},
    "after 2020": {"after": "2020-01-01"},
    "after 2024-06": {"after": "2024-06-01"},
    "news": {"domains": ("news",)},
    "wiki, after 2015": {"domains": ("wiki",), "after": "2015-01-01"},
}
RUNS = [  # (index, probe_shards)
    ("hnsw", None), ("ivf", None), ("km8", 2), ("dom", None),
]


def ensure_indexes(ds) -> None:
    from relm.retrieval.ann import AnnConfig, build_ann_index
    from relm.retrieval.indexes import list_indexes
    from relm.retrieval.sharding import ShardConfig, build_sharded_index

    have = {c["name"] for c in list_indexes(ds)}
    for name, (kind, cfg) in INDEXES.items():
        if name in have:
            continue
        if kind == "ann":
            build_ann_index(ds, name, AnnConfig(**cfg), show_progress=False)
        else:
            build_sharded_index(ds, name, ShardConfig(**cfg))


def options(k: int, f: dict) -> SearchOptions:
    return SearchOptions(k=k, after=time_bound(f.get("after"), "--after"), domains=f.get("domains", ()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datastore")
    p.add_argument("--queries", required=True, help="held-out documents (JSONL) or a query file")
    p.add_argument("--n-queries", type=int, default=200)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    ds = Datastore.open(args.datastore)
    ensure_indexes(ds)
    ds = Datastore.open(args.datastore)
    texts = ann_tune.query_texts(args.queries, args.n_queries, seed=0)
    vectors = ds.encode_queries(texts)
    exact = Retriever(ds, RetrieverConfig("exact"))
    rows = []
    for fname, f in FILTERS.items():
        opts = options(args.k, f)
        mask = ds.allowed(before=None, after=opts.after, domains=opts.domains)
        n_allowed = len(ds) if mask is None else int(mask.sum())
        truth = exact.search_vectors(vectors, opts)[1]
        for name, probe in RUNS:
            kind = INDEXES[name][0]
            r = Retriever(ds, RetrieverConfig(kind, index=name, probe_shards=probe))
            times = []
            for _ in range(3):  # median of 3 batched runs (timing on a shared machine is noisy)
                t0 = time.perf_counter()
                ids = r.search_vectors(vectors, opts)[1]
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            hits = (ids >= 0).sum(axis=1)
            need = min(args.k, n_allowed)
            rows.append({
                "index": name + (f" probe {probe}" if probe else ""), "filter": fname, "allowed": n_allowed,
                "short": int((hits < need).sum()), "n_queries": len(texts),
                "recall": ann_tune.recall_at_k(ids, truth, args.k), "ms_per_query": 1000 * seconds / len(texts),
            })
    print(f"{'index':<14} {'filter':<18} {'allowed':>7} {'< k hits':>9} {'recall@' + str(args.k):>10} {'ms/q':>6}")
    for r in rows:
        print(f"{r['index']:<14} {r['filter']:<18} {r['allowed']:>7,} {r['short']:>5}/{r['n_queries']:<3} "
              f"{r['recall']:>10.3f} {r['ms_per_query']:>6.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
