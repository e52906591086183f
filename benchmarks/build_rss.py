"""Peak RSS of `relm build` on the 10% sample and on the full corpus, one backend, side by side (issue 17).

The memory half of build_throughput.py without its raw encodes: for each round, one whole `relm build`
process per size (sample first, then full), peak RSS from the kernel (`wait4`), the RSS trajectory every
2 s, and the ratio full / sample. Results: benchmarks/results/build_rss.json.

    python benchmarks/build_rss.py --backend openvino-bf16 --threads 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from build_throughput import DEFAULT_CORPUS, relm_build, sample_corpus  # benchmarks/ is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "build_rss.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not args.corpus.is_dir():
        sys.exit(f"corpus directory {args.corpus} not found; pass --corpus or set RELM_SHARED_DATA")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs: dict[str, list[dict]] = {"sample": [], "full": []}
    with tempfile.TemporaryDirectory(prefix="relm-rss-") as tmp:
        tmp = Path(tmp)
        corpora = {"sample": sample_corpus(args.corpus, args.fraction, tmp / "sample"), "full": args.corpus}
        for r in range(args.rounds):
            for size, corpus in corpora.items():
                print(f"round {r + 1}/{args.rounds}: {size} (load {os.getloadavg()[0]:.1f}) ...", file=sys.stderr,
                      flush=True)
                run = relm_build(corpus, tmp / f"ds-{size}", args.batch_size, args.backend)
                runs[size].append(run)
                print(json.dumps({"size": size, "peak_rss_mb": run["peak_rss_mb"], "wall_s": run["wall_s"],
                                  "passages": run["passages"]}), file=sys.stderr, flush=True)
    peak = {size: statistics.median(r["peak_rss_mb"] for r in rs) for size, rs in runs.items()}
    result = {"benchmark": "build_rss", "date": time.strftime("%Y-%m-%d"), "backend": args.backend,
              "threads": args.threads, "batch_size": args.batch_size,
              "passages": {size: rs[0]["passages"] for size, rs in runs.items()},
              "peak_rss_mb": peak, "full_over_sample": peak["full"] / peak["sample"], "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| backend | sample peak RSS MB | full peak RSS MB | full / sample |\n|---|---|---|---|\n"
          f"| {args.backend} | {peak['sample']:.0f} | {peak['full']:.0f} | {result['full_over_sample']:.3f} |")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
