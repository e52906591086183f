"""relm on Ray vs one process, on this machine (issue 16).

build:  `relm build SAMPLE` vs `relm build SAMPLE --ray` on the seeded 10% corpus sample
        (build_throughput.sample_corpus), as whole processes (start-up, model load, Ray start included),
        on both cores: one Ray actor of 2 threads, and two of 1 thread; rounds with the order rotated. The
        outputs are compared byte for byte (stats.json aside) with local builds at the same thread count.
search: a sharded index of S = 1, 2, 4, 8 k-means Flat shards over seeded clustered vectors, searched
        in-process (`ShardedIndex`) and through S Ray shard actors (`RayShardedIndex`) on the same shard
        files: batched (64 queries a call) queries/s and single-query latency, alternated in pairs.

Writes benchmarks/results/ray_bench.json; prints a markdown table for docs/results.md.

    python benchmarks/ray_bench.py --pairs 3
    python benchmarks/ray_bench.py --skip-build --passages 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_throughput import DEFAULT_CORPUS, sample_corpus  # noqa: E402

RESULTS = HERE / "results" / "ray_bench.json"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "stats.json"}


BUILD_MODES = {  # name -> (extra flags, environment): every mode uses both cores
    "local": ([], {}),
    "ray 1x2": (["--ray", "--ray-cpus", "2", "--encode-actors", "1", "--threads-per-actor", "2"], {}),
    "ray 2x1": (["--ray", "--ray-cpus", "2", "--encode-actors", "2", "--threads-per-actor", "1"], {}),
}


def run_build(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_build(pairs: int, work: Path) -> dict:
    """Each mode once per round, the order rotated between rounds; then the byte checks: `ray 1x2` against
    the local build (both 2 torch threads), `ray 2x1` against a local build at 1 thread (OMP_NUM_THREADS=1),
    since torch's float sums depend on the thread count."""
    sample = sample_corpus(DEFAULT_CORPUS, 0.1, work / "sample")
    relm = [sys.executable, "-m", "relm", "build", str(sample), "--no-progress"]
    modes = list(BUILD_MODES)
    rows = []
    for p in range(pairs):
        for mode in modes[p % len(modes):] + modes[: p % len(modes)]:
            out = work / mode.replace(" ", "-")
            shutil.rmtree(out, ignore_errors=True)
            flags, env = BUILD_MODES[mode]
            before = load()
            wall = run_build(relm + ["--out", str(out), *flags], env)
            rows.append({"round": p, "mode": mode, "seconds": wall, "load_before": before, "load_after": load()})
            print(f"build round {p} {mode}: {wall:.1f} s (load {before})", flush=True)
    run_build(relm + ["--out", str(work / "local-1")], {"OMP_NUM_THREADS": "1"})
    identical = {"ray 1x2 == local (2 threads)": tree_bytes(work / "local") == tree_bytes(work / "ray-1x2"),
                 "ray 2x1 == local (1 thread)": tree_bytes(work / "local-1") == tree_bytes(work / "ray-2x1")}
    print(identical, flush=True)
    passages = json.loads((work / "local" / "manifest.json").read_text())["counts"]["passages"]
    secs = {m: {r["round"]: r["seconds"] for r in rows if r["mode"] == m} for m in modes}
    ratios = {m: [secs[m][p] / secs["local"][p] for p in range(pairs)] for m in modes if m != "local"}
    return {"passages": passages, "runs": rows, "median_seconds": {m: statistics.median(secs[m].values()) for m in modes},
            "round_ratios": ratios, "median_ratio": {m: statistics.median(r) for m, r in ratios.items()},
            "byte_identical": identical}


def bench_search(passages: int, dim: int, shard_counts: list[int], pairs: int, work: Path, threads: int) -> dict:
    import faiss
    import ray

    from relm.datastore import Datastore
    from relm.distributed import RayConfig
    from relm.distributed.search import RayShardedIndex, RayShards
    from relm.retrieval.sharding import ShardConfig, ShardedIndex, build_sharded_index
    from relm.retrieval.synthetic import clustered_vectors, write_vector_datastore

    root = write_vector_datastore(work / "vec", clustered_vectors(passages, dim, seed=0), dim)
    ds = Datastore.open(root)
    queries = next(clustered_vectors(64 * 4, dim, seed=1, stream=2)).astype(np.float32)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    shards = RayShards(RayConfig(shard_timeout_s=120, shard_threads=threads))
    faiss.omp_set_num_threads(threads)  # the in-process search gets the threads each shard actor has
    out = []
    for s in shard_counts:
        name = f"km{s}"
        build_sharded_index(ds, name, ShardConfig(by="kmeans", n_shards=s, train_size=50_000))
        local, remote = ShardedIndex.open(ds, name), RayShardedIndex.open(ds, name, shards)
        a, b = local.search(queries[:64], 10), remote.search(queries[:64], 10)
        assert (a[1] == b[1]).all(), "ray and local sharded search disagree"

        def batched(index):
            t0 = time.perf_counter()
            for i in range(0, len(queries), 64):
                index.search(queries[i:i + 64], 10)
            return len(queries) / (time.perf_counter() - t0)

        def single(index, n=20):
            times = []
            for q in queries[:n]:
                t0 = time.perf_counter()
                index.search(q[None], 10)
                times.append(time.perf_counter() - t0)
            return 1000 * statistics.median(times)

        row = {"shards": s, "load": load(), "local_qps": [], "ray_qps": [], "local_ms": [], "ray_ms": []}
        for p in range(pairs):
            for mode, index in ((("local", local), ("ray", remote)) if p % 2 == 0 else (("ray", remote), ("local", local))):
                row[f"{mode}_qps"].append(batched(index))
                row[f"{mode}_ms"].append(single(index))
        for key in ("local_qps", "ray_qps", "local_ms", "ray_ms"):
            row[key + "_median"] = statistics.median(row[key])
        row["batched_overhead"] = row["local_qps_median"] / row["ray_qps_median"] - 1
        print(f"search {s} shards: local {row['local_qps_median']:.0f} q/s {row['local_ms_median']:.2f} ms, "
              f"ray {row['ray_qps_median']:.0f} q/s {row['ray_ms_median']:.2f} ms (load {row['load']})", flush=True)
        out.append(row)
    shards.close()
    ray.shutdown()
    return {"passages": passages, "dim": dim, "queries": len(queries), "k": 10, "batch": 64, "faiss_threads": threads,
            "rows": out}


def table(results: dict) -> str:
    lines = []
    if "build" in results:
        b = results["build"]
        lines += [f"| build, 10% sample ({b['passages']:,} passages) | median s | / local (median of rounds) | rounds |",
                  "|---|---|---|---|"]
        for m, sec in b["median_seconds"].items():
            r = b["median_ratio"].get(m)
            rounds = ", ".join(f"{x:.2f}" for x in b["round_ratios"].get(m, []))
            lines.append(f"| {m} | {sec:.1f} | {'' if r is None else f'{r:.2f}'} | {rounds} |")
        lines += ["", "byte-identical: " + ", ".join(f"{k}: {v}" for k, v in b["byte_identical"].items()), ""]
    if "search" in results:
        s = results["search"]
        lines += [f"| shards ({s['passages']:,} x {s['dim']}, k {s['k']}) | local q/s (batch {s['batch']}) | ray q/s | "
                  "batched overhead | local ms (1 query) | ray ms |", "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(f"| {r['shards']} | {r['local_qps_median']:.0f} | {r['ray_qps_median']:.0f} | "
                         f"{100 * r['batched_overhead']:+.0f}% | {r['local_ms_median']:.2f} | {r['ray_ms_median']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss threads of the in-process search and of each shard actor (1: on 2 busy cores a "
                    "second OpenMP thread waits for the first)")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "note": "2 cores shared with a QA benchmark and other engineers"}
    with tempfile.TemporaryDirectory(prefix="ray_bench_") as tmp:
        if not args.skip_search:
            results["search"] = bench_search(args.passages, args.dim, [int(x) for x in args.shards.split(",")],
                                             args.pairs, Path(tmp), args.threads)
        if not args.skip_build:
            results["build"] = bench_build(args.pairs, Path(tmp))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
