"""Retrieval quality on real test collections: BEIR SciFact (nDCG@10, Recall@100) and SQuAD v1.1 dev
(a gold answer in the top 5), every relm retriever side by side in one run, beside the published figures.

SciFact (../shared/data/external/scifact: 5,183 abstracts; 300 test queries with the BEIR qrels; 809
train queries with their own qrels) is built four ways, with and without titles prepended and with the
old (256 words, `--max-tokens none`) and the new default chunking (passages fitted to the encoder's 256
wordpieces). On each datastore, all through `relm.Retriever`:

  exact            exact dense search over the float16 vectors (all-MiniLM-L6-v2)
  bm25             bm25s with its defaults (Lucene, k1 1.5, b 0.75, English stopwords and stemmer)
  bm25-tuned       k1, b chosen on the train split
  hybrid-*         rrf, interpolate and hierarchical fusion, each with its settings (rrf_k or alpha,
                   candidates, BM25 k1/b) chosen on the train split, never the test queries
  ann-<preset>     each faiss preset (on the first variant and SQuAD; --other-presets, hnsw, on the rest)
                   tuned to recall@100 0.95 against exact search on the train queries
                   (`relm index --factory P --tune --target-recall 0.95 --tune-k 100 --queries train`)

Passage hits (k=100) become document runs by MaxP (`relm.eval.retrieval.doc_run`), scored by ir-measures.
"best hybrid" is the fusion with the best *train* nDCG@10; it is compared with exact and BM25 query by
query (paired bootstrap of the mean difference). queries/s include query encoding (median of --repeats).

SQuAD (2,067 paragraphs with titles, 10,570 questions): the share of questions with a gold answer,
SQuAD-normalized, in one of the top-5 passages, for every retriever (hybrid settings: the SciFact-train
choice; ANN presets tuned as above).

    python benchmarks/beir_bench.py                       # ~1 hour on 2 cores, most of it building
    python benchmarks/beir_bench.py --variants titles-new --squad-queries 2000   # a quicker look

Datastores and indexes are cached under --work (benchmarks/.cache/beir) and reused when their build
flags match. Results: benchmarks/results/beir_bench.json and a table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RELM_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "external"
SCIFACT, SQUAD = SHARED / "scifact", SHARED / "squad-v1.1-dev"
RESULTS = HERE / "results" / "beir_bench.json"

# name -> extra `relm build` flags (all build with --id-field id)
VARIANTS = {
    "titles-new": ["--title-field", "title"],
    "titles-old": ["--title-field", "title", "--max-tokens", "none"],
    "notitles-new": [],
    "notitles-old": ["--max-tokens", "none"],
}
PRESETS = ("hnsw", "ivfpq", "ivf-hnsw-pq", "opq-ivfpq")
K = 100
BM25_GRID = [(k1, b) for k1 in (0.9, 1.5, 2.0) for b in (0.5, 0.75, 0.9)]
CANDIDATES = (100, 200)  # >= K, so a hybrid's candidate count is its own setting
RRF_KS = (10, 30, 60)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7)
# Published SciFact figures (nDCG@10, R@100) quoted by issue 12.
PUBLISHED = {
    "exact": ("all-MiniLM-L6-v2, MTEB paper results", 0.64508, 0.925),
    "bm25": ("BM25, Anserini BEIR regressions (flat)", 0.6789, 0.9253),
    "bm25 multifield": ("BM25, Anserini BEIR regressions (multifield)", 0.6647, 0.9076),
}
TARGETS = {"exact": 0.640, "bm25": 0.679, "best hybrid": 0.72, "ann within exact": 0.01}


def say(msg: str) -> None:
    print(f"[beir_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def relm(*args: str) -> None:
    cmd = [sys.executable, "-m", "relm", *args]
    say(" ".join(cmd[2:]))
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# -- datastores and indexes ---------------------------------------------------------------------------

def ensure_datastore(out: Path, corpus: Path, flags: list[str]) -> Path:
    """Build (or reuse, when built with the same flags) a datastore of `corpus`."""
    stamp = out.parent / f"{out.name}.flags.json"
    want = {"corpus": str(corpus), "flags": flags}
    if (out / "manifest.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    relm("build", str(corpus), "--out", str(out), "--id-field", "id", "--overwrite", *flags)
    stamp.write_text(json.dumps(want))
    return out


def ensure_index(ds: Path, name: str, flags: list[str]) -> str:
    stamp = ds / "indexes" / name / "bench.flags.json"
    if stamp.exists() and json.loads(stamp.read_text()) == flags:
        return name
    relm("index", str(ds), "--name", name, "--overwrite", *flags)
    stamp.write_text(json.dumps(flags))
    return name


def bm25_name(k1: float, b: float) -> str:
    return f"bm25-k{k1:g}-b{b:g}"


def ensure_bm25(ds: Path, k1: float, b: float) -> str:
    return ensure_index(ds, bm25_name(k1, b), ["--bm25", "--k1", str(k1), "--b", str(b)])


def ensure_ann(ds: Path, preset: str, tune_queries: Path | None) -> str:
    """A faiss preset tuned to recall@100 0.95 against exact search, on queries that are not the test
    queries (SciFact's train split; None: the datastore's own passages, relm's fallback)."""
    extra = ["--queries", str(tune_queries)] if tune_queries else []
    return ensure_index(ds, f"ann-{preset}", ["--factory", preset, "--tune", "--target-recall", "0.95",
                                              "--tune-k", str(K), *extra])


# -- queries, runs and scores --------------------------------------------------------------------------

def judged_queries(queries: Path, qrels_path: Path):
    from relm.corpus.queries import read_queries
    from relm.eval.retrieval import read_qrels

    qrels = read_qrels(qrels_path)
    pairs = [(q, t) for q, t in read_queries(str(queries)) if q in qrels]
    return [q for q, _ in pairs], [t for _, t in pairs], qrels


def timed_search(retriever, texts: list[str], k: int, repeats: int):
    """(scores, ids, median queries/s) of `repeats` searches of all texts (the same results each time)."""
    from relm.retrieval.options import SearchOptions

    rates, out = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = retriever.search_ids(texts, SearchOptions(k=k))
        rates.append(len(texts) / max(time.perf_counter() - t0, 1e-9))
    return np.asarray(out[0]), np.asarray(out[1]), statistics.median(rates)


def score(ds, qids, scores, ids, qrels, metrics):
    from relm.eval.retrieval import doc_run, evaluate

    return evaluate(doc_run(ds, qids, scores, ids, "max"), qrels, metrics)


def ndcg(ds, qids, run, qrels, metrics) -> float:
    return score(ds, qids, run[0], run[1], qrels, metrics)[0]["nDCG@10"]


# -- hybrid settings chosen on the train split ----------------------------------------------------------

def tune_hybrid(ds, ds_path: Path, metrics) -> dict[str, Any]:
    """Every fusion's best settings by train nDCG@10: BM25 (k1, b) x candidates x rrf_k / alpha. The runs
    are computed once (dense to the largest candidate count, one sparse run per BM25 setting) and fused
    with relm's own fusion functions, exactly as `Retriever` fuses them at that candidate count."""
    from relm.retrieval.fusion import interpolate, rescore, rrf
    from relm.retrieval.options import RetrieverConfig
    from relm.retrieval.retriever import Retriever

    qids, texts, qrels = judged_queries(SCIFACT / "train-queries.jsonl", SCIFACT / "train-qrels.tsv")
    top = max(CANDIDATES)
    vectors = ds.encode_queries(texts)
    dense = Retriever(ds, RetrieverConfig("exact")).search_vectors(vectors, k=top)
    dense = (np.asarray(dense[0]), np.asarray(dense[1]))
    cut = lambda run, n: (run[0][:, :n], run[1][:, :n])  # noqa: E731
    trials: list[dict[str, Any]] = []
    bm25_train = {}
    for k1, b in BM25_GRID:
        name = ensure_bm25(ds_path, k1, b)
        s, i, _ = timed_search(Retriever(ds, RetrieverConfig("bm25", bm25_index=name)), texts, top, 1)
        sparse = (s, i)
        bm25_train[(k1, b)] = ndcg(ds, qids, cut(sparse, K), qrels, metrics)
        for n in CANDIDATES:
            d, sp = cut(dense, n), cut(sparse, n)
            for rk in RRF_KS:
                trials.append({"fusion": "rrf", "k1": k1, "b": b, "candidates": n, "rrf_k": rk,
                               "train_ndcg10": ndcg(ds, qids, rrf([d, sp], K, rrf_k=rk), qrels, metrics)})
            for a in ALPHAS:
                trials.append({"fusion": "interpolate", "k1": k1, "b": b, "candidates": n, "alpha": a,
                               "train_ndcg10": ndcg(ds, qids, interpolate(d, sp, K, alpha=a), qrels, metrics)})
            run = rescore(vectors, sp[1], ds.embeddings, min(K, n))
            trials.append({"fusion": "hierarchical", "k1": k1, "b": b, "candidates": n,
                           "train_ndcg10": ndcg(ds, qids, run, qrels, metrics)})
    best = {f: max((t for t in trials if t["fusion"] == f), key=lambda t: t["train_ndcg10"])
            for f in ("rrf", "interpolate", "hierarchical")}
    k1, b = max(bm25_train, key=bm25_train.get)
    say(f"train: best BM25 k1={k1} b={b} ({bm25_train[(k1, b)]:.4f}); "
        + "; ".join(f"{f} {t['train_ndcg10']:.4f}" for f, t in best.items()))
    return {"queries": len(qids), "trials": len(trials), "best": best,
            "bm25": {"k1": k1, "b": b, "train_ndcg10": bm25_train[(k1, b)]},
            "bm25_grid": [{"k1": a, "b": c, "train_ndcg10": v} for (a, c), v in bm25_train.items()]}


def hybrid_config(t: dict[str, Any]):
    from relm.retrieval.options import RetrieverConfig

    extra = {"rrf_k": t["rrf_k"]} if "rrf_k" in t else {"alpha": t["alpha"]} if "alpha" in t else {}
    return RetrieverConfig("hybrid", bm25_index=bm25_name(t["k1"], t["b"]), fusion=t["fusion"],
                           candidates=t["candidates"], **extra)


def retrievers(ds_path: Path, tuned: dict[str, Any], presets, tune_queries: Path | None) -> dict[str, Any]:
    from relm.retrieval.options import RetrieverConfig

    out = {"exact": RetrieverConfig("exact"),
           "bm25": RetrieverConfig("bm25", bm25_index=ensure_bm25(ds_path, 1.5, 0.75)),
           "bm25-tuned": RetrieverConfig("bm25", bm25_index=ensure_bm25(ds_path, tuned["bm25"]["k1"],
                                                                        tuned["bm25"]["b"])),
           "hybrid-rrf-default": RetrieverConfig("hybrid", bm25_index=bm25_name(1.5, 0.75))}
    for fusion, t in tuned["best"].items():
        out[f"hybrid-{fusion}"] = hybrid_config(t)
    for p in presets:
        out[f"ann-{p}"] = RetrieverConfig("ann", index=ensure_ann(ds_path, p, tune_queries))
    return out


# -- SciFact -----------------------------------------------------------------------------------------------

def scifact(variant: str, work: Path, presets, repeats: int, metrics) -> dict[str, Any]:
    from relm.datastore import Datastore
    from relm.eval.retrieval import paired_bootstrap
    from relm.retrieval.retriever import Retriever

    ds_path = ensure_datastore(work / f"scifact-{variant}", SCIFACT / "corpus.jsonl.gz", VARIANTS[variant])
    ds = Datastore.open(ds_path)
    tuned = tune_hybrid(ds, ds_path, metrics)
    configs = retrievers(ds_path, tuned, presets, SCIFACT / "train-queries.jsonl")
    ds = ds.reopen_if_changed()
    qids, texts, qrels = judged_queries(SCIFACT / "queries.jsonl", SCIFACT / "qrels.tsv")
    rows, per_query = {}, {}
    for name, config in configs.items():
        s, i, qps = timed_search(Retriever(ds, config), texts, K, repeats)
        agg, per_query[name] = score(ds, qids, s, i, qrels, metrics)
        rows[name] = {**agg, "queries_per_s": qps, "config": config.to_dict()}
        say(f"{variant} {name}: nDCG@10 {agg['nDCG@10']:.4f} R@100 {agg['R@100']:.4f} {qps:,.0f} q/s")
    best = "hybrid-" + max(tuned["best"], key=lambda f: tuned["best"][f]["train_ndcg10"])
    paired = lambda a, b: paired_bootstrap([per_query[a][q]["nDCG@10"] for q in qids],  # noqa: E731
                                           [per_query[b][q]["nDCG@10"] for q in qids])
    comparisons = {f"{best} - exact": paired(best, "exact"), f"{best} - bm25": paired(best, "bm25")}
    comparisons.update({f"ann-{p} - exact": paired(f"ann-{p}", "exact") for p in presets})
    return {"datastore": str(ds_path), "passages": len(ds), "documents": ds.n_documents,
            "chunker": ds.manifest.get("chunker"), "test_queries": len(qids), "tuning": tuned,
            "best_hybrid": best, "results": rows, "comparisons": comparisons}


# -- SQuAD -------------------------------------------------------------------------------------------------

def squad(work: Path, tuned: dict[str, Any], presets, n_queries: int, repeats: int) -> dict[str, Any]:
    from relm.corpus.queries import read_queries
    from relm.datastore import Datastore
    from relm.eval.answers import answer_recall
    from relm.retrieval.retriever import Retriever

    ds_path = ensure_datastore(work / "squad", SQUAD / "corpus.jsonl.gz", VARIANTS["titles-new"])
    for k1, b in {(1.5, 0.75), (tuned["bm25"]["k1"], tuned["bm25"]["b"]),
                  *((t["k1"], t["b"]) for t in tuned["best"].values())}:
        ensure_bm25(ds_path, k1, b)
    configs = retrievers(ds_path, tuned, presets, None)  # SQuAD has no train split here: tuned on its passages
    ds = Datastore.open(ds_path)
    answers = {}
    with open(SQUAD / "answers.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            answers[row["id"]] = row["answers"]
    queries = read_queries(str(SQUAD / "queries.jsonl"))
    if n_queries and n_queries < len(queries):  # a seeded sample, the same for every retriever
        pick = np.random.default_rng(0).choice(len(queries), n_queries, replace=False)
        queries = [queries[j] for j in sorted(pick)]
    texts = [t for _, t in queries]
    rows = {}
    for name, config in configs.items():
        _, ids, qps = timed_search(Retriever(ds, config), texts, 5, repeats)
        hits = [answer_recall(answers[q], ds.passages([int(i) for i in row if i >= 0]))
                for (q, _), row in zip(queries, ids, strict=True)]
        rows[name] = {"answer_in_top5": float(np.mean(hits)), "queries_per_s": qps}
        say(f"squad {name}: answer in top 5 {rows[name]['answer_in_top5']:.3f} ({qps:,.0f} q/s)")
    return {"datastore": str(ds_path), "passages": len(ds), "questions": len(texts), "results": rows}


# -- report ------------------------------------------------------------------------------------------------

def table(report: dict[str, Any]) -> str:
    variants = list(report["scifact"])
    names = list(dict.fromkeys(n for v in variants for n in report["scifact"][v]["results"]))
    head = "| retriever | " + " | ".join(f"{v} nDCG@10 / R@100 (q/s)" for v in variants)
    head += " | SQuAD answer@5 |" if report.get("squad") else " |"
    lines = [head, "|" + "---|" * (len(variants) + 1 + bool(report.get("squad")))]
    for n in names:
        cells = []
        for v in variants:
            r = report["scifact"][v]["results"].get(n)
            cells.append(f"{r['nDCG@10']:.4f} / {r['R@100']:.4f} ({r['queries_per_s']:,.0f})" if r else "-")
        line = f"| {n} | " + " | ".join(cells) + " |"
        if report.get("squad"):
            r = report["squad"]["results"].get(n)
            line += f" {r['answer_in_top5']:.3f} |" if r else " |"
        lines.append(line)
    for source, nd, rc in PUBLISHED.values():
        lines.append(f"| published: {source} | {nd:.4f} / {rc:.4f} |" + " |" * (len(variants) - 1)
                     + (" |" if report.get("squad") else ""))
    lines.append("")
    for v in variants:
        sc = report["scifact"][v]
        for c, r in sc["comparisons"].items():
            lines.append(f"- {v}: {c}: {r['mean_diff']:+.4f} nDCG@10 [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], "
                         f"p={r['p']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "beir")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--presets", default=",".join(PRESETS), help="faiss presets tuned to recall 0.95 ('' for none)")
    ap.add_argument("--other-presets", default="hnsw",
                    help="the presets for every variant after the first (the chunking/title comparison), to "
                    "bound the run's time; 'all' for --presets everywhere")
    ap.add_argument("--repeats", type=int, default=3, help="searches per retriever for the queries/s median")
    ap.add_argument("--squad-queries", type=int, default=0, help="a seeded sample of SQuAD questions (0: all)")
    ap.add_argument("--no-squad", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from relm.eval.retrieval import parse_metrics

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    presets = [p for p in args.presets.split(",") if p]
    metrics = parse_metrics("nDCG@10,R@100")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report: dict[str, Any] = {"published": PUBLISHED, "targets": TARGETS, "k": K, "scifact": {}}
    others = presets if args.other_presets == "all" else [p for p in args.other_presets.split(",") if p]
    for n, v in enumerate(variants):
        report["scifact"][v] = scifact(v, args.work, presets if n == 0 else others, args.repeats, metrics)
    if not args.no_squad:
        first = report["scifact"][variants[0]]["tuning"]
        report["squad"] = squad(args.work, first, presets, args.squad_queries, args.repeats)
        report["squad"]["hybrid_settings_from"] = f"SciFact train, {variants[0]}"
    report["seconds"] = round(time.time() - t0, 1)
    text = table(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.out == RESULTS:
        write_readme_table("beir_bench", text)
    say(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
