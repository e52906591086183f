"""Datastore build throughput: raw `SentenceTransformer.encode` vs `relm build` end to end.

On the shared corpus and on a seeded 10% sample of its documents, in one run,
alternating the two:

  (a) raw: the same passages (relm's reader and chunker, untimed) encoded by a
      plain `SentenceTransformer(...).encode(...)` call; only the encode call is
      timed, in its own process so that its peak RSS is its own.
  (b) relm: `relm build CORPUS --out TMP` as a whole process: start-up, model
      load, reading, chunking, encoding, writing and finalizing.

Reports passages/s and words/s of both, the ratio b/a, the peak RSS of both per
corpus size, and the bytes on disk per passage beyond the passage text.
Results go to benchmarks/results/build_throughput.json and a table into
benchmarks/README.md.

    python benchmarks/build_throughput.py                    # full corpus + 10% sample
    python benchmarks/build_throughput.py --sizes sample --runs 3
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
    """Run cmd under a Python wrapper that prints the child's peak RSS (os.wait4) as the last line."""
    code = (
        "import os,sys,subprocess;"
        "p=subprocess.Popen(sys.argv[1:]);"
        "_,st,ru=os.wait4(p.pid,0);"
        "code=os.waitstatus_to_exitcode(st);"
        "print('PEAK_RSS_KB',ru.ru_maxrss,ru.ru_utime+ru.ru_stime,flush=True);"
        "sys.exit(code)"
    )
    return [sys.executable, "-c", code, *cmd]


def measure(cmd: list[str]) -> dict:
    wall, stdout = run_measured(rss_wrapper(cmd))
    lines = stdout.strip().splitlines()
    fields = next(x.split() for x in reversed(lines) if x.startswith("PEAK_RSS_KB"))
    return {"wall_s": wall, "peak_rss_mb": int(fields[1]) / 1024, "cpu_s": float(fields[2]),
            "stdout": "\n".join(x for x in lines if not x.startswith("PEAK"))}


def raw_encode_main(args: argparse.Namespace) -> None:
    """Subprocess body of (a): relm's passages, encoded by a plain SentenceTransformer."""
    from relm.config import ChunkConfig, ReaderConfig
    from relm.corpus import chunk_words, read_documents, resolve_inputs

    chunk = ChunkConfig()
    texts, words = [], 0
    for doc in read_documents(resolve_inputs([args.corpus], ReaderConfig())):
        for a, b, n in chunk_words(doc.text, chunk.max_words, chunk.min_words):
            texts.append(doc.text[a:b])
            words += n
    from sentence_transformers import SentenceTransformer

    from relm.encoders import resolve_model_path

    model = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"passages": len(texts), "words": words, "encode_s": seconds, "encode_cpu_s": cpu,
                      "dim": int(vectors.shape[1])}))


def relm_build(corpus: Path, out: Path, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "relm", "-q", "build", str(corpus), "--out", str(out),
           "--batch-size", str(batch_size), "--no-progress", "--overwrite"]
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
        "wall_s": m["wall_s"],
        "cpu_s": m["cpu_s"],
        "peak_rss_mb": m["peak_rss_mb"],
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


def raw_encode(corpus: Path, batch_size: int) -> dict:
    m = measure([sys.executable, __file__, "_raw", "--corpus", str(corpus), "--batch-size", str(batch_size)])
    r = json.loads(m["stdout"].strip().splitlines()[-1])
    return {**r, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "peak_rss_mb": m["peak_rss_mb"]}


def summarize(size: str, raws: list[dict], relms: list[dict]) -> dict:
    n, w = relms[0]["passages"], relms[0]["words"]
    assert all(r["passages"] == n for r in raws), "raw and relm must encode the same passages"
    a = [r["passages"] / r["encode_s"] for r in raws]
    b = [r["passages"] / r["wall_s"] for r in relms]
    ratios = [bb / aa for aa, bb in zip(a, b, strict=True)]  # pair by pair: robust to drift
    # the same ratio in CPU seconds (encode call vs whole relm process): less sensitive to a busy machine
    cpu_ratios = [r["encode_cpu_s"] / m["cpu_s"] for r, m in zip(raws, relms, strict=True)]
    return {
        "size": size,
        "documents": relms[0]["documents"],
        "passages": n,
        "words": w,
        "runs": len(relms),
        "raw_encode_passages_per_s": statistics.median(a),
        "raw_encode_words_per_s": statistics.median(a) * w / n,
        "relm_build_passages_per_s": statistics.median(b),
        "relm_build_words_per_s": statistics.median(b) * w / n,
        "ratio_b_over_a": statistics.median(ratios),
        "ratio_b_over_a_runs": ratios,
        "ratio_b_over_a_cpu": statistics.median(cpu_ratios),
        "ratio_b_over_a_cpu_runs": cpu_ratios,
        "raw_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in raws),
        "relm_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in relms),
        "bytes_beyond_text_per_passage": relms[0]["bytes_beyond_text_per_passage"],
        "bytes_beyond_text_breakdown_per_passage": relms[0]["bytes_beyond_text_breakdown_per_passage"],
        # what each passage costs (vector + text offset + document index), apart from per-document records
        "per_passage_array_bytes": sum(v for k, v in relms[0]["bytes_beyond_text_breakdown_per_passage"].items()
                                       if k in ("embeddings", "passages/offsets.npy", "passages/doc_index.npy")),
        "target_bytes_per_passage": 2 * relms[0]["dim"] + 16,
        "relm_stage_seconds": relms[-1]["stats"],
        "raw_runs": raws,
        "relm_runs": relms,
    }


def table(rows: list[dict]) -> str:
    head = ("| corpus | docs | passages | words | raw encode p/s | relm build p/s | relm words/s | b/a wall (CPU) "
            "| peak RSS raw / relm (MB) | bytes/passage beyond text: all / per-passage arrays (target) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['documents']:,} | {r['passages']:,} | {r['words']:,} "
            f"| {r['raw_encode_passages_per_s']:.1f} | {r['relm_build_passages_per_s']:.1f} "
            f"| {r['relm_build_words_per_s']:,.0f} | {r['ratio_b_over_a']:.3f} ({r['ratio_b_over_a_cpu']:.3f}) "
            f"| {r['raw_peak_rss_mb']:.0f} / {r['relm_peak_rss_mb']:.0f} "
            f"| {r['bytes_beyond_text_per_passage']:.1f} / {r['per_passage_array_bytes']:.1f} "
            f"({r['target_bytes_per_passage']}) |"
        )
    return "\n".join(lines)




def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        p = argparse.ArgumentParser()
        p.add_argument("_raw")
        p.add_argument("--corpus", required=True)
        p.add_argument("--batch-size", type=int, default=64)
        raw_encode_main(p.parse_args())
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--sizes", default="sample,full", help="comma list of: sample, full")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=1, help="alternating (a, b) pairs per size")
    p.add_argument("--sample-runs", type=int, default=3, help="pairs for the sample (cheaper, so more)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not args.corpus.is_dir():
        sys.exit(f"corpus directory {args.corpus} not found; pass --corpus or set RELM_SHARED_DATA")

    rows = []
    with tempfile.TemporaryDirectory(prefix="relm-bench-") as tmp:
        tmp = Path(tmp)
        corpora = {"full": args.corpus}
        if "sample" in args.sizes:
            corpora["sample"] = sample_corpus(args.corpus, args.fraction, tmp / "sample")
        for size in args.sizes.split(","):
            runs = args.sample_runs if size == "sample" else args.runs
            raws, relms = [], []
            for i in range(runs):
                print(f"[{size}] run {i + 1}/{runs}: raw encode ...", file=sys.stderr, flush=True)
                raws.append(raw_encode(corpora[size], args.batch_size))
                print(f"[{size}] run {i + 1}/{runs}: relm build ...", file=sys.stderr, flush=True)
                relms.append(relm_build(corpora[size], tmp / f"ds-{size}", args.batch_size))
            rows.append(summarize(f"{size} ({args.fraction:.0%})" if size == "sample" else size, raws, relms))
    import platform

    import torch

    result = {
        "benchmark": "build_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "encoder": "all-MiniLM-L6-v2 (max_seq_length 256)",
        "batch_size": args.batch_size,
        "chunking": "256 words, tail < 32 merged",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    write_readme_table("build_throughput", table(rows))
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
