"""ANN indexes: relm vs raw faiss, same factories, knobs and queries, in one run.

Datasets:
  (a) synthetic: --n (default 1,000,000) seeded clustered 384-d float16 vectors, generated in blocks and
      written as a datastore under --cache-dir (reused when present); queries are --queries held-out
      vectors drawn from the same clusters (not in the index).
  (b) corpus: the real embeddings of the shared corpus datastore (--datastore, default
      benchmarks/.cache/corpus-ds; skipped with a message when missing); queries are seeded passages,
      each query's own passage removed from the exact and approximate lists.

For flat, HNSW32, IVF-PQ, IVF-HNSW-PQ and OPQ-IVF-PQ (presets sized for n), a few knob settings each
(refine included) plus, for the PQ indexes, the setting `tune_ann_index` picks for recall@10 ≥ 0.95:
  build time   relm: build_ann_index from the memory-mapped shards (sample, train, add in blocks, save);
               raw: faiss index_factory, train on the same sample, add all float32 vectors, write_index
  bytes/vector relm's index.faiss over n (the float16 vectors refine reads are the datastore's own)
  recall@10    against exact search, relm and raw separately (they should agree)
  queries/s    batched (all queries in one call) and single (one query per call), relm and raw taken
               pair by pair (relm, raw, relm, raw, ...) over --repeats; overhead = raw q/s / relm q/s - 1
Raw faiss sets knobs with ParameterSpace; raw refine is faiss IndexRefine over an SQfp16 copy of the
same float16 vectors (k_factor = refine_factor); relm's refined rows use the same in-RAM copy
(AnnIndex.open(refine_in_memory=True)), and the default refine from the memory-mapped shards is
timed beside them (batched, last column).

    python benchmarks/ann_bench.py                     # 1M synthetic + corpus (see README for the duration)
    python benchmarks/ann_bench.py --n 50000 --queries 500 --repeats 2     # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

from relm import Datastore
from relm.retrieval import AnnConfig, AnnIndex, build_ann_index, exact_search, tune_ann_index
from relm.retrieval.ann_tune import drop_self, recall_at_k
from relm.retrieval.indexes import index_dir
from relm.retrieval.planner import default_train_size
from relm.retrieval.synthetic import clustered_vectors, write_vector_datastore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ann_bench.json"
README = HERE / "README.md"
DEFAULT_DS = HERE / ".cache" / "corpus-ds"
K = 10
TARGET = {"recall@10": 0.95, "qps_batched": 2000, "bytes_per_vector": 80, "n": 1_000_000}

PQ_ROWS = [{"nprobe": 16, "refine_factor": 0}, {"nprobe": 32, "refine_factor": 4}, {"nprobe": 64, "refine_factor": 8}]
CONFIGS = {  # preset -> knob settings measured (plus the tuned one for PQ presets)
    "flat": [{}],
    "hnsw": [{"ef_search": 64}, {"ef_search": 256}],
    "ivfpq": PQ_ROWS,
    "ivf-hnsw-pq": [{**r, "ef_search": max(64, r["nprobe"])} for r in PQ_ROWS],
    "opq-ivfpq": PQ_ROWS,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data -------------------------------------------------------------------------------------------
def synthetic(args) -> tuple[Datastore, np.ndarray, None]:
    gen = dict(n_clusters=args.clusters, latent_dim=args.latent_dim or None, seed=args.seed)
    root = args.cache_dir / f"ann-synthetic-n{args.n}-d{args.dim}-c{args.clusters}-l{args.latent_dim}-s{args.seed}"
    if not (root / "manifest.json").exists():
        log(f"writing {args.n:,} synthetic vectors to {root}")
        write_vector_datastore(root, clustered_vectors(args.n, args.dim, stream=1, **gen), args.dim)
    queries = np.concatenate(list(clustered_vectors(args.queries, args.dim, stream=2, **gen))).astype(np.float32)
    return Datastore.open(root), queries, None


def corpus(args) -> tuple[Datastore, np.ndarray, np.ndarray] | None:
    if not (args.datastore / "manifest.json").exists():
        log(f"no datastore at {args.datastore}: skipping the corpus part (build one with "
            f"`relm build ../shared/data/corpus --out {args.datastore}` or pass --datastore)")
        return None
    ds = Datastore.open(args.datastore)
    rng = np.random.default_rng(args.seed)
    ids = np.sort(rng.choice(len(ds), size=min(args.queries, len(ds)), replace=False))
    return ds, ds.embeddings(ids).astype(np.float32), ids


def all_vectors(ds) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32) for _, v in ds.embedding_shards])


# -- raw faiss --------------------------------------------------------------------------------------
def raw_build(ds, xb: np.ndarray, factory: str, seed: int, path: Path) -> tuple[faiss.Index, float]:
    """The same index with faiss alone: same factory, seeds and training sample; vectors from RAM."""
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    t0 = time.perf_counter()
    if not index.is_trained:
        size = default_train_size(len(xb), ivf.nlist if ivf is not None else None, "PQ" in factory)
        ids = np.sort(np.random.default_rng(seed).choice(len(xb), size=size, replace=False))
        if ivf is not None:
            ivf.cp.seed = seed
            sub = faiss.downcast_index(ivf)
            if hasattr(sub, "pq"):
                sub.pq.cp.seed = seed
        index.train(xb[ids])
    index.add(xb)
    faiss.write_index(index, str(path))
    return index, time.perf_counter() - t0


def raw_setter(index, knobs: dict, refine: faiss.Index | None):
    """The raw index to search with `knobs` applied the faiss way (ParameterSpace, IndexRefine)."""
    ps = faiss.ParameterSpace()
    if "nprobe" in knobs:
        ps.set_index_parameter(index, "nprobe", knobs["nprobe"])
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            ps.set_index_parameter(index, "quantizer_efSearch", max(knobs.get("ef_search", 64), knobs["nprobe"]))
    elif "ef_search" in knobs:
        ps.set_index_parameter(index, "efSearch", knobs["ef_search"])
    r = knobs.get("refine_factor", 0)
    if not r:
        return index
    wrapped = faiss.IndexRefine(index, refine)
    wrapped.k_factor = r  # (the caller keeps `index` and `refine` alive: the wrapper does not own them)
    return wrapped


# -- measuring --------------------------------------------------------------------------------------
def recall10(ids: np.ndarray, truth: np.ndarray, self_ids) -> float:
    if self_ids is not None:
        ids = drop_self(np.zeros(ids.shape, np.float32), ids, self_ids, K)[1]
    return recall_at_k(ids, truth, K)


def time_batched(fn, q, k) -> tuple[float, np.ndarray]:
    """(queries/s, result ids) of one call with every query."""
    t0 = time.perf_counter()
    _, ids = fn(q, k)
    return len(q) / (time.perf_counter() - t0), ids


def time_single(fn, q, k) -> float:
    t0 = time.perf_counter()
    for row in q:
        fn(row[None, :], k)
    return len(q) / (time.perf_counter() - t0)


def single_count(fn, q, k, budget_s: float, cap: int) -> int:
    """How many single queries fit the time budget (at least 10), measured on relm's side."""
    t0 = time.perf_counter()
    for n, row in enumerate(q[:cap], 1):
        fn(row[None, :], k)
        if time.perf_counter() - t0 > budget_s and n >= 10:
            return n
    return min(cap, len(q))


def measure_pair(relm_fn, raw_fn, q, k, repeats: int, n_single: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Timings, relm's result ids, raw's result ids (from the first batched runs)."""
    relm_b, raw_b, relm_s, raw_s = [], [], [], []
    for _ in range(repeats):  # pair by pair, so drift on a shared machine cancels out of the ratios
        qps, relm_ids = time_batched(relm_fn, q, k)
        relm_b.append(qps)
        qps, raw_ids = time_batched(raw_fn, q, k)
        raw_b.append(qps)
        relm_s.append(time_single(relm_fn, q[:n_single], k))
        raw_s.append(time_single(raw_fn, q[:n_single], k))
    timing = {
        "qps_batched": statistics.median(relm_b),
        "raw_qps_batched": statistics.median(raw_b),
        "overhead_batched": statistics.median(r / m - 1 for m, r in zip(relm_b, raw_b, strict=True)),
        "qps_single": statistics.median(relm_s),
        "raw_qps_single": statistics.median(raw_s),
        "overhead_single": statistics.median(r / m - 1 for m, r in zip(relm_s, raw_s, strict=True)),
        "n_single": n_single,
    }
    return timing, relm_ids, raw_ids


def bench_dataset(label: str, ds, queries, self_ids, args, previous: dict | None, save) -> dict:
    """Every preset on one dataset; `save(result)` after each preset, so a killed run keeps what it
    measured and `--resume` skips the presets in `previous` (the same dataset from an earlier run)."""
    n, d = len(ds), ds.dim
    kq = K + (self_ids is not None)  # one more when the query's own passage is in the index
    log(f"[{label}] {n:,} x {d}: exact ground truth for {len(queries)} queries")
    t0 = time.perf_counter()
    ts, ti = exact_search(queries, ds.embedding_shards, kq)
    exact_qps = len(queries) / (time.perf_counter() - t0)
    truth = drop_self(ts, ti, self_ids, K)[1] if self_ids is not None else ti
    log(f"[{label}] loading {n:,} vectors as float32 for raw faiss")
    xb = all_vectors(ds)
    refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    refine.add(xb)
    done = set(previous["done_presets"]) & set(args.presets) if previous else set()
    rows = [r for r in previous["rows"] if r["preset"] in done] if previous else []
    result = {"dataset": label, "n": n, "dim": d, "n_queries": len(queries), "exact_qps_batched": exact_qps,
              "rows": rows, "done_presets": sorted(done)}
    tmp = Path(tempfile.mkdtemp(prefix="relm-ann-bench-"))
    try:
        for preset in args.presets:
            if preset in done:
                log(f"[{label}] {preset}: measured in {args.out}; skipped (--resume)")
                continue
            name = f"bench-{preset}"
            try:
                bench_preset(label, ds, name, preset, queries, truth, self_ids, xb, refine, tmp, rows, args)
            finally:
                if not args.keep_indexes:
                    shutil.rmtree(index_dir(ds, name), ignore_errors=True)
            result["done_presets"].append(preset)
            save(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def bench_preset(label, ds, name, preset, queries, truth, self_ids, xb, refine, tmp, rows, args) -> None:
    """Build one preset with relm and raw faiss, then measure each knob setting; rows are appended."""
    n, d = len(ds), ds.dim
    kq = K + (self_ids is not None)
    log(f"[{label}] {preset}: relm build")
    t0 = time.perf_counter()
    index = build_ann_index(ds, name, AnnConfig(preset, seed=args.seed), overwrite=True,
                            show_progress=args.progress)
    relm_build_s = time.perf_counter() - t0
    factory = index.config["factory"]
    size = (index_dir(ds, name) / "index.faiss").stat().st_size
    if args.raw_build:
        log(f"[{label}] {preset}: {factory} built in {relm_build_s:.1f}s; raw faiss build")
        raw, raw_build_s = raw_build(ds, xb, factory, args.seed, tmp / "raw.faiss")
    else:  # raw faiss searches relm's index file, read into RAM
        raw, raw_build_s = faiss.read_index(str(index_dir(ds, name) / "index.faiss")), None
    settings = [dict(s) for s in CONFIGS[preset]]
    if index.structure["ivf"] and args.tune:
        log(f"[{label}] {preset}: tuning for recall@10 >= {TARGET['recall@10']}")
        tuned = tune_ann_index(ds, name, target_recall=TARGET["recall@10"], k=K,
                               n_queries=min(1000, n), seed=args.seed + 1)
        knobs = {key: tuned["chosen"][key] for key in ("nprobe", "ef_search", "refine_factor")
                 if key in tuned["chosen"]}
        settings.append({**knobs, "tuned": True})
        index = AnnIndex.open(ds, name)
    # refine like raw faiss does, from an in-RAM float16 copy; the memory-mapped refine is timed beside it
    in_ram = AnnIndex.open(ds, name, refine_in_memory=True)
    for setting in settings:
        knobs = {key: v for key, v in setting.items() if key != "tuned"}
        raw_index = raw_setter(raw, knobs, refine)
        refined = bool(knobs.get("refine_factor"))

        def relm_fn(q, k, knobs=knobs, index=in_ram if refined else index):
            return index.search(q, k, **knobs)

        relm_fn(queries[:64], kq)  # warm-up: page cache and thread pool
        raw_index.search(queries[:64], kq)
        n_single = single_count(relm_fn, queries, kq, args.single_seconds, args.single_cap)
        timing, relm_ids, raw_ids = measure_pair(relm_fn, raw_index.search, queries, kq, args.repeats,
                                                 n_single)
        if refined:
            mapped = [time_batched(lambda q, k, knobs=knobs: index.search(q, k, **knobs), queries, kq)[0]
                      for _ in range(args.repeats)]
            timing["qps_batched_memmap_refine"] = statistics.median(mapped)
        row = {
            "dataset": label, "n": n, "dim": d, "preset": preset, "factory": factory, "knobs": knobs,
            "tuned": bool(setting.get("tuned")), "load_mode": index.load_mode,
            "refine_from": "memory" if refined else None,
            "build_s": relm_build_s, "raw_build_s": raw_build_s,
            "build_stages_s": index.config["build"]["seconds"],
            "index_bytes": size, "bytes_per_vector": size / n,
            "recall@10": recall10(relm_ids, truth, self_ids),
            "raw_recall@10": recall10(raw_ids, truth, self_ids),
            **timing,
        }
        rows.append(row)
        log(f"[{label}] {preset} {knobs}: recall@10 {row['recall@10']:.3f} "
            f"q/s {row['qps_batched']:,.0f} (raw {row['raw_qps_batched']:,.0f}), "
            f"single {row['qps_single']:,.0f} (raw {row['raw_qps_single']:,.0f})")


# -- report -----------------------------------------------------------------------------------------
def knob_text(knobs: dict, tuned: bool) -> str:
    short = {"nprobe": "nprobe", "ef_search": "ef", "refine_factor": "refine"}
    text = " ".join(f"{short[k]}={v}" for k, v in knobs.items() if not (k == "refine_factor" and v == 0))
    return (text or "-") + (" (tuned)" if tuned else "")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def table(datasets: list[dict]) -> str:
    head = ("| data | index | knobs | build s relm / raw | bytes/vec | recall@10 relm / raw "
            "| q/s batched relm / raw | q/s single relm / raw | overhead batched / single "
            "| q/s batched, refine from memmap |")
    lines = [head, "|" + "---|" * 10]
    for dsr in datasets:
        lines.append(f"| {dsr['dataset']} ({dsr['n']:,} x {dsr['dim']}) | exact (numpy, float16 memmap) | - | - "
                     f"| {2 * dsr['dim']} | 1.000 | {dsr['exact_qps_batched']:,.0f} | - | - | - |")
        for r in dsr["rows"]:
            mm = r.get("qps_batched_memmap_refine", float("nan"))
            lines.append(
                f"| {r['dataset']} | {r['factory']} | {knob_text(r['knobs'], r['tuned'])} "
                f"| {r['build_s']:,.1f} / {seconds(r['raw_build_s'])} | {r['bytes_per_vector']:,.1f} "
                f"| {r['recall@10']:.3f} / {r['raw_recall@10']:.3f} "
                f"| {r['qps_batched']:,.0f} / {r['raw_qps_batched']:,.0f} "
                f"| {r['qps_single']:,.0f} / {r['raw_qps_single']:,.0f} "
                f"| {r['overhead_batched']:+.1%} / {r['overhead_single']:+.1%} "
                f"| {mm:,.0f} |".replace("| nan |", "| - |")
            )
    return "\n".join(lines)


def target_line(datasets: list[dict]) -> str:
    t = TARGET
    rows = [r for d in datasets if d["dataset"] == "synthetic" for r in d["rows"]]
    ok = [r for r in rows if r["recall@10"] >= t["recall@10"] and r["qps_batched"] >= t["qps_batched"]
          and r["bytes_per_vector"] <= t["bytes_per_vector"]]
    goal = (f"recall@10 ≥ {t['recall@10']} at ≥ {t['qps_batched']:,} q/s batched and ≤ {t['bytes_per_vector']} "
            f"bytes/vector at {t['n']:,}")
    n = rows[0]["n"] if rows else 0
    scale = "" if n >= t["n"] else f" (this run: {n:,} vectors, so indicative only)"
    if ok:
        best = max(ok, key=lambda r: r["qps_batched"])
        return (f"Target ({goal}): **met**{scale} by {best['factory']} {knob_text(best['knobs'], best['tuned'])}: "
                f"recall@10 {best['recall@10']:.3f}, {best['qps_batched']:,.0f} q/s, "
                f"{best['bytes_per_vector']:.1f} bytes/vector.")
    return f"Target ({goal}): **not met**{scale}."


def overhead_line(datasets: list[dict]) -> str:
    rows = [r for d in datasets for r in d["rows"]]
    if not rows:
        return ""
    b = statistics.median(r["overhead_batched"] for r in rows)
    s = statistics.median(r["overhead_single"] for r in rows)
    worst = max(rows, key=lambda r: r["overhead_batched"])
    return (f"relm overhead over raw faiss (median over rows; target ≤ 5%): batched {b:+.1%}, single {s:+.1%}; "
            f"worst batched {worst['overhead_batched']:+.1%} ({worst['factory']} "
            f"{knob_text(worst['knobs'], worst['tuned'])}).")




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=1024, help="synthetic clusters")
    p.add_argument("--latent-dim", type=int, default=48,
                   help="synthetic clusters live in this many dimensions (0: isotropic in all --dim)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datastore", type=Path, default=DEFAULT_DS, help="the corpus datastore for part (b)")
    p.add_argument("--parts", default="synthetic,corpus", help="comma list of: synthetic, corpus")
    p.add_argument("--presets", default=",".join(CONFIGS), help="comma list of presets to run")
    p.add_argument("--repeats", type=int, default=3, help="relm/raw timing pairs per setting")
    p.add_argument("--single-seconds", type=float, default=2.0, help="time budget for the single-query count")
    p.add_argument("--single-cap", type=int, default=300, help="at most this many single queries")
    p.add_argument("--no-tune", dest="tune", action="store_false", help="skip the tuned row of PQ indexes")
    p.add_argument("--no-raw-build", dest="raw_build", action="store_false",
                   help="do not build each index again with raw faiss (halves the run; raw searches relm's file)")
    p.add_argument("--threads", type=int, help="faiss OpenMP threads (default: faiss's, one per core)")
    p.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    p.add_argument("--keep-indexes", action="store_true", help="keep DS/indexes/bench-* after measuring")
    p.add_argument("--resume", action="store_true",
                   help="keep the presets already measured in --out by a run with the same settings")
    p.add_argument("--progress", action="store_true", default=None, help="show build progress bars")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-readme", dest="readme", action="store_false", help="do not update benchmarks/README.md")
    args = p.parse_args()
    args.presets = [x for x in args.presets.split(",") if x]
    unknown = set(args.presets) - set(CONFIGS)
    if unknown:
        sys.exit(f"unknown presets {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    # a SIGTERM unwinds like Ctrl-C: `finally` blocks remove the bench-* indexes written into datastores
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.perf_counter()
    result = {
        "benchmark": "ann_bench",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                    "python": platform.python_version(), "faiss": faiss.__version__},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "target": TARGET,
        "datasets": [],
    }
    previous = previous_run(args) if args.resume else {}

    def save(dataset: dict) -> None:
        result["datasets"] = [d for d in result["datasets"] if d["dataset"] != dataset["dataset"]] + [dataset]
        result["seconds"] = time.perf_counter() - t_start + previous.get("_seconds", 0.0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    parts = args.parts.split(",")
    if "synthetic" in parts:
        ds, q, self_ids = synthetic(args)
        save(bench_dataset("synthetic", ds, q, self_ids, args, previous.get("synthetic"), save))
    if "corpus" in parts and (got := corpus(args)) is not None:
        save(bench_dataset("corpus", *got, args, previous.get("corpus"), save))
    result["seconds"] = time.perf_counter() - t_start + previous.get("_seconds", 0.0)
    datasets = result["datasets"]
    text = "\n\n".join(x for x in (table(datasets), target_line(datasets), overhead_line(datasets)) if x)
    text += (f"\n\n`{' '.join(['python', 'benchmarks/ann_bench.py', *sys.argv[1:]])}`, {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} cores, faiss {faiss.__version__}, {result['seconds'] / 60:.0f} min.")
    print(text)
    if args.readme:
        write_readme_table("ann_bench", text)
    log(f"saved {args.out} ({result['seconds'] / 60:.1f} min)")


def previous_run(args) -> dict:
    """Datasets of an earlier run with the same data settings in --out, for --resume."""
    if not args.out.exists():
        return {}
    old = json.loads(args.out.read_text())
    same = ("n", "dim", "clusters", "latent_dim", "queries", "seed", "datastore", "repeats", "raw_build")
    if any(old["args"].get(key) != (str(v) if isinstance(v := getattr(args, key), Path) else v) for key in same):
        log(f"{args.out} was measured with other settings; starting afresh")
        return {}
    return {d["dataset"]: d for d in old["datasets"]} | {"_seconds": old.get("seconds", 0.0)}


if __name__ == "__main__":
    main()
