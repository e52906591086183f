"""RETRO on the shared corpus, end to end, through the `relm retro` CLI (each step skipped when done):

  1. token-mode datastore (64-token SmolLM2 chunks) of --domains of ../shared/data/corpus;
  2. neighbours (k = 2, same-document exclusion) for its own chunks and for the held-out documents of
     the same domains in ../shared/data/eval;
  3. train a small RETRO, the same decoder without retrieval (baseline) on the same batches, the
     ReLM vector-fusion variant and RETRO without CCA positions (an ablation); retrofit the default LM
     (SmolLM2-135M, frozen) with CCA layers;
  4. evaluate all of them with retrieval ON and OFF, and the leakage-filtered curve.

Results: benchmarks/results/retro_results.json, a table in benchmarks/README.md, the plots in
benchmarks/results/retro_leakage.png (trained from scratch), retro_leakage_retrofit.png and
retro_training.png (held-out bpb during training).

    python benchmarks/retro_results.py --steps 700 --warmup 50 --retrofit-steps 100 --eval-windows 600
        # as in docs/results.md: ~2 h of trainings on 2 cores (two at a time with --threads 1 --skip ...)
    python benchmarks/retro_results.py --steps 200 --retrofit-steps 20 --work /tmp/retro   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

from relm.cli import main as relm

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step(name: str, done: Path, argv: list[str], seconds: dict) -> None:
    if done.exists():
        log(f"{name}: done already ({done})")
        return
    log(f"{name}: relm {' '.join(argv)}")
    t0 = time.perf_counter()
    code = relm(argv)
    if code:
        sys.exit(f"{name} failed with exit code {code}")
    seconds[name] = round(time.perf_counter() - t0, 1)


def plot_training(runs: dict[str, dict], path: Path) -> Path:
    """Held-out bits per byte against training step, one line per run (each with its own retrieval setting)."""
    from relm.eval.report import new_figure, save_figure

    fig, ax = new_figure()
    for name, run in runs.items():
        pts = [(h["step"], h["held_out"]["bits_per_byte"]) for h in run["history"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("RETRO on pydocs + wiki: held-out bpb during training")
    ax.grid(alpha=0.3)
    return save_figure(fig, ax, path)


def _checkpoint_mtime(run: Path) -> float:
    """When the run's live checkpoint was committed (checkpoint.json; older runs: model.safetensors)."""
    for name in ("checkpoint.json", "model.safetensors"):
        if (run / name).exists():
            return (run / name).stat().st_mtime
    return float("inf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / ".cache" / "retro")
    p.add_argument("--domains", default="pydocs,wiki")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--retrofit-steps", type=int, default=60)
    p.add_argument("--retrofit-batch-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-chunks", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--cca-layers", default="3,6")
    p.add_argument("--window", type=int, default=256,
                   help="eval window tokens (the paper: 2048; here the training length, --seq-chunks x 64)")
    p.add_argument("--stride", type=int, default=128, help="eval stride tokens (the paper: 1024)")
    p.add_argument("--eval-windows", type=int, help="windows (spread evenly) to evaluate on (default: all)")
    p.add_argument("--retrofit-windows", type=int, default=200,
                   help="windows (spread evenly) to evaluate the 135M retrofit on, for the CPU budget")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps of the models trained from scratch")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (1 lets two drivers train side by side)")
    p.add_argument("--skip", default="", help="comma list of steps to skip: retro, baseline, relm, retro-nopos, retrofit, eval")
    p.add_argument("--no-readme", dest="readme", action="store_false")
    args = p.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    domains = args.domains.split(",")
    corpus = [str(DATA / "corpus" / f"{d}.jsonl.gz") for d in domains]
    evals = [str(DATA / "eval" / f"{d}.jsonl.gz") for d in domains]
    seconds: dict[str, float] = {}
    ds = w / "ds"
    step("datastore", ds / "manifest.json", ["build", *corpus, "--out", str(ds), "--chunk-tokens", "64"], seconds)
    step("neighbours", w / "nb" / "manifest.json", ["retro", "neighbours", str(ds), "--out", str(w / "nb")], seconds)
    step("eval neighbours", w / "nb-eval" / "manifest.json",
         ["retro", "neighbours", str(ds), "--eval", *evals, "--out", str(w / "nb-eval")], seconds)
    threads = ["--threads", str(args.threads)] if args.threads else []
    train = ["--neighbours", str(w / "nb"), "--eval", *evals, "--eval-neighbours", str(w / "nb-eval"),
             "--batch-size", str(args.batch_size), "--seq-chunks", str(args.seq_chunks), "--eval-sequences", "32",
             "--checkpoint-every", "100", *threads]
    model = ["--d-model", str(args.d_model), "--layers", str(args.layers), "--heads", "4", "--d-ff",
             str(3 * args.d_model), "--cca-layers", args.cca_layers, "--enc-d-model", str(args.d_model // 2)]
    skip = set(args.skip.split(","))
    retrofit_runs = [] if "retrofit" in skip else [str(w / "retrofit")]
    runs = []
    for name, extra in (("retro", []), ("baseline", ["--no-retrieval"]), ("relm", ["--fusion", "relm"]),
                        ("retro-nopos", ["--no-cca-positions"])):
        if name in skip:
            continue
        step(f"train {name}", w / name / "DONE", ["retro", "train", str(ds), "--out", str(w / name), *train, *model,
             "--steps", str(args.steps), "--warmup", str(args.warmup), "--eval-every", str(max(1, args.steps // 5)), *extra], seconds)
        (w / name / "DONE").touch()
        runs.append(str(w / name))
    if "retrofit" not in skip:
        step("retrofit", w / "retrofit" / "DONE", ["retro", "retrofit", str(ds), "--out", str(w / "retrofit"),
             *train, "--batch-size", str(args.retrofit_batch_size), "--steps", str(args.retrofit_steps), "--warmup", "10", "--lr", "5e-4", "--min-lr", "5e-5",
             "--eval-every", str(max(1, args.retrofit_steps // 3)), "--cca-layers", "12,24",
             "--enc-d-model", "288"], seconds)
        (w / "retrofit" / "DONE").touch()
    if "eval" in skip:
        return
    evals_argv = ["--datastore", str(ds), "--eval", *evals, "--neighbours", str(w / "nb-eval"), "--window",
                  str(args.window), "--stride", str(args.stride), *threads]
    res = {}
    for name, members, extra in (("eval", runs, ["--max-windows", str(args.eval_windows)] if args.eval_windows else []),
                                 ("eval-retrofit", retrofit_runs,
                                  ["--max-windows", str(args.retrofit_windows)])):
        if not members:
            continue
        out = w / name
        done = out / "retro_eval.json"
        if done.exists() and any(done.stat().st_mtime < _checkpoint_mtime(Path(r))
                                 for r in members):
            shutil.rmtree(out)  # older than a model it evaluated: evaluate again
        step(name, out / "retro_eval.json", ["retro", "eval", *members, *evals_argv, "--out", str(out), *extra],
             seconds)
        res[name] = json.loads((out / "retro_eval.json").read_text())
    states = {Path(r).name: json.loads((Path(r) / "state.json").read_text())
              for r in [*runs, *retrofit_runs]}
    result = {"benchmark": "retro_results", "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in
              vars(args).items()}, "seconds": seconds, **{k.replace("-", "_"): v for k, v in res.items()},
              "runs": {n: {"step": s["step"], "train": s["train"], "model": s["model"],
                           "history": [h for h in s["history"] if "held_out" in h]} for n, s in states.items()}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "retro_results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_training({n: r for n, r in result["runs"].items() if n != "retrofit"},
                  HERE / "results" / "retro_training.png")
    parts = []
    for name, r in res.items():
        png = "retro_leakage.png" if name == "eval" else "retro_leakage_retrofit.png"
        shutil.copy(w / name / "leakage.png", HERE / "results" / png)
        what = (f"models trained from scratch, {r['windows']} of {r['windows_total']} windows" if name == "eval" else
                f"SmolLM2-135M retrofit ({args.retrofit_steps} steps; OFF is the frozen base model exactly), "
                f"{r['windows']} of {r['windows_total']} windows spread evenly")
        parts.append(f"{what}:\n\n" + (w / name / "table.md").read_text().strip())
    first = next(iter(res.values()))
    text = "\n\n".join(parts) + (
        f"\n\nHeld-out {', '.join(domains)} ({first['chunks']:,} chunks of 64 tokens), windows of {args.window} "
        f"tokens scoring {args.stride}; {args.steps} steps of {args.batch_size} x {args.seq_chunks * 64} tokens for "
        f"the models trained from scratch, {args.retrofit_steps} of {args.retrofit_batch_size} x "
        f"{args.seq_chunks * 64} for the retrofit.\n\n"
        f"`python benchmarks/retro_results.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}.")
    print(text)
    if args.readme:
        write_readme_table("retro_results", text)


if __name__ == "__main__":
    main()
