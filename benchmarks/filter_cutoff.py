"""Where should a filtered ANN search give way to exact search over the allowed set?

    python benchmarks/filter_cutoff.py [--n 100000] [--queries 200] [--fractions 0.5,0.2,...] [--out DIR]

On n clustered unit vectors (d 384, `relm.retrieval.synthetic.clustered_vectors`), held-out queries from
the same distribution, an HNSW32 index (efSearch 64) and an IVF{4·sqrt n},Flat index (nprobe 8): for
allowed fractions p, with a random mask (uncorrelated with the vectors) and a correlated one (the
passages with the largest projections on a random direction: a region of the space, as a domain or a
date range of topical text is), the widened search (efSearch / p, nprobe / p: `filter_plan` with the
exact cutoff off) against exact search over the allowed set (`exact_search_subset`): ms per query one
query at a time (median of 3 runs) and the widened search's recall@10 against exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from relm.datastore import Datastore
from relm.retrieval.ann import AnnConfig, AnnIndex, build_ann_index
from relm.retrieval.ann_search import filter_plan, selector, shard_reader
from relm.retrieval.ann_tune import recall_at_k
from relm.retrieval.exact import exact_search_subset
from relm.retrieval.synthetic import clustered_vectors, write_vector_datastore

FRACTIONS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)
K = 10


def masks(ds, p: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(ds)
    random = np.zeros(n, bool)
    random[rng.choice(n, size=max(1, int(p * n)), replace=False)] = True
    direction = rng.standard_normal(ds.dim).astype(np.float32)
    proj = np.concatenate([a.astype(np.float32) @ direction for _, a in ds.embedding_shards])
    correlated = proj >= np.quantile(proj, 1 - p)
    return {"random": random, "correlated": correlated}


def ms_per_query(fn, queries) -> float:
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for q in queries:
            fn(q[None, :])
        runs.append(1000 * (time.perf_counter() - t0) / len(queries))
    return statistics.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", help="datastore directory (default: a temporary one)")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="allowed fractions, comma-separated")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="relm-cutoff-"))
    d = 384
    if not (root / "manifest.json").exists():
        write_vector_datastore(root, clustered_vectors(args.n, d, latent_dim=32, seed=0), d)
    ds = Datastore.open(root)
    nlist = 2 ** round(np.log2(4 * np.sqrt(args.n)))
    for name, cfg in (("hnsw", AnnConfig("HNSW32", ef_search=64)), ("ivf", AnnConfig(f"IVF{nlist},Flat", nprobe=8))):
        if not (root / "indexes" / name).exists():
            build_ann_index(ds, name, cfg, show_progress=False)
    ds = Datastore.open(root)
    queries = next(clustered_vectors(args.queries, d, latent_dim=32, seed=0, stream=2)).astype(np.float32)
    fetch = shard_reader(ds.embedding_shards)
    rows = []
    for name in ("hnsw", "ivf"):
        index = AnnIndex.open(ds, name)
        knobs = index.defaults
        for frac in [float(f) for f in args.fractions.split(",")]:
            for kind, mask in masks(ds, frac, seed=1).items():
                ids = np.flatnonzero(mask)
                plan = filter_plan(index.structure, knobs.get("nprobe"), knobs["ef_search"], K, len(ids), len(ds),
                                   exact_cutoff=False)
                sel = selector(mask, len(ds))
                widened = lambda q, plan=plan, sel=sel, index=index: index._search(  # noqa: E731
                    q, K, plan.nprobe, plan.ef_search, 0, sel)
                exact = lambda q, ids=ids: exact_search_subset(q, ids, K, fetch)  # noqa: E731
                truth = exact(queries)[1]
                approx = widened(queries)[1]
                rows.append({
                    "index": name, "mask": kind, "fraction": frac, "allowed": len(ids),
                    "ef_search": plan.ef_search, "nprobe": plan.nprobe,
                    "short": int(((approx >= 0).sum(axis=1) < min(K, len(ids))).sum()),
                    "recall@10": recall_at_k(approx, truth, K),
                    "widened_ms": ms_per_query(widened, queries[:100]),
                    "exact_ms": ms_per_query(exact, queries[:100]),
                })
                r = rows[-1]
                print(f"{name:<5} {kind:<10} p={frac:<6} allowed={r['allowed']:>7,} ef={r['ef_search']:>6} "
                      f"nprobe={r['nprobe']!s:>5} short={r['short']:>4} recall@10={r['recall@10']:.3f} "
                      f"widened {r['widened_ms']:.2f} ms  exact {r['exact_ms']:.2f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
