"""QA outputs as `relm eval` writes its own: a summary (per condition means, passages dropped to fit the
window, seconds per question, the change against closed-book with paired-bootstrap intervals), a
markdown table and a plot of the metrics against k."""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..eval.report import new_figure, save_figure
from ..eval.retrieval import paired_bootstrap

METRICS = {"open": ("em", "f1"), "choices": ("acc", "acc_norm")}
LABELS = {"em": "EM", "f1": "F1", "recall": "answer recall@k", "acc": "accuracy", "acc_norm": "accuracy (norm)"}


def summarize(records: Sequence[Mapping[str, Any]], conditions: Sequence[tuple[int, int]], task: str = "open", *,
              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Per condition (k, shots), in the given order: n, the mean of each metric (and answer recall for k > 0),
    passages dropped to fit the window, seconds per question; for k > 0, each metric's change against
    closed-book with the same shots, paired over the same questions (b - a = with - without)."""
    from .run import condition_name

    metrics = METRICS[task]
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by.setdefault(r["condition"], []).append(r)
    out: dict[str, Any] = {}
    for k, s in conditions:
        name = condition_name(k, s)
        rows = by.get(name, [])
        if not rows:
            continue
        m: dict[str, Any] = {"k": k, "shots": s, "questions": len(rows)}
        for key in metrics:
            m[key] = float(np.mean([r[key] for r in rows]))
        if k:
            m["recall"] = float(np.mean([r["recall"] for r in rows])) if task == "open" else None
            m["recall_in_prompt"] = float(np.mean([r["recall_in_prompt"] for r in rows])) if task == "open" else None
            m["mean_passages_in_prompt"] = float(np.mean([r["in_prompt"] for r in rows]))
            m["dropped_passages"] = int(sum(r["dropped"] for r in rows))
            m["questions_with_dropped"] = int(sum(r["dropped"] > 0 for r in rows))
            m["short_retrievals"] = int(sum(r["retrieved"] < k for r in rows))
        secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
        if secs:
            m["seconds_per_question"] = {"median": statistics.median(secs), "mean": float(np.mean(secs))}
        base = {r["id"]: r for r in by.get(condition_name(0, s), [])}
        if k and base:
            paired = [r for r in rows if r["id"] in base]
            m["vs_closed_book"] = {key: paired_bootstrap([r[key] for r in paired], [base[r["id"]][key] for r in paired],
                                                         n_boot=n_boot, seed=seed, level=level)
                                   for key in metrics}
        out[name] = m
    return out


def _delta(vs: Mapping[str, float]) -> str:
    mark = " *" if vs["ci_low"] > 0 or vs["ci_high"] < 0 else ""
    return f"{vs['mean_diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]{mark}"


def qa_table(conditions: Mapping[str, Mapping[str, Any]], task: str = "open") -> str:
    """Markdown: one line per condition, its metrics and the change against closed-book."""
    metrics = METRICS[task]
    recall = task == "open"
    head = ["condition", "k", "shots", "questions", *(LABELS[m] for m in metrics)]
    head += ["answer recall@k"] if recall else []
    head += [f"Δ{LABELS[m]} vs closed-book [95% CI]" for m in metrics] + ["passages dropped", "s/question"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in conditions.items():
        cells = [name, str(c["k"]), str(c["shots"]), str(c["questions"]), *(f"{c[m]:.4f}" for m in metrics)]
        if recall:
            cells.append(f"{c['recall']:.4f}" if c.get("recall") is not None else "-")
        cells += [_delta(c["vs_closed_book"][m]) if "vs_closed_book" in c else "-" for m in metrics]
        cells.append(f"{c['dropped_passages']} ({c['questions_with_dropped']} q)" if c["k"] else "-")
        secs = c.get("seconds_per_question")
        cells.append(f"{secs['median']:.2f}" if secs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*`: the 95% paired-bootstrap interval of the change excludes zero.\n"


def plot_qa(conditions: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, task: str = "open", *,
            title: str | None = None) -> Path:
    """PNG of each metric against k (one line per metric and shots count; recall dashed)."""
    import matplotlib

    fig, ax = new_figure()
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    metrics = (*METRICS[task], "recall") if task == "open" else METRICS[task]
    shots = sorted({c["shots"] for c in conditions.values()})
    styles = ["-", "--", ":", "-."]
    for i, m in enumerate(metrics):
        for j, s in enumerate(shots):
            if m == "recall":  # recall does not depend on the examples: one line over every k that ran
                if j:
                    continue
                pts = sorted({c["k"]: c[m] for c in conditions.values() if c.get(m) is not None}.items())
            else:
                pts = sorted((c["k"], c[m]) for c in conditions.values() if c["shots"] == s and c.get(m) is not None)
            if not pts:
                continue
            label = LABELS[m] + (f", {s}-shot" if len(shots) > 1 and m != "recall" else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=cycle[i % len(cycle)],
                    linestyle=":" if m == "recall" else styles[j % len(styles)], label=label)
    ks = sorted({c["k"] for c in conditions.values()})
    ax.set_xticks(ks)
    ax.set_xlabel("passages in the prompt (k; 0 = closed-book)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title(title or "QA with retrieval")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, ax, path)
