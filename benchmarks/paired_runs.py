"""Paired bootstrap between two `relm eval-retrieval --out` directories (two datastores, same queries).

    python benchmarks/paired_runs.py A/per_query.jsonl B/per_query.jsonl --retriever exact --measure nDCG@10

Prints B - A on the mean over queries with a 95% percentile interval (10,000 resamples of queries,
seed 0) and the two-sided bootstrap p-value.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def load(path: str, retriever: str, measure: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        return {r["qid"]: r[retriever][measure] for r in map(json.loads, f)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--retriever", default="exact")
    ap.add_argument("--measure", default="nDCG@10")
    ap.add_argument("--n-boot", type=int, default=10_000)
    args = ap.parse_args()
    a, b = load(args.a, args.retriever, args.measure), load(args.b, args.retriever, args.measure)
    if set(a) != set(b):
        raise SystemExit("the two runs scored different queries")
    qids = sorted(a)
    d = np.array([b[q] - a[q] for q in qids])
    rng = np.random.default_rng(0)
    boot = d[rng.integers(0, len(d), size=(args.n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    print(f"{args.retriever} {args.measure}: B - A = {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], p = {p:.3f} "
          f"({len(d)} queries)")


if __name__ == "__main__":
    main()
