"""Encoder throughput per backend on the same passages, interleaved round by round (issue 17).

The encode step is 99% of a CPU build (benchmarks/results/build_throughput.json), so this times it alone,
in one process, on a seeded sample of the shared corpus's passages as relm cuts them (a torch build of
the 10% sample, read back: the encoder inputs exactly):

  raw        SentenceTransformer(...).encode(texts) (torch fp32), what a user would write
  torch      relm's encoder, --encoder-backend torch
  onnx       --encoder-backend onnx (ONNX Runtime fp32)
  onnx-int8  --encoder-backend onnx-int8 (dynamic int8)
  openvino   --encoder-backend openvino (OpenVINO fp32)
  openvino-bf16  --encoder-backend openvino-bf16 (OpenVINO, bf16 arithmetic on AMX / AVX512-BF16)
  openvino-int8  --encoder-backend openvino-int8 (OpenVINO, static int8 by NNCF, shipped calibration set)

Each round encodes all passages with every encoder, in a rotated order; CPU seconds (process time, one
thread) and wall seconds are recorded per (round, encoder); the medians and each encoder's ratio to raw
within the same round are reported, with the load average. CPU time is what to read on a shared machine:
wall time also counts the other processes.

    OMP_NUM_THREADS=1 python benchmarks/encoder_backends.py --datastore DS --passages 256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "encoder_backends.json"


def load(name: str):
    if name == "raw":
        from sentence_transformers import SentenceTransformer

        from relm.encoders import resolve_model_path

        model = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
        return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    from relm.config import EncoderConfig
    from relm.encoders import load_encoder

    enc = load_encoder(EncoderConfig(backend=name))
    return lambda texts: enc.encode(texts, batch_size=64, normalize=True)


def main(argv=None) -> int:
    import torch

    from relm.datastore import Datastore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datastore", type=Path, required=True, help="a relm datastore whose passages are encoded")
    ap.add_argument("--passages", type=int, default=256, help="a seeded sample of this many passages")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--encoders", default="raw,torch,onnx,onnx-int8,openvino,openvino-bf16,openvino-int8")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    ds = Datastore.open(args.datastore)
    ids = np.sort(np.random.default_rng(0).choice(len(ds), size=min(args.passages, len(ds)), replace=False))
    texts = ds.passage_input_texts(ids)
    words = sum(len(t.split()) for t in texts)
    names = args.encoders.split(",")
    encoders = {n: load(n) for n in names}
    for fn in encoders.values():
        fn(texts[:64])  # warm-up: first-call allocations, ONNX Runtime's arena
    rounds, vectors = [], {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        row = {"order": order, "load": os.getloadavg()[0]}
        for n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            vectors[n] = fn_out = encoders[n](texts)
            row[n] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            assert fn_out.shape[0] == len(texts)
        rounds.append(row)
        print(json.dumps({n: round(row[n]["cpu_s"], 1) for n in names} | {"load": row["load"]}), flush=True)
    ref = vectors["raw"] if "raw" in vectors else vectors[names[0]]
    summary = {}
    for n in names:
        cpu = [row[n]["cpu_s"] for row in rounds]
        wall = [row[n]["wall_s"] for row in rounds]
        cos = np.sum(vectors[n] * ref, axis=1)
        summary[n] = {
            "passages_per_cpu_s": len(texts) / statistics.median(cpu),
            "passages_per_wall_s": len(texts) / statistics.median(wall),
            "speedup_vs_raw_cpu": statistics.median(row["raw"]["cpu_s"] / row[n]["cpu_s"] for row in rounds)
            if "raw" in names else None,
            "speedup_vs_raw_cpu_rounds": [row["raw"]["cpu_s"] / row[n]["cpu_s"] for row in rounds]
            if "raw" in names else None,
            "speedup_vs_raw_wall": statistics.median(row["raw"]["wall_s"] / row[n]["wall_s"] for row in rounds)
            if "raw" in names else None,
            "cosine_to_raw_mean": float(cos.mean()), "cosine_to_raw_min": float(cos.min()),
        }
    report = {"benchmark": "encoder_backends", "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
              "passages": len(texts), "words": words, "rounds": rounds, "load_median":
              statistics.median(r["load"] for r in rounds), "encoders": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for n, s in summary.items():
        print(f"{n:14s} {s['passages_per_cpu_s']:6.1f} passages/CPU-s  x{s['speedup_vs_raw_cpu'] or 0:.2f} CPU "
              f"x{s['speedup_vs_raw_wall'] or 0:.2f} wall vs raw  cosine mean {s['cosine_to_raw_mean']:.4f} "
              f"min {s['cosine_to_raw_min']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
