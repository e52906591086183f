"""Outputs of a datastore scaling run: a CSV of raw rows, a markdown table and a scaling plot.

A row is one (lm, fraction, seed) evaluation: {"lm", "fraction", "seed", "datastore_tokens",
"perplexity", "loss", "bits_per_byte", "flops_per_token"}; `baselines` maps each lm to its
no-retrieval {"perplexity", "loss", "bits_per_byte"}. Every file is written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

FIELDS = ["lm", "fraction", "seed", "datastore_tokens", "perplexity", "loss", "bits_per_byte", "flops_per_token"]


def _tmp(path: Path) -> Path:
    """Sibling temporary path with the same final suffix (matplotlib picks the format from it)."""
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


def new_figure(width: float = 6.4, height: float = 4.4):
    """(figure, axes) on matplotlib's Agg canvas: no pyplot state, no GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig, ax, path: str | os.PathLike) -> Path:
    """Legend, tight layout, and an atomic PNG write (a .tmp.png, then os.replace)."""
    path = Path(path)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = _tmp(path)
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """One line per row: the standard FIELDS first, then any extra keys in order of first appearance."""
    path = Path(path)
    extra = [k for row in rows for k in row if k not in FIELDS]
    fields = FIELDS + list(dict.fromkeys(extra))
    tmp = _tmp(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def summarize(rows: Sequence[Mapping]) -> list[dict]:
    """Per (lm, fraction), sorted: n_seeds and mean/std/sem/min/max over seeds of each numeric metric.

    std uses ddof=1 (0 for a single seed); sem = std / sqrt(n_seeds).
    """
    groups: dict[tuple[str, float], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["lm"], float(row["fraction"])), []).append(row)
    out = []
    for (lm, fraction), group in sorted(groups.items()):
        summary: dict = {"lm": lm, "fraction": fraction, "n_seeds": len(group)}
        for key in ("datastore_tokens", "perplexity", "loss", "bits_per_byte", "flops_per_token"):
            values = np.array([float(r[key]) for r in group if key in r], dtype=np.float64)
            if len(values) == 0:
                continue
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[key] = {"mean": float(values.mean()), "std": std, "sem": std / math.sqrt(len(values)),
                            "min": float(values.min()), "max": float(values.max())}
        out.append(summary)
    return out


def _tokens(n: float) -> str:
    """Human token count: 1.23B, 456M, 7.8K."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def markdown_table(rows: Sequence[Mapping], baselines: Mapping[str, Mapping]) -> str:
    """Markdown table, one line per (lm, fraction) with mean ± std over seeds; each lm's no-retrieval row first."""
    lines = ["| LM | fraction | datastore tokens | seeds | perplexity | bits/byte |",
             "|---|---:|---:|---:|---:|---:|"]
    by_lm: dict[str, list[dict]] = {}
    for s in summarize(rows):
        by_lm.setdefault(s["lm"], []).append(s)
    for lm in sorted(set(by_lm) | set(baselines)):
        if lm in baselines:
            b = baselines[lm]
            lines.append(f"| {lm} | no retrieval | 0 | - | {float(b['perplexity']):.3f} | "
                         f"{float(b['bits_per_byte']):.4f} |")
        for s in by_lm.get(lm, []):
            ppl, bpb, tok = s["perplexity"], s["bits_per_byte"], s["datastore_tokens"]
            lines.append(f"| {lm} | {s['fraction']:g} | {_tokens(tok['mean'])} | {s['n_seeds']} | "
                         f"{ppl['mean']:.3f} ± {ppl['std']:.3f} | {bpb['mean']:.4f} ± {bpb['std']:.4f} |")
    return "\n".join(lines) + "\n"


def _fit_curves(fit: Mapping | None, lms: Sequence[str]) -> dict[str | None, Mapping]:
    """A single fit dict (from fit_power_law) -> {None: fit}; a {lm: fit} mapping is kept per lm."""
    if fit is None:
        return {}
    if "gamma" in fit:
        return {None: fit}
    unknown = set(fit) - set(lms)
    if unknown:
        raise ConfigError(f"fit is neither a fit_power_law result nor keyed by lm; unknown lms {sorted(unknown)}")
    return dict(fit)


def plot_scaling(rows: Sequence[Mapping], baselines: Mapping[str, Mapping], path: str | os.PathLike, *,
                 fit: Mapping | None = None, title: str | None = None) -> Path:
    """PNG of perplexity against datastore tokens (log x), one line per LM, and return its path.

    Each LM: mean over seeds with a band of mean ± 1.96 sem, its no-retrieval perplexity as a dashed
    line of the same colour. `fit` (a fit_power_law result on loss in nats/token, or {lm: result}) is
    drawn dotted as perplexity = exp(alpha * R**-gamma + c). Uses the Agg canvas directly, so no
    pyplot state or GUI backend is touched.
    """
    import matplotlib

    path = Path(path)
    summaries = summarize(rows)
    lms = sorted({s["lm"] for s in summaries} | set(baselines))
    curves = _fit_curves(fit, lms)
    fig, ax = new_figure()
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    xs_all: list[float] = []
    for i, lm in enumerate(lms):
        color = cycle[i % len(cycle)]
        points = sorted((s for s in summaries if s["lm"] == lm), key=lambda s: s["datastore_tokens"]["mean"])
        if points:
            x = np.array([s["datastore_tokens"]["mean"] for s in points])
            y = np.array([s["perplexity"]["mean"] for s in points])
            half = 1.96 * np.array([s["perplexity"]["sem"] for s in points])
            ax.plot(x, y, marker="o", color=color, label=lm)
            ax.fill_between(x, y - half, y + half, color=color, alpha=0.2, linewidth=0)
            xs_all.extend(x.tolist())
        if lm in baselines:
            ax.axhline(float(baselines[lm]["perplexity"]), color=color, linestyle="--", linewidth=1,
                       label=f"{lm} (no retrieval)")
    if xs_all and curves:
        grid = np.logspace(np.log10(min(xs_all)), np.log10(max(xs_all)), 100)
        for lm, f in curves.items():
            if not all(np.isfinite(float(f[k])) for k in ("alpha", "gamma", "c")):
                continue
            color = "black" if lm is None else cycle[lms.index(lm) % len(cycle)]
            ppl = np.exp(float(f["alpha"]) * grid ** -float(f["gamma"]) + float(f["c"]))
            label = f"fit{'' if lm is None else f' {lm}'}: γ={float(f['gamma']):.3f}"
            ax.plot(grid, ppl, linestyle=":", color=color, linewidth=1.5, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("datastore size (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "Perplexity vs datastore size")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, ax, path)


# -- `relm eval` -------------------------------------------------------------------------------------
def eval_table(summary: Mapping) -> str:
    """Markdown: per group (overall first) and condition, windows, tokens, perplexity, bits per byte,
    mean passages, and the change in perplexity against no retrieval with its bootstrap interval."""
    head = ("| eval set / domain | condition | windows | tokens | perplexity | bits/byte | passages "
            "| Δ ppl vs none [95% CI] |")
    lines = [head, "|" + "---|" * 8]
    groups = {"overall": summary["overall"], **summary["groups"]}
    for key, block in groups.items():
        for cond in ["none", *[c for c in block if c != "none"]]:
            m = block[cond]
            if cond == "none":
                delta, k = "-", "0"
            else:
                vs = m["vs_none"]
                lo, hi = vs["ppl_rel_diff_ci"]
                mark = " *" if vs["excludes_zero"] else ""
                delta, k = f"{vs['ppl_rel_diff']:+.2%} [{lo:+.2%}, {hi:+.2%}]{mark}", f"{m['mean_k']:.2f}"
            lines.append(f"| {key} | {cond} | {m['windows']} | {m['tokens']:,} | {m['perplexity']:.3f} "
                         f"| {m['bits_per_byte']:.4f} | {k} | {delta} |")
    ref = summary.get("reference")
    if ref:
        lines += ["", f"| eval set / domain | condition | Δ ppl vs {ref} [95% CI] |", "|---|---|---|"]
        for key, block in groups.items():
            for cond, m in block.items():
                if "vs_reference" in m:
                    vs = m["vs_reference"]
                    lo, hi = vs["ppl_rel_diff_ci"]
                    mark = " *" if vs["excludes_zero"] else ""
                    lines.append(f"| {key} | {cond} | {vs['ppl_rel_diff']:+.2%} [{lo:+.2%}, {hi:+.2%}]{mark} |")
    return "\n".join(lines) + "\n\n`*`: the 95% paired-bootstrap interval excludes zero."


def plot_eval(summary: Mapping, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """PNG of grouped bars: perplexity per eval set/domain (and overall), one bar per condition."""
    import matplotlib

    path = Path(path)
    groups = {"overall": summary["overall"], **summary["groups"]}
    conds = ["none", *[c for c in summary["overall"] if c != "none"]]  # the baseline first, in blue
    fig, ax = new_figure(min(11.0, max(6.4, 0.25 * len(groups) * max(1, len(conds)) + 2)))
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    width = 0.8 / len(conds)
    x = np.arange(len(groups))
    for j, cond in enumerate(conds):
        y = [groups[g][cond]["perplexity"] for g in groups]
        ax.bar(x + (j - (len(conds) - 1) / 2) * width, y, width, label=cond, color=cycle[j % len(cycle)])
    ax.set_xticks(x, list(groups), rotation=20, ha="right", fontsize="small")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title or "Perplexity with and without retrieval")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, ax, path)
