"""Encoder backends against torch fp32 (issue 17): the same SciFact passages built with each backend.

SciFact (../shared/data/external/scifact, 5,183 abstracts, titles prepended, relm's default chunking) is
built once per `--encoder-backend`. Then, against the torch build:

  cosine     per passage, the backend's stored (float16) embedding vs torch's: mean, min, 1st percentile
  nDCG@10    exact dense search on the 300 test queries, queries embedded by the same backend (MaxP
             document runs, ir-measures), with the paired-bootstrap difference to torch
  overlap    top-10 passage overlap with torch's exact search, per query: mean and min, on the test queries
             (nothing is tuned here, so they are held out) and on the 809 train queries

Bars: mean cosine >= 0.99, |nDCG@10 - torch| <= 0.01, mean top-10 overlap >= 0.9.

    OMP_NUM_THREADS=2 python benchmarks/backend_quality.py          # ~20 min on 2 cores, most of it building

Datastores are cached under --work (benchmarks/.cache/backends) and reused when their flags match.
Results: benchmarks/results/backend_quality.json (rows of backends not rerun are kept, when measured
against a torch build of the same passages) and a table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from beir_bench import SCIFACT, ensure_datastore, judged_queries, say, score  # benchmarks/ on sys.path
from readme_table import write_readme_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "backend_quality.json"
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
FLAGS = ["--title-field", "title"]  # beir_bench's titles-new variant


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def overlap_at_k(ids: np.ndarray, ref: np.ndarray, k: int = 10) -> np.ndarray:
    """(nq,) share of each query's top-k passage ids that are also in the reference's top-k."""
    return np.array([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, ref, strict=True)])


def search(ds, texts: list[str], k: int = 100):
    from relm.retrieval.options import RetrieverConfig, SearchOptions
    from relm.retrieval.retriever import Retriever

    t0 = time.perf_counter()
    scores, ids = Retriever(ds, RetrieverConfig()).search_ids(texts, SearchOptions(k=k))
    return np.asarray(scores), np.asarray(ids), time.perf_counter() - t0


def main(argv=None) -> int:
    from ir_measures import parse_measure

    from relm.datastore import Datastore
    from relm.eval.retrieval import paired_bootstrap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "backends")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    backends = args.backends.split(",")
    assert backends[0] == "torch", "torch first: everything is compared with it"
    metrics = [parse_measure("nDCG@10")]
    qids, texts, qrels = judged_queries(SCIFACT / "queries.jsonl", SCIFACT / "qrels.tsv")
    _, train_texts, _ = judged_queries(SCIFACT / "train-queries.jsonl", SCIFACT / "train-qrels.tsv")

    stores, runs, rows = {}, {}, {}
    for b in backends:
        path = ensure_datastore(args.work / f"scifact-{b}", SCIFACT / "corpus.jsonl.gz",
                                [*FLAGS, "--encoder-backend", b])
        stores[b] = Datastore.open(path)
        s, i, secs = search(stores[b], texts)
        _, ti, _ = search(stores[b], train_texts, k=10)
        agg, per_query = score(stores[b], qids, s, i, qrels, metrics)
        runs[b] = {"ids": i, "train_ids": ti, "per_query": per_query}
        rows[b] = {"nDCG@10": agg["nDCG@10"], "query_seconds": secs,
                   "build_encode_s": json.loads((path / "stats.json").read_text())["seconds"].get("encode")}
        say(f"{b}: nDCG@10 {agg['nDCG@10']:.4f}")
    ref = stores["torch"]
    for b in backends[1:]:
        ds = stores[b]
        assert len(ds) == len(ref), "the same passages in every build"
        cos = np.concatenate([cosines(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32))
                              for (_, x), (_, y) in zip(ds.embedding_shards, ref.embedding_shards, strict=True)])
        test_overlap = overlap_at_k(runs[b]["ids"], runs["torch"]["ids"])
        train_overlap = overlap_at_k(runs[b]["train_ids"], runs["torch"]["train_ids"])
        diff = paired_bootstrap([runs[b]["per_query"][q]["nDCG@10"] for q in qids],
                                [runs["torch"]["per_query"][q]["nDCG@10"] for q in qids])
        rows[b].update({
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "cosine_p01": float(np.percentile(cos, 1)),
            "ndcg10_minus_torch": rows[b]["nDCG@10"] - rows["torch"]["nDCG@10"], "ndcg10_paired": diff,
            "top10_overlap_test_mean": float(test_overlap.mean()), "top10_overlap_test_min": float(test_overlap.min()),
            "top10_overlap_train_mean": float(train_overlap.mean()),
            "top10_overlap_train_min": float(train_overlap.min()),
        })
        say(f"{b}: cosine mean {cos.mean():.4f} min {cos.min():.4f}; nDCG@10 {rows[b]['ndcg10_minus_torch']:+.4f}; "
            f"top-10 overlap test {test_overlap.mean():.3f} train {train_overlap.mean():.3f}")
    # backends measured in an earlier run against the same torch build are kept beside this run's
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = {b: r for b, r in earlier.get("backends", {}).items()
            if b not in rows and earlier.get("passages") == len(ref) and earlier.get("build_flags") == FLAGS}
    for r in rows.values():
        r["date"] = time.strftime("%Y-%m-%d")
    report = {"benchmark": "backend_quality", "date": time.strftime("%Y-%m-%d"), "collection": "SciFact test",
              "passages": len(ref), "test_queries": len(qids), "train_queries": len(train_texts),
              "encoder": ref.manifest["encoder"]["model"], "build_flags": FLAGS, "backends": {**rows, **kept}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    write_readme_table("backend_quality", table(report))
    return 0


def table(report) -> str:
    lines = ["| backend | nDCG@10 (Δ torch) | cosine to torch: mean / min | top-10 overlap test: mean / min "
             "| train: mean / min |", "|---|---|---|---|---|"]
    for b, r in report["backends"].items():
        if b == "torch":
            lines.append(f"| torch | {r['nDCG@10']:.4f} | 1 | 1 | 1 |")
            continue
        lines.append(f"| {b} | {r['nDCG@10']:.4f} ({r['ndcg10_minus_torch']:+.4f}) | {r['cosine_mean']:.4f} / "
                     f"{r['cosine_min']:.4f} | {r['top10_overlap_test_mean']:.3f} / {r['top10_overlap_test_min']:.1f} "
                     f"| {r['top10_overlap_train_mean']:.3f} / {r['top10_overlap_train_min']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
