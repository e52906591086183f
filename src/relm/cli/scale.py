"""`relm scale DS EVAL... --fractions ...`: the datastore scaling curve and its fitted law."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import HelpFormatter
from .eval import add_eval_arguments, check_args, make_evaluator, variants_from


def register(sub) -> None:
    p = sub.add_parser(
        "scale",
        help="perplexity against datastore size, with a fitted scaling law",
        description="Retrieve --candidates passages per window once from the full datastore, then for each "
        "fraction p and seed keep each passage with probability p and score the window with the top-k kept "
        "passages (MassiveDS's subsampling after retrieval). Fits L(R) = α·R^−γ + c per LM (and L(N, R) "
        "with several LMs), accounts FLOPs per token, and writes scale.json, scale.csv, table.md and "
        "scale.png to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("datastore", metavar="DS")
    p.add_argument("eval", nargs="+", metavar="EVAL")
    add_eval_arguments(p, rename={"candidates": "--fusion-candidates"})  # --candidates is K here
    p.add_argument("--lms", help="comma list of LMs to compare (overrides --lm), e.g. for L(N, R)")
    p.add_argument("--fractions", default="0.01,0.03,0.1,0.3,1", help="datastore fractions in (0, 1]")
    p.add_argument("--seeds", type=int, default=3, help="subsampling seeds per fraction")
    p.add_argument("--candidates", type=int, default=1000, help="K: candidates retrieved once per window")
    p.add_argument("--direct", help="fractions also run by really subsampling the datastore and searching again")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for the fit's intervals")
    p.add_argument("--out", "-o", metavar="DIR", help="output directory (default: runs/scale-<time>)")
    p.set_defaults(run=run)


def _floats(text: str | None, flag: str) -> list[float]:
    from ..errors import ConfigError

    if not text:
        return []
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from e
    for v in values:
        if not 0 < v <= 1:  # NaN fails this too
            raise ConfigError(f"{flag}: {v} is outside (0, 1]; give datastore fractions like 0.01,0.1,1")
    return values


def run(args) -> int:
    import numpy as np

    from ..artifacts import write_json_atomic
    from ..errors import ConfigError
    from ..eval.report import markdown_table, plot_scaling, write_csv
    from ..eval.scale import check_fractions, fit_rows, passage_tokens, run_scaling
    from ..eval.scaling import fit_joint_law
    from ..eval.windows import read_eval_sets

    fractions = check_fractions(_floats(args.fractions, "--fractions"))
    direct = _floats(args.direct, "--direct")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be ≥ 1, got {args.seeds}")
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot must be ≥ 1, got {args.n_boot}")
    if args.candidates < args.k:
        raise ConfigError(f"--candidates K = {args.candidates} < -k = {args.k}; K must be at least k")
    variants = variants_from(args)
    if "hybrid" in (variants[0].retriever if variants else None, args.retriever) and \
            args.fusion_candidates < args.candidates:
        # scale retrieves K candidates once and subsamples them: a hybrid fuses to that depth, as it always did
        args.fusion_candidates = args.candidates
    if len(variants) != 1 or variants[0].protocol != "massiveds" or variants[0].adaptive or variants[0].rerank:
        raise ConfigError("relm scale takes one of --variants massiveds, last-q or hybrid")
    check_args(args, variants)
    lms = [x.strip() for x in args.lms.split(",") if x.strip()] if args.lms else [args.lm]
    if not lms:
        raise ConfigError("--lms is empty; give a comma list of LMs")
    eval_sets = read_eval_sets(args.eval)
    t0 = time.perf_counter()
    rows, baselines, runs, counts, shapes = [], {}, {}, None, {}
    for spec in lms:
        args.lm = spec
        ev = make_evaluator(args, variants)
        counts = passage_tokens(ev.ds, ev.lm) if counts is None else counts
        res = run_scaling(ev, eval_sets, variants[0], fractions, args.seeds, args.candidates, direct=direct,
                          token_counts=counts)
        rows += res["rows"]
        baselines[spec] = res["baseline"]
        runs[spec] = {k: v for k, v in res.items() if k != "rows"}
        shapes[spec] = ev.lm.shape()
        for w in res["warnings"]:
            print(f"warning: {w}")
        del ev
    fits = fit_rows(rows, n_boot=args.n_boot)
    joint = None
    if len(lms) > 1:
        pts = [r for r in rows if r["method"] == "after-retrieval"]
        joint = fit_joint_law(np.array([shapes[r["lm"]]["n_params"] for r in pts], float),
                              np.array([r["datastore_tokens"] for r in pts], float),
                              np.array([r["loss"] for r in pts]), n_boot=args.n_boot)
    out = Path(args.out or f"runs/scale-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    after = [r for r in rows if r["method"] == "after-retrieval"]
    write_json_atomic(out / "scale.json", {"rows": rows, "runs": runs, "fits": fits, "joint_fit": joint,
                                           "fractions": fractions, "seeds": args.seeds,
                                           "seconds": time.perf_counter() - t0})
    write_csv(rows, out / "scale.csv")
    table = markdown_table(after, baselines)
    lines = [table]
    for lm, f in fits.items():
        lo, hi = f["gamma_ci"]
        note = f.get("warning") or f"{f['n_points']} points"
        lines.append(f"{lm}: L(R) = {f['alpha']:.4g}·R^-{f['gamma']:.4f} + {f['c']:.4f}, "
                     f"γ 95% CI [{lo:.4f}, {hi:.4f}] ({note})")
    if joint:
        lines.append(f"joint: L(N, R) = {joint['alpha']:.4g}·N^-{joint['beta']:.4f}·R^-{joint['gamma']:.4f} "
                     f"+ {joint['c']:.4f}")
    for lm, r in runs.items():
        for a in r["agreement"]:
            lines.append(f"{lm}: direct vs after-retrieval at p={a['fraction']:g}: max |Δloss| "
                         f"{a['max_abs_loss_diff']:.2e} vs seed std {a['seed_std_loss']:.2e}"
                         f" ({'agree' if a['within_noise'] else 'DIFFER'})")
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    plot_scaling(after, baselines, out / "scale.png", fit=fits)
    print(text)
    print(f"\nwrote {out}/{{scale.json, scale.csv, table.md, scale.png}} in {time.perf_counter() - t0:.0f}s")
    print(json.dumps({lm: {"gamma": f["gamma"], "gamma_ci": f["gamma_ci"]} for lm, f in fits.items()}))
    return 0
