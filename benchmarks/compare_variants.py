"""Paired comparison of retrieval variants from a `relm eval` run's windows.jsonl.

    python benchmarks/compare_variants.py runs/eval-corpus --reference massiveds

For every other condition: the relative change in perplexity against the reference on the same windows,
with a paired bootstrap interval (windows resampled together), overall and per eval set/domain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from relm.eval.metrics import paired_bootstrap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a `relm eval --out` directory")
    p.add_argument("--reference", default="massiveds")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args()
    rows = [json.loads(line) for line in open(args.run / "windows.jsonl")]
    conds = [c for c in rows[0] if isinstance(rows[0][c], dict) and "nll" in rows[0][c] and c != args.reference]
    groups = {"overall": list(range(len(rows)))}
    for i, r in enumerate(rows):
        groups.setdefault(f"{r['set']}/{r['domain']}", []).append(i)
    print(f"| eval set / domain | condition | Δ ppl vs {args.reference} [95% CI] |\n|---|---|---|")
    for key, sel in groups.items():
        tok = np.array([rows[i]["tokens"] for i in sel])
        ref = np.array([rows[i][args.reference]["nll"] for i in sel])
        for c in conds:
            b = paired_bootstrap(ref, np.array([rows[i][c]["nll"] for i in sel]), tok, n_boot=args.n_boot)
            lo, hi = b["ppl_rel_diff_ci"]
            mark = " *" if b["excludes_zero"] else ""
            print(f"| {key} | {c} | {b['ppl_rel_diff']:+.2%} [{lo:+.2%}, {hi:+.2%}]{mark} |")


if __name__ == "__main__":
    main()
