"""Eval throughput: relm's batched retrieval-augmented evaluation vs a one-window-at-a-time loop.

The same windows of held-out text (../shared/data/eval), the same datastore, LM and settings (MassiveDS
protocol: top-k passages prepended, loss on the second half of each window), alternating in every
repetition:

  relm   `Evaluator.run` (a fresh one per repetition, so nothing is cached across repetitions): all
         queries encoded in one batch, one search call, every LM input (with and without retrieval)
         scored in length-sorted padded batches, the output head applied only at scored positions.
  loop   the MassiveDS way: per window, encode its query, search, filter, build the input, run the
         LM on the window alone and on the window with passages (full float32 logits at every position,
         log-softmax), and
         take the loss on the second half.

Both report perplexity without and with retrieval; they must agree (to float32 reduction order).
Scored tokens per second counts the scored tokens of both conditions over wall time; the speedup is
taken pair by pair. Results: benchmarks/results/eval_throughput.json and a table in benchmarks/README.md.

    python benchmarks/eval_throughput.py                           # 24 windows x 3 repetitions, ~10 min
    python benchmarks/eval_throughput.py --windows 6 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

from relm import Datastore
from relm.eval.evaluate import CANDIDATE_SLACK, SEPARATOR, Evaluator
from relm.eval.filters import apply_filters
from relm.eval.variants import Variant, prepend
from relm.eval.windows import WindowConfig, read_eval_sets
from relm.lm import LMConfig, load_lm

HERE = Path(__file__).resolve().parent
DEFAULT_DS = HERE / ".cache" / "corpus-ds"
DEFAULT_EVAL = HERE.parent.parent / "shared" / "data" / "eval"
RESULTS = HERE / "results" / "eval_throughput.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_relm(ds, lm, eval_sets, wc: WindowConfig, k: int, max_batch_tokens: int) -> dict:
    lm.config = LMConfig(**{**lm.config.__dict__, "max_batch_tokens": max_batch_tokens})
    ev = Evaluator(ds, lm, windows=wc)
    t0 = time.perf_counter()
    res = ev.run(eval_sets, [Variant("massiveds", k=k)])
    seconds = time.perf_counter() - t0
    s = res.summary(n_boot=10)
    return {"seconds": seconds, "windows": len(res.windows), "tokens": s["overall"]["none"]["tokens"],
            "ppl_none": s["overall"]["none"]["perplexity"], "ppl_retrieval": s["overall"]["massiveds"]["perplexity"]}


def run_loop(ds, lm, eval_sets, wc: WindowConfig, k: int) -> dict:
    """One window at a time, full logits, nothing shared: the reference the batched path must match."""
    ev = Evaluator(ds, lm, windows=wc)  # only for its windows and filter settings
    windows = ev.windows(eval_sets)
    t0 = time.perf_counter()
    nll_none = nll_ret = 0.0
    tokens = 0
    for w in windows:
        query = lm.decode(w.context_ids).strip() or "."
        vec = ds.encode_queries([query])
        _, ids = ds.search_vectors(vec, min(k * CANDIDATE_SLACK, len(ds)))
        cand = [int(i) for i in ids[0] if i >= 0]
        texts = [ds.passage(i) for i in cand]
        kept, _ = apply_filters(texts, lm.decode(w.target_ids), ev.filters)
        passages = [lm.encode(texts[j] + SEPARATOR)[0] for j in kept[:k]]
        mask = torch.from_numpy(w.target_mask)
        for ids_in, which in ((w.ids, "none"), (prepend(passages, w.ids, ev.limit), "ret")):
            x = torch.from_numpy(ids_in)[None]
            with torch.inference_mode():
                logp = torch.log_softmax(lm.model(x).logits[0].float(), -1)  # as MassiveDS: all positions
            t = torch.arange(len(ids_in) - w.n_target, len(ids_in))
            nll = -logp[t - 1, x[0, t]].double()[mask].sum().item()
            if which == "none":
                nll_none += nll
            else:
                nll_ret += nll
        tokens += w.n_tokens
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "windows": len(windows), "tokens": tokens,
            "ppl_none": math.exp(nll_none / tokens), "ppl_retrieval": math.exp(nll_ret / tokens)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datastore", type=Path, default=DEFAULT_DS)
    p.add_argument("--eval", nargs="+", default=[str(DEFAULT_EVAL / f) for f in
                                                 ("pydocs.jsonl.gz", "wiki.jsonl.gz", "kernel.jsonl.gz")])
    p.add_argument("--lm", default="smollm2")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--windows", type=int, default=8, help="windows per eval stream (evenly spaced)")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-readme", dest="readme", action="store_false")
    args = p.parse_args()
    if not (args.datastore / "manifest.json").exists():
        sys.exit(f"no datastore at {args.datastore}: build it with "
                 f"`relm build ../shared/data/corpus --out {args.datastore}`")
    ds = Datastore.open(args.datastore)
    ds.encoder()
    lm = load_lm(LMConfig(model=args.lm))
    eval_sets = read_eval_sets(args.eval)
    wc = WindowConfig(args.window, max_windows=args.windows)
    pairs = []
    for r in range(args.repeats):
        a = run_relm(ds, lm, eval_sets, wc, args.k, args.max_batch_tokens)
        b = run_loop(ds, lm, eval_sets, wc, args.k)
        pairs.append((a, b))
        log(f"repeat {r + 1}: relm {a['seconds']:.1f}s, loop {b['seconds']:.1f}s, speedup {b['seconds'] / a['seconds']:.2f}x; "
            f"ppl none {a['ppl_none']:.4f}/{b['ppl_none']:.4f}, retrieval {a['ppl_retrieval']:.4f}/{b['ppl_retrieval']:.4f}")
    a0, b0 = pairs[0]
    scored = 2 * a0["tokens"]  # both conditions
    result = {
        "benchmark": "eval_throughput", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()},
        "windows": a0["windows"], "scored_tokens_per_condition": a0["tokens"],
        "relm_tokens_per_s": statistics.median(scored / a["seconds"] for a, _ in pairs),
        "loop_tokens_per_s": statistics.median(scored / b["seconds"] for _, b in pairs),
        "speedup": statistics.median(b["seconds"] / a["seconds"] for a, b in pairs),
        "speedups": [b["seconds"] / a["seconds"] for a, b in pairs],
        "ppl": {"relm": {"none": a0["ppl_none"], "retrieval": a0["ppl_retrieval"]},
                "loop": {"none": b0["ppl_none"], "retrieval": b0["ppl_retrieval"]}},
        "max_rel_ppl_diff": max(abs(a["ppl_" + c] / b["ppl_" + c] - 1) for a, b in pairs for c in ("none", "retrieval")),
        "pairs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = (
        "| system | scored tokens/s (median) | ppl no retrieval | ppl with retrieval |\n|---|---|---|---|\n"
        f"| relm (batched) | {result['relm_tokens_per_s']:,.1f} | {a0['ppl_none']:.4f} | {a0['ppl_retrieval']:.4f} |\n"
        f"| one window at a time | {result['loop_tokens_per_s']:,.1f} | {b0['ppl_none']:.4f} | {b0['ppl_retrieval']:.4f} |\n\n"
        f"Speedup (pair by pair, median of {args.repeats}): **{result['speedup']:.2f}x** (target ≥ 3x); "
        f"largest relative perplexity difference {result['max_rel_ppl_diff']:.1e}. {a0['windows']} windows of "
        f"{args.window} tokens, k = {args.k}, {os.cpu_count()} cores.\n\n"
        f"`python benchmarks/eval_throughput.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}."
    )
    print(text)
    if args.readme:
        write_readme_table("eval_throughput", text)


if __name__ == "__main__":
    main()
