"""RETRO evaluation: bits per byte with retrieval ON and OFF over sliding windows of held-out chunks,
and the leakage-filtered curve (bpb over the chunks whose overlap with their neighbours is ≤ α)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .data import ChunkStream
from .leakage import ALPHAS, filtered_bpb, filtered_comparison, overlap_ratios
from .train import evaluate_sequences


def window_starts(n_chunks: int, window_chunks: int, stride_chunks: int) -> np.ndarray:
    """Sliding windows of window_chunks chunks advancing by stride_chunks; the last window is moved back
    to end at the stream's end, so every chunk is scored once (2048/1024 tokens = 32/16 chunks of 64)."""
    if not 1 <= stride_chunks <= window_chunks:
        raise ConfigError(f"need 1 ≤ stride ≤ window (in chunks), got {stride_chunks} and {window_chunks}")
    if n_chunks < window_chunks:
        raise ConfigError(f"the eval stream has {n_chunks} chunks, fewer than one window of {window_chunks}; "
                          "pass a smaller --window")
    starts = list(range(0, n_chunks - window_chunks + 1, stride_chunks))
    if starts[-1] + window_chunks < n_chunks:
        starts.append(n_chunks - window_chunks)
    return np.array(starts, dtype=np.int64)


def scored_from(starts: np.ndarray, window_chunks: int) -> np.ndarray:
    """Per window, the first chunk position not scored by an earlier window (0 for the first; L − s for
    regular ones; more for a last window moved back to the stream's end)."""
    out = np.empty(len(starts), dtype=np.int64)
    covered = 0
    for i, st in enumerate(starts):
        out[i] = max(0, covered - int(st))
        covered = int(st) + window_chunks
    return out


def chunk_byte_counts(chunks: np.ndarray, tokenizer) -> np.ndarray:
    """UTF-8 bytes of each chunk's decoded text (the denominator of bits per byte)."""
    return np.array([len(tokenizer.decode(row).encode("utf-8")) for row in chunks], dtype=np.int64)


def spread(n: int, k: int | None) -> np.ndarray:
    """k indices of range(n) spread evenly from the first to the last (all of them when k is None or ≥ n)."""
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise ConfigError(f"--max-windows must be ≥ 1, got {k}")
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def evaluate_retro(models: dict[str, tuple[Any, bool]], stream: ChunkStream, chunk_bytes: np.ndarray, *,
                   window_chunks: int, stride_chunks: int, batch_size: int = 4, device: str = "cpu",
                   alphas=ALPHAS, max_windows: int | None = None,
                   comparisons: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """models: {label: (model, retrieval on?)}, e.g. {"retro on": (m, True), "retro off": (m, False),
    "baseline": (b, False)}. Scores every chunk once (windows overlap; only the last stride_chunks of a
    window are scored, all of the first window). Returns per label the summary and the α curve.

    max_windows: score only that many windows spread evenly over the stream (each still scores just its own
    chunks, with the same context as in the full evaluation), for a budget; every model sees the same ones.
    comparisons: (a, b) label pairs; for each, b's bpb relative to a's per α with a paired-bootstrap interval
    over chunks (see comparison_pairs)."""
    all_starts = window_starts(len(stream.chunks), window_chunks, stride_chunks)
    keep = spread(len(all_starts), max_windows)
    starts, score_from = all_starts[keep], scored_from(all_starts, window_chunks)[keep]
    out: dict[str, Any] = {"windows": len(starts), "windows_total": len(all_starts), "window_chunks": window_chunks,
                           "stride_chunks": stride_chunks}
    per_label = {}
    rows = None
    for label, (model, retrieval) in models.items():
        res = evaluate_sequences(model, stream, starts, window_chunks, retrieval, chunk_bytes,
                                 batch_size=batch_size, device=device, per_chunk=True, score_from=score_from)
        per_label[label] = res
        rows = np.array(sorted(res["chunk_nll"])) if rows is None else rows
    assert rows is not None
    nb, mask = stream.neighbours.batch(rows)
    ratios = overlap_ratios(np.asarray(stream.chunks[rows]), nb, mask)
    nbytes = np.asarray(chunk_bytes)[rows]
    out["chunks"] = len(rows)
    out["overlap_histogram"] = {str(a): int((ratios <= a + 1e-12).sum()) for a in alphas}
    out["results"], bits = {}, {}
    for label, res in per_label.items():
        bits[label] = np.array([res["chunk_nll"][r] for r in rows]) / math.log(2)
        out["results"][label] = {
            "loss": res["loss"], "perplexity": res["perplexity"], "tokens": res["tokens"],
            "bits_per_byte": float(bits[label].sum() / nbytes.sum()),
            "leakage_curve": filtered_bpb(bits[label], nbytes, ratios, alphas),
        }
    out["comparisons"] = [{"a": a, "b": b, "all": filtered_comparison(bits[a], bits[b], nbytes, ratios, (math.inf,))[0],
                           "curve": filtered_comparison(bits[a], bits[b], nbytes, ratios, alphas)}
                          for a, b in comparisons or () if a in bits and b in bits]
    return out


def comparison_pairs(labels: list[str], baselines: list[str]) -> list[tuple[str, str]]:
    """Each '<run> ON' against its own '<run> OFF' and against every baseline label (runs trained without
    retrieval), in that order."""
    pairs = []
    for on in (x for x in labels if x.endswith(" ON")):
        pairs += [(on[: -len(" ON")] + " OFF", on), *((b, on) for b in baselines)]
    return [(a, b) for a, b in pairs if a in labels]


def _cell(value: float, fmt: str) -> str:
    return "–" if math.isnan(value) else format(value, fmt)


def _diff_cell(c: dict[str, Any]) -> str:
    """'+0.89% [+0.81%, +0.98%]', ' ns' appended when the interval contains zero, '–' with no chunk."""
    if math.isnan(c["rel_diff"]):
        return "–"
    lo, hi = c["rel_diff_ci"]
    return f"{c['rel_diff']:+.2%} [{lo:+.2%}, {hi:+.2%}]{'' if c['excludes_zero'] else ' ns'}"


def leakage_table(result: dict[str, Any]) -> str:
    """Markdown: bpb per model and α (– where no chunk is kept), the chunks kept, then each comparison's
    relative bpb difference with its 95% interval."""
    labels = list(result["results"])
    alphas = [c["alpha"] for c in result["results"][labels[0]]["leakage_curve"]]
    head = "| model | bpb (all) | " + " | ".join(f"bpb r≤{a:g}" for a in alphas) + " |"
    lines = [head, "|" + "---|" * (len(alphas) + 2)]
    for label in labels:
        r = result["results"][label]
        cells = " | ".join(_cell(c["bpb"], ".4f") for c in r["leakage_curve"])
        lines.append(f"| {label} | {r['bits_per_byte']:.4f} | {cells} |")
    counts = " | ".join(str(result["overlap_histogram"][str(a)]) for a in alphas)
    lines.append(f"| chunks kept | {result['chunks']} | {counts} |")
    for comp in result.get("comparisons", []):
        cells = [_diff_cell(c) for c in [comp["all"], *comp["curve"]]]
        lines.append(f"| {comp['b']} vs {comp['a']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_leakage(result: dict[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """PNG: bits per byte against the overlap threshold α, one line per model (RETRO paper, Fig. 6)."""
    from ..eval.report import new_figure, save_figure

    fig, ax = new_figure()
    for label, r in result["results"].items():
        xs = [c["alpha"] for c in r["leakage_curve"]]
        ys = [c["bpb"] for c in r["leakage_curve"]]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("α: max overlap with neighbours (longest common token run / chunk)")
    ax.set_ylabel("bits per byte (chunks with r ≤ α)")
    ax.set_title(title or "Leakage-filtered evaluation")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, ax, path)
