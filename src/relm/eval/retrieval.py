"""Retrieval quality against relevance judgements (qrels): nDCG, recall, MRR, MAP with ir-measures.

Datastores hold passages and qrels judge documents, so passage hits are aggregated to their documents
first: `max` (MaxP, the standard: a document scores as its best passage), `first` (the same order, the
rank of its first passage), or `sum`. Document ids are the datastore's own (`--id-field` at build time),
never passage numbers, so runs are scored against the qrels directly. The measures are ir-measures'
(the trec_eval definitions via pytrec_eval). Retrievers evaluated together are compared query by query
with a paired bootstrap of the mean difference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus.readers import InputFile, _lines
from ..errors import ConfigError, InputError

AGGREGATIONS = ("max", "first", "sum")
DEFAULT_METRICS = ("nDCG@10", "R@100", "RR@10", "AP")

Qrels = dict[str, dict[str, int]]
DocRun = dict[str, dict[str, float]]


def read_qrels(path: str | Path) -> Qrels:
    """TREC qrels (`qid 0 docid rel`, whitespace) or BEIR TSV (`query-id<TAB>corpus-id<TAB>score`,
    with its header line); `.gz`/`.zst` read too. Errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(str(path), None, "missing", "no such qrels file")
    name = p.name.lower()
    compression = "gz" if name.endswith(".gz") else "zst" if name.endswith(".zst") else None
    out: Qrels = {}
    with open(p, "rb") as raw:
        for n, data in _lines(InputFile(p, str(path), "qrels", compression, ""), raw):
            line = data.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if n == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
                continue  # BEIR header
            if len(parts) == 4:
                qid, _, doc, rel = parts
            elif len(parts) == 3:
                qid, doc, rel = parts
            else:
                raise InputError(str(path), n, "bad_qrels", "expected 'qid 0 docid rel' (TREC) or "
                                                          "'query-id<TAB>corpus-id<TAB>score' (BEIR)")
            try:
                out.setdefault(qid, {})[doc] = int(float(rel))
            except ValueError:
                raise InputError(str(path), n, "bad_qrels", f"relevance {rel!r} is not a number") from None
    if not out:
        raise InputError(str(path), None, "empty_file", "no judgements in the qrels file")
    return out


def doc_run(ds, qids: Sequence[str], scores: np.ndarray, ids: np.ndarray, agg: str = "max") -> DocRun:
    """Passage results (nq, k) -> {qid: {document id: score}} (see the module docstring for `agg`)."""
    if agg not in AGGREGATIONS:
        raise ConfigError(f"--doc-agg {agg!r}: choose from {list(AGGREGATIONS)}")
    doc_index = np.asarray(ds.doc_index)
    cache: dict[int, str] = {}
    run: DocRun = {}
    for qid, s_row, i_row in zip(qids, scores, ids, strict=True):
        docs: dict[str, float] = {}
        for rank, (s, i) in enumerate(zip(s_row.tolist(), i_row.tolist(), strict=True)):
            if i < 0:
                continue
            j = int(doc_index[i])
            if j not in cache:
                cache[j] = str(ds.document(j)["id"])
            d = cache[j]
            if agg == "sum":
                docs[d] = docs.get(d, 0.0) + s
            elif d not in docs:  # results come best first: the first passage seen is the best
                docs[d] = s if agg == "max" else -float(rank)
        run[qid] = docs
    return run


def parse_metrics(names: str | Sequence[str]):
    import ir_measures

    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    aliases = {"MRR": "RR", "MAP": "AP"}  # the usual names of ir-measures' RR and AP
    names = [aliases.get(n.split("@")[0], n.split("@")[0]) + n[len(n.split("@")[0]):] for n in names]
    try:
        return [ir_measures.parse_measure(n) for n in names]
    except (ValueError, NameError, SyntaxError) as e:
        raise ConfigError(f"--metrics: cannot read {names!r} ({e}); write e.g. nDCG@10,R@100,RR@10,AP") from e


def evaluate(run: DocRun, qrels: Qrels, metrics) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(aggregate, per query) for the queries that have judgements; a judged query the run lacks scores 0."""
    import ir_measures

    judged = {q: qrels[q] for q in qrels if q in run}
    if not judged:
        raise ConfigError("no query of the run has judgements in the qrels: do the query ids match the qrels' ids?")
    full = {q: run.get(q, {}) for q in judged}
    per: dict[str, dict[str, float]] = {q: {} for q in judged}
    for m in ir_measures.iter_calc(metrics, judged, full):
        per[m.query_id][str(m.measure)] = float(m.value)
    for q in per:  # a query with no hits gets no row from ir-measures: it scores 0
        for m in metrics:
            per[q].setdefault(str(m), 0.0)
    agg = {str(m): float(np.mean([per[q][str(m)] for q in per])) for m in metrics}
    return agg, per


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over queries with a percentile bootstrap interval and a two-sided p-value."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    p = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "p": float(p), "n": len(d)}


def trec_lines(run: DocRun, name: str):
    """The TREC run lines (`qid Q0 docid rank score name`) of a document run, each query's best first."""
    for qid, docs in run.items():
        for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1):
            yield f"{qid} Q0 {doc} {rank} {score:.6f} {name}\n"


def write_trec(path: Path, run: DocRun, name: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(trec_lines(run, name))


def table(results: dict[str, dict[str, float]], metrics, comparisons: dict[str, Any]) -> str:
    names = [str(m) for m in metrics]
    lines = ["| retriever | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r, agg in results.items():
        lines.append(f"| {r} | " + " | ".join(f"{agg[m]:.4f}" for m in names) + " |")
    if comparisons:
        first = names[0]
        lines += ["", f"| comparison | Δ {first} [95% CI] | p |", "|---|---|---|"]
        for key, c in comparisons.items():
            lines.append(f"| {key} | {c[first]['mean_diff']:+.4f} [{c[first]['ci_low']:+.4f}, "
                         f"{c[first]['ci_high']:+.4f}] | {c[first]['p']:.3f} |")
    return "\n".join(lines)


def dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")
