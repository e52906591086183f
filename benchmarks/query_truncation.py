"""Side by side: `relm eval` runs that differ only in --query-truncation (same datastore, same windows).

    python benchmarks/query_truncation.py runs/item4-right runs/item4-left

Prints each run's Δ ppl vs no retrieval per variant, and the paired bootstrap of left against right
per variant (from windows.jsonl), checking first that both runs scored the same windows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from relm.eval.metrics import paired_bootstrap


def load(run: Path):
    summary = json.loads((run / "summary.json").read_text())
    windows = [json.loads(line) for line in (run / "windows.jsonl").read_text().splitlines()]
    return summary, windows


def pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def main(right: str, left: str) -> int:
    (s_r, w_r), (s_l, w_l) = load(Path(right)), load(Path(left))
    if [(w["set"], w["start"], w["end"]) for w in w_r] != [(w["set"], w["start"], w["end"]) for w in w_l]:
        raise SystemExit("the two runs scored different windows")
    tokens = np.array([w["tokens"] for w in w_r])
    print(f"{len(w_r)} windows, {tokens.sum():,} scored tokens; "
          f"truncation: {s_r['settings']['retriever']['query_truncation']} vs {s_l['settings']['retriever']['query_truncation']}")
    print("| variant | Δ ppl vs none, right (old) [95% CI] | Δ ppl vs none, left (new) [95% CI] | left vs right [95% CI] |")
    print("|---|---|---|---|")
    for v in [v for v in s_l["overall"] if v != "none" and v in s_r["overall"]]:
        cells = []
        for s in (s_r, s_l):
            vs = s["overall"][v]["vs_none"]
            lo, hi = vs["ppl_rel_diff_ci"]
            cells.append(f"{pct(vs['ppl_rel_diff'])} [{pct(lo)}, {pct(hi)}]{' *' if vs['excludes_zero'] else ''}")
        b = paired_bootstrap(np.array([w[v]["nll"] for w in w_r]), np.array([w[v]["nll"] for w in w_l]), tokens)
        lo, hi = b["ppl_rel_diff_ci"]
        same = np.mean([w_r[i][v]["passages"] == w_l[i][v]["passages"] for i in range(len(w_r))])
        cells.append(f"{pct(b['ppl_rel_diff'])} [{pct(lo)}, {pct(hi)}]{' *' if b['excludes_zero'] else ''} "
                     f"(same passages in {same:.0%} of windows)")
        print(f"| {v} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
