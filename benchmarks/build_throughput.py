"""Datastore build throughput: raw `SentenceTransformer.encode` vs `relm build` end to end, per encoder backend.

On the shared corpus and on a seeded 10% sample of its documents, in one run, each
pair of runs alternating:

  (a) raw: the passages relm encoded (read back from the torch build: the encoder
      inputs exactly) encoded by a plain `SentenceTransformer(...).encode(...)` call
      (torch fp32); only the encode call is timed, in its own process so that its
      peak RSS is its own.
  (b) relm: `relm build CORPUS --out TMP --encoder-backend B` for each backend B as
      a whole process: start-up, model load, reading, chunking, encoding, writing
      and finalizing (the ONNX files are exported before the first timed run).

Reports passages/s and words/s of each, the ratio of each build to the raw encode
of the same pair (median over pairs), peak RSS per corpus size, bytes on disk per
passage beyond the passage text, and each backend's stored embeddings against the
torch build's (cosine per passage). Every process gets the same `--threads` (torch
via OMP_NUM_THREADS; relm gives ONNX Runtime torch's thread count). The load
average is recorded before every run. Results go to
benchmarks/results/build_throughput.json and a table into benchmarks/README.md.

    python benchmarks/build_throughput.py                    # full corpus + 10% sample, every backend
    python benchmarks/build_throughput.py --sizes sample --sample-runs 3 --threads 1
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CORPUS = Path(os.environ.get("RELM_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpus"
RESULTS = HERE / "results" / "build_throughput.json"
README = HERE / "README.md"


def sample_corpus(corpus: Path, fraction: float, out: Path, seed: int = 0) -> Path:
    """Keep each document with probability `fraction`, decided by a seeded hash of its id."""
    out.mkdir(parents=True, exist_ok=True)
    threshold = int(fraction * 2**32)
    for path in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as src, gzip.open(out / path.name, "wt", encoding="utf-8") as dst:
            for line in src:
                doc_id = json.loads(line)["id"]
                h = int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=4).digest(), "little")
                if h < threshold:
                    dst.write(line)
    return out


def run_measured(cmd: list[str]) -> tuple[float, str]:
    """Run a command; return (wall seconds, stdout). Fails loudly with its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def rss_wrapper(cmd: list[str]) -> list[str]:
    """Run cmd under a Python wrapper that prints the child's peak RSS (os.wait4) as the last line, after its
    RSS trajectory (`RSS_MB t rss` every 2 s, read from /proc: where in the run memory grows)."""
    code = (
        "import os,sys,subprocess,time;"
        "p=subprocess.Popen(sys.argv[1:]);t0=time.time();traj=[]\n"
        "while True:\n"
        "  pid,st,ru=os.wait4(p.pid,os.WNOHANG)\n"
        "  if pid: break\n"
        "  try:\n"
        "    rss=[l for l in open(f'/proc/{p.pid}/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "    traj.append(f'{time.time()-t0:.0f}:{int(rss)//1024}')\n"
        "  except (OSError,IndexError): pass\n"
        "  time.sleep(2)\n"
        "code=os.waitstatus_to_exitcode(st);"
        "print('RSS_MB',' '.join(traj),flush=True);"
        "print('PEAK_RSS_KB',ru.ru_maxrss,ru.ru_utime+ru.ru_stime,flush=True);"
        "sys.exit(code)"
    )
    return [sys.executable, "-c", code, *cmd]


def measure(cmd: list[str]) -> dict:
    wall, stdout = run_measured(rss_wrapper(cmd))
    lines = stdout.strip().splitlines()
    fields = next(x.split() for x in reversed(lines) if x.startswith("PEAK_RSS_KB"))
    traj = next(x.split()[1:] for x in reversed(lines) if x.startswith("RSS_MB"))
    return {"wall_s": wall, "peak_rss_mb": int(fields[1]) / 1024, "cpu_s": float(fields[2]),
            "rss_trajectory_s_mb": [[int(v) for v in t.split(":")] for t in traj],
            "stdout": "\n".join(x for x in lines if not x.startswith(("PEAK", "RSS_MB")))}


def raw_encode_main(args: argparse.Namespace) -> None:
    """Subprocess body of (a): the encoder inputs of a relm datastore, encoded by a plain SentenceTransformer."""
    from relm.datastore import Datastore

    ds = Datastore.open(args.datastore)
    texts = ds.passage_input_texts(range(len(ds)))
    words = int(ds.manifest["counts"]["words"])
    del ds
    from sentence_transformers import SentenceTransformer

    from relm.encoders import resolve_model_path

    model = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"passages": len(texts), "words": words, "encode_s": seconds, "encode_cpu_s": cpu,
                      "dim": int(vectors.shape[1])}))


def relm_build(corpus: Path, out: Path, batch_size: int, backend: str = "torch") -> dict:
    cmd = [sys.executable, "-m", "relm", "-q", "build", str(corpus), "--out", str(out),
           "--batch-size", str(batch_size), "--no-progress", "--overwrite", "--encoder-backend", backend]
    load = os.getloadavg()[0]
    m = measure(cmd)
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    beyond = sum(files.values()) - files["passages/text.bin"]
    groups: dict[str, int] = {}
    for name, size in files.items():
        if name != "passages/text.bin":
            key = name.split("/")[0] if "/" in name else name
            key = name if key == "passages" else key
            groups[key] = groups.get(key, 0) + size
    return {
        "backend": backend,
        "load_before": load,
        "wall_s": m["wall_s"],
        "cpu_s": m["cpu_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "rss_trajectory_s_mb": m["rss_trajectory_s_mb"],
        "passages": c["passages"],
        "words": c["words"],
        "documents": c["documents"],
        "dim": manifest["embeddings"]["dim"],
        "bytes_beyond_text_per_passage": beyond / c["passages"],
        "bytes_beyond_text_breakdown_per_passage": {k: v / c["passages"] for k, v in sorted(groups.items())},
        "disk_bytes": sum(files.values()),
        "text_bytes": files["passages/text.bin"],
        "stats": json.loads((out / "stats.json").read_text())["seconds"],
    }


def raw_encode(datastore: Path, batch_size: int) -> dict:
    load = os.getloadavg()[0]
    m = measure([sys.executable, __file__, "_raw", "--datastore", str(datastore), "--batch-size", str(batch_size)])
    r = json.loads(m["stdout"].strip().splitlines()[-1])
    return {**r, "load_before": load, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "peak_rss_mb": m["peak_rss_mb"],
            "rss_trajectory_s_mb": m["rss_trajectory_s_mb"]}


def embedding_agreement(ds_path: Path, torch_path: Path) -> dict:
    """Cosine per passage of a build's stored (float16) embeddings vs the torch build's."""
    import numpy as np

    from relm.datastore import Datastore

    a, b = Datastore.open(ds_path), Datastore.open(torch_path)
    assert len(a) == len(b), "the same passages in every build"
    cos = []
    for (_, x), (_, y) in zip(a.embedding_shards, b.embedding_shards, strict=True):
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        cos.append(np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    c = np.concatenate(cos)
    return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "cosine_p01": float(np.percentile(c, 1))}


def summarize(size: str, raws: list[dict], builds: dict[str, list[dict]], agreement: dict[str, dict]) -> dict:
    """One row per corpus size: raw torch encode and, per backend, the relm build; ratios pair by pair."""
    first = builds["torch"][0] if "torch" in builds else next(iter(builds.values()))[0]
    n, w = first["passages"], first["words"]
    assert all(r["passages"] == n for r in raws), "raw and relm must encode the same passages"
    a = [r["passages"] / r["encode_s"] for r in raws]
    med = (lambda xs: statistics.median(xs) if xs else None)  # noqa: E731 (no raw run: no ratio)
    backends = {}
    for backend, runs in builds.items():
        assert all(r["passages"] == n for r in runs), "every backend builds the same passages"
        b = [r["passages"] / r["wall_s"] for r in runs]
        ratios = [bb / aa for aa, bb in zip(a, b, strict=False)]  # pair by pair: robust to drift
        # the same ratio in CPU seconds (encode call vs whole relm process): less sensitive to a busy machine
        cpu_ratios = [r["encode_cpu_s"] / m["cpu_s"] for r, m in zip(raws, runs, strict=False)]
        backends[backend] = {
            "relm_build_passages_per_s": statistics.median(b),
            "relm_build_words_per_s": statistics.median(b) * w / n,
            "ratio_to_raw": med(ratios),
            "ratio_to_raw_runs": ratios,
            "ratio_to_raw_cpu": med(cpu_ratios),
            "ratio_to_raw_cpu_runs": cpu_ratios,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "peak_rss_mb_runs": [r["peak_rss_mb"] for r in runs],
            "stage_seconds": runs[-1]["stats"],
            "bytes_beyond_text_per_passage": runs[0]["bytes_beyond_text_per_passage"],
            **agreement.get(backend, {}),
            "runs": runs,
        }
    return {
        "size": size,
        "documents": first["documents"],
        "passages": n,
        "words": w,
        "pairs": len(raws),
        "load_median": statistics.median([r["load_before"] for r in raws]
                                         + [r["load_before"] for runs in builds.values() for r in runs]),
        "raw_encode_passages_per_s": med(a),
        "raw_encode_words_per_s": med(a) and med(a) * w / n,
        "raw_peak_rss_mb": med([r["peak_rss_mb"] for r in raws]),
        "bytes_beyond_text_per_passage": first["bytes_beyond_text_per_passage"],
        "bytes_beyond_text_breakdown_per_passage": first["bytes_beyond_text_breakdown_per_passage"],
        # what each passage costs (vector + text offset + document index), apart from per-document records
        "per_passage_array_bytes": sum(v for k, v in first["bytes_beyond_text_breakdown_per_passage"].items()
                                       if k in ("embeddings", "passages/offsets.npy", "passages/doc_index.npy")),
        "target_bytes_per_passage": 2 * first["dim"] + 16,
        "backends": backends,
        "raw_runs": raws,
    }


def table(rows: list[dict]) -> str:
    head = ("| corpus | passages | load | raw torch encode p/s | relm build | p/s | words/s | build / raw: wall (CPU) "
            "| peak RSS MB (raw) | cosine to torch: mean / min | bytes/passage beyond text |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        for i, (backend, b) in enumerate(r["backends"].items()):
            cos = f"{b['cosine_mean']:.4f} / {b['cosine_min']:.4f}" if "cosine_mean" in b else "1"
            raw = "not run" if r["raw_encode_passages_per_s"] is None else f"{r['raw_encode_passages_per_s']:.1f}"
            ratio = "" if b["ratio_to_raw"] is None else f"{b['ratio_to_raw']:.2f} ({b['ratio_to_raw_cpu']:.2f})"
            raw_rss = "" if r["raw_peak_rss_mb"] is None else f" ({r['raw_peak_rss_mb']:.0f})"
            lines.append(
                f"| {r['size'] if i == 0 else ''} | {r['passages']:,} | {r['load_median']:.1f} "
                f"| {raw} | {backend} | {b['relm_build_passages_per_s']:.1f} "
                f"| {b['relm_build_words_per_s']:,.0f} | {ratio} "
                f"| {b['peak_rss_mb']:.0f}{raw_rss} | {cos} "
                f"| {b['bytes_beyond_text_per_passage']:.1f} |"
            )
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        p = argparse.ArgumentParser()
        p.add_argument("_raw")
        p.add_argument("--datastore", required=True)
        p.add_argument("--batch-size", type=int, default=64)
        raw_encode_main(p.parse_args())
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--sizes", default="sample,full", help="comma list of: sample, full")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--backends", default="torch,onnx,onnx-int8", help="relm build --encoder-backend values")
    p.add_argument("--runs", type=int, default=1, help="pairs (raw + one build per backend) for the full corpus")
    p.add_argument("--full-backends", help="backends built on the full corpus (default: --backends; torch first)")
    p.add_argument("--no-full-raw", action="store_true",
                   help="skip the raw encode on the full corpus (builds only: their RSS against the sample's)")
    p.add_argument("--sample-runs", type=int, default=3, help="pairs for the sample (cheaper, so more)")
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads of every process")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not args.corpus.is_dir():
        sys.exit(f"corpus directory {args.corpus} not found; pass --corpus or set RELM_SHARED_DATA")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every measured process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backends = args.backends.split(",")
    assert backends[0] == "torch", "the torch build first: the raw encode reads its passages"

    rows = []
    with tempfile.TemporaryDirectory(prefix="relm-bench-") as tmp:
        tmp = Path(tmp)
        corpora = {"full": args.corpus}
        if "sample" in args.sizes:
            corpora["sample"] = sample_corpus(args.corpus, args.fraction, tmp / "sample")
        for b in backends[1:]:  # export the ONNX files once, untimed (what a first build pays once)
            from relm.config import EncoderConfig
            from relm.encoders import load_encoder

            load_encoder(EncoderConfig(backend=b))
        for size in args.sizes.split(","):
            runs = args.sample_runs if size == "sample" else args.runs
            sized = backends if size == "sample" or not args.full_backends else args.full_backends.split(",")
            with_raw = size == "sample" or not args.no_full_raw
            raws, builds = [], {b: [] for b in sized}
            out = {b: tmp / f"ds-{size}-{b}" for b in sized}
            for i in range(runs):
                # the order rotates pair by pair, so a drift of the machine's load spreads over all of them
                jobs = ["raw", *sized] if with_raw else list(sized)
                jobs = jobs[i % len(jobs):] + jobs[: i % len(jobs)]
                if i == 0 and with_raw:  # the raw encode reads the torch build's passages
                    jobs = [j for j in jobs if j != "raw"] + ["raw"]
                for job in jobs:
                    print(f"[{size}] pair {i + 1}/{runs}: {job} (load {os.getloadavg()[0]:.1f}) ...",
                          file=sys.stderr, flush=True)
                    if job == "raw":
                        raws.append(raw_encode(out["torch"], args.batch_size))
                    else:
                        builds[job].append(relm_build(corpora[size], out[job], args.batch_size, job))
                    # every finished run on the log too: a run killed later still leaves its figures
                    done = raws[-1] if job == "raw" else builds[job][-1]
                    print(json.dumps({"size": size, "pair": i + 1, "job": job,
                                      **{k: v for k, v in done.items() if k != "stats"}}), file=sys.stderr, flush=True)
            agreement = {b: embedding_agreement(out[b], out["torch"]) for b in sized[1:]}
            rows.append(summarize(f"{size} ({args.fraction:.0%})" if size == "sample" else size, raws, builds,
                                  agreement))
            save(args, rows)  # after each size, so that the sample's rows survive a full run cut short
    print(table(rows))
    write_readme_table("build_throughput", table(rows))
    print(f"saved {args.out}", file=sys.stderr)


def save(args: argparse.Namespace, rows: list[dict]) -> None:
    import platform

    import onnxruntime
    import torch

    result = {
        "benchmark": "build_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "openvino": _version("openvino")},
        "encoder": "all-MiniLM-L6-v2 (max_seq_length 256)",
        "batch_size": args.batch_size,
        "chunking": "relm build defaults: 256 words within the encoder's 254 text tokens, tail < 32 merged",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
