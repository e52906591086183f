"""BM25 throughput: relm's BM25 index vs raw bm25s vs rank-bm25, side by side in one run.

On the shared corpus's passages (the datastore at --datastore, or, when there is
none, the same passages read with relm's reader and chunker), alternating the
three systems in every repetition:

  relm       `build_bm25_index(ds, ...)` (streams passages from the datastore,
             tokenizes, indexes, saves, writes config.json) and `BM25Index.search`.
  raw bm25s  the same texts in a list through `bm25s.tokenization.Tokenizer` +
             `bm25s.BM25(...).index` + `save` (and the tokenizer's vocabulary), then
             `tokenize` + `retrieve` on the index loaded memory-mapped: the same
             parameters and tokenization as relm, so results must be identical.
  rank-bm25  `BM25Okapi` (same k1, b; Robertson idf with its epsilon floor) on the
             same tokens, `get_scores` + argpartition per query. It takes tens of
             milliseconds per query, so it runs a capped number of queries.

Queries are seeded 8-16-word snippets of the held-out documents (../shared/data/eval),
keeping those with at least one indexed term (raw bm25s raises on the others; relm
returns padding). Reports passages/s for indexing and queries/s for batched search
at 1 thread and at every CPU, medians over repetitions, and relm/raw ratios taken
pair by pair. Results go to benchmarks/results/bm25_bench.json and a table into
benchmarks/README.md.

    python benchmarks/bm25_bench.py                                 # ~3 minutes on 2 busy cores
    python benchmarks/bm25_bench.py --index-runs 1 --query-runs 2   # a quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = Path(os.environ.get("RELM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = HERE / "results" / "bm25_bench.json"
README = HERE / "README.md"
INDEX_NAME = "bench-bm25"


class PassageList:
    """Stands in for a `Datastore` when none is built: what the BM25 index reads (passages, state, root)."""

    def __init__(self, texts: list[str], root: Path):
        self.texts = texts
        self.root = root
        self.generation = 0
        self.manifest = {"encoder": {"fingerprint": None}}
        self.dim = 0

    def __len__(self) -> int:
        return len(self.texts)

    def passages(self, ids) -> list[str]:
        return [self.texts[i] for i in ids]


# -- inputs ----------------------------------------------------------------------------------------
def read_passages(corpus: Path) -> list[str]:
    """The passages `relm build` makes of the corpus (default chunking), without embedding them."""
    from relm.config import ChunkConfig, ReaderConfig
    from relm.corpus import chunk_words, read_documents, resolve_inputs

    chunk = ChunkConfig()
    return [
        doc.text[a:b]
        for doc in read_documents(resolve_inputs([corpus], ReaderConfig()))
        for a, b, _ in chunk_words(doc.text, chunk.max_words, chunk.min_words)
    ]


def open_passages(datastore: Path, corpus: Path, scratch: Path) -> tuple[Any, list[str], str]:
    """(ds for relm, passage texts for the others, where they came from)."""
    if (datastore / "manifest.json").exists():
        from relm import Datastore

        ds = Datastore.open(datastore)
        return ds, ds.passages(range(len(ds))), f"datastore {shown(datastore)}"
    texts = read_passages(corpus)
    return PassageList(texts, scratch / "ds"), texts, f"read and chunked from {shown(corpus)}; no datastore"


def shown(path: Path) -> str:
    """A path as the README shows it: relative to the repository."""
    return os.path.relpath(path.resolve(), REPO)


def make_queries(eval_dir: Path, fallback: list[str], n: int, seed: int) -> tuple[list[str], str]:
    """n seeded snippets of 8-16 consecutive words from held-out documents (or from passages)."""
    from relm.config import ReaderConfig
    from relm.corpus import read_documents, resolve_inputs

    if eval_dir.exists():
        texts, source = [d.text for d in read_documents(resolve_inputs([eval_dir], ReaderConfig()))], shown(eval_dir)
    else:
        texts, source = fallback, "corpus passages (no eval dir)"
    words = [t.split() for t in texts if len(t.split()) >= 16]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = words[rng.integers(len(words))]
        length = int(rng.integers(8, 17))
        start = int(rng.integers(0, len(w) - length + 1))
        out.append(" ".join(w[start : start + length]))
    return out, source


# -- the three systems -----------------------------------------------------------------------------
def relm_build(ds, config):
    from relm.retrieval import build_bm25_index

    return build_bm25_index(ds, INDEX_NAME, config, show_progress=False)


def relm_search(index, queries: list[str], k: int, n_threads: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, k, n_threads=n_threads)


def raw_tokenizer(config):
    import Stemmer
    from bm25s.tokenization import Tokenizer

    stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
    return Tokenizer(lower=config.lowercase, stopwords=config.stopwords, stemmer=stemmer)


def raw_build(texts: list[str], config, out: Path) -> None:
    """bm25s as its README shows it: tokenize, index, save the index and the tokenizer's vocabulary."""
    import bm25s

    tok = raw_tokenizer(config)
    ids = tok.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False, allow_empty=False)
    retriever = bm25s.BM25(method=config.method, k1=config.k1, b=config.b)
    retriever.index((ids, dict(tok.get_vocab_dict())), show_progress=False)
    retriever.save(str(out), show_progress=False)
    tok.save_vocab(str(out))


def raw_open(config, path: Path):
    import bm25s

    tok = raw_tokenizer(config)
    tok.load_vocab(str(path))
    return tok, bm25s.BM25.load(str(path), mmap=True, show_progress=False)


def raw_search(tok, retriever, queries: list[str], k: int, n_threads: int) -> tuple[np.ndarray, np.ndarray]:
    ids = tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False, allow_empty=False)
    docs, scores = retriever.retrieve(ids, k=k, show_progress=False, n_threads=0 if n_threads == 1 else n_threads)
    return scores, docs


def rank_build(texts: list[str], config) -> tuple[Any, Any]:
    from rank_bm25 import BM25Okapi

    tok = raw_tokenizer(config)
    tokens = tok.tokenize(texts, update_vocab=True, return_as="string", show_progress=False, allow_empty=False)
    return BM25Okapi(tokens, k1=config.k1, b=config.b), tok


def rank_search(bm25, tok, queries: list[str], k: int) -> np.ndarray:
    tokens = tok.tokenize(queries, update_vocab=False, return_as="string", show_progress=False, allow_empty=False)
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, q in enumerate(tokens):
        scores = bm25.get_scores(q)
        top = np.argpartition(-scores, k - 1)[:k]
        out[row] = top[np.argsort(-scores[top], kind="stable")]
    return out


# -- measurement -----------------------------------------------------------------------------------
def timed(fn, *args) -> tuple[tuple[float, float], Any]:
    """((wall s, CPU s of this process), fn's result). CPU time is what other jobs on a shared
    machine disturb least; wall time is what a user waits."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return (time.perf_counter() - w0, time.process_time() - c0), out


Runs = dict[str, dict[str, list[float]]]  # {"wall" | "cpu": {system: [seconds per run]}}


def record(runs: Runs, system: str, seconds: tuple[float, float]) -> None:
    for clock, value in zip(("wall", "cpu"), seconds, strict=True):
        runs[clock].setdefault(system, []).append(value)


def measure_indexing(ds, texts, config, n_runs: int, scratch: Path) -> tuple[Runs, tuple]:
    """Seconds per build, the three systems alternating in every run; rank-bm25's last (index, tokenizer)."""
    warm_up(texts[:500], config, scratch)
    runs: Runs = {"wall": {}, "cpu": {}}
    rank: tuple = ()
    raw_dir = scratch / "raw-bm25s"
    relm_dir = Path(ds.root) / "indexes" / INDEX_NAME
    for r in range(n_runs):
        # the order rotates from run to run so that no system always runs first (or after the slow one)
        for system in ("relm", "raw", "rank")[r % 3 :] + ("relm", "raw", "rank")[: r % 3]:
            if system == "relm":
                shutil.rmtree(relm_dir, ignore_errors=True)  # as for raw: deleting the old index is not timed
                record(runs, system, timed(relm_build, ds, config)[0])
            elif system == "raw":
                shutil.rmtree(raw_dir, ignore_errors=True)
                record(runs, system, timed(raw_build, texts, config, raw_dir)[0])
            else:
                rank = ()  # free the previous run's index first
                seconds, rank = timed(rank_build, texts, config)
                record(runs, system, seconds)
        print(f"index run {r + 1}/{n_runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs["wall"].items()),
              file=sys.stderr)
    return runs, rank


def warm_up(texts: list[str], config, scratch: Path) -> None:
    """Imports (bm25s pulls in scipy) and first calls happen here, untimed, for all three systems."""
    from relm.retrieval import build_bm25_index

    build_bm25_index(PassageList(texts, scratch / "warm-ds"), "warm", config, show_progress=False)
    raw_build(texts, config, scratch / "warm-raw")
    rank_build(texts, config)


def measure_queries(index, raw, rank, queries, rank_queries, k, threads, n_runs) -> Runs:
    """Seconds per batch, relm and raw bm25s alternating at each thread count, rank-bm25 once a run."""
    tok, retriever = raw
    runs: Runs = {"wall": {}, "cpu": {}}
    for r in range(n_runs):
        for t in threads:
            record(runs, f"relm@{t}", timed(relm_search, index, queries, k, t)[0])
            record(runs, f"raw@{t}", timed(raw_search, tok, retriever, queries, k, t)[0])
        record(runs, "rank@1", timed(rank_search, *rank, rank_queries, k)[0])
        print(f"query run {r + 1}/{n_runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs["wall"].items()),
              file=sys.stderr)
    return runs


def agreement(index, raw, rank, queries, rank_queries, k) -> dict[str, Any]:
    """relm vs raw bm25s: identical scores (and ids up to ties at the k-th score); overlap with rank-bm25."""
    s, i = index.search(queries, k)
    rs, ri = raw_search(*raw, queries, k, 1)
    order = np.lexsort((ri, -rs), axis=1)
    rs, ri = np.take_along_axis(rs, order, axis=1), np.take_along_axis(ri, order, axis=1)
    rs_hits = np.where(rs > 0, rs, -np.inf).astype(np.float32)
    same_scores = bool(np.array_equal(s, rs_hits))
    same_ids_rows = int(sum(np.array_equal(a[a >= 0], b[: (a >= 0).sum()]) for a, b in zip(i, ri, strict=True)))
    ranked = rank_search(*rank, rank_queries, k)
    rel = i[: len(rank_queries)]
    overlap = [len(set(a[a >= 0].tolist()) & set(b.tolist())) / k for a, b in zip(rel, ranked, strict=True)]
    return {"relm_raw_identical_scores": same_scores, "relm_raw_identical_id_rows": same_ids_rows,
            "queries": len(queries), "relm_rank_bm25_overlap_at_k": float(np.mean(overlap))}


def ratio(runs: dict[str, list[float]], relm: str, raw: str) -> float:
    """Median over runs of relm's throughput over raw's (raw seconds / relm seconds), pair by pair."""
    return statistics.median(b / a for a, b in zip(runs[relm], runs[raw], strict=True))


def summarize(n: int, nq: int, nq_rank: int, iruns: Runs, qruns: Runs, threads: list[int]) -> dict[str, Any]:
    med = statistics.median
    wall_i, wall_q = iruns["wall"], qruns["wall"]
    return {
        "index_passages_per_s": {s: n / med(v) for s, v in wall_i.items()},
        "index_seconds": {s: med(v) for s, v in wall_i.items()},
        "index_ratio_relm_over_raw": {c: ratio(iruns[c], "relm", "raw") for c in ("wall", "cpu")},
        "queries_per_s": {s: (nq_rank if s.startswith("rank") else nq) / med(v) for s, v in wall_q.items()},
        "query_ratio_relm_over_raw": {
            c: {str(t): ratio(qruns[c], f"relm@{t}", f"raw@{t}") for t in threads} for c in ("wall", "cpu")
        },
    }


def table(s: dict[str, Any], info: dict[str, Any]) -> str:
    threads = info["threads"]
    qcols = " | ".join(f"queries/s, {t} thread{'s' if t > 1 else ''}" for t in threads)
    lines = [f"| system | index passages/s | index s | {qcols} | queries timed |",
             "|" + "---|" * (4 + len(threads))]
    names = {"relm": "relm BM25", "raw": "raw bm25s", "rank": "rank-bm25 BM25Okapi"}
    for name in ("relm", "raw", "rank"):
        q = " | ".join(
            f"{s['queries_per_s'][f'{name}@{t}']:,.0f}" if f"{name}@{t}" in s["queries_per_s"] else "n/a"
            for t in threads
        )
        timed_q = f"{info['queries']:,}" if name != "rank" else f"{info['rank_queries']:,} (capped)"
        lines.append(f"| {names[name]} | {s['index_passages_per_s'][name]:,.0f} | {s['index_seconds'][name]:.2f} "
                     f"| {q} | {timed_q} |")
    ir, qr = s["index_ratio_relm_over_raw"], s["query_ratio_relm_over_raw"]
    ratios = " | ".join(f"**{qr['wall'][str(t)]:.3f}** ({qr['cpu'][str(t)]:.3f})" for t in threads)
    lines.append(f"| relm / raw bm25s, wall (CPU); target >= 0.95 | **{ir['wall']:.3f}** ({ir['cpu']:.3f}) "
                 f"| | {ratios} | |")
    a = info["agreement"]
    lines += [
        "",
        f"{info['passages']:,} passages ({info['source']}), {info['vocabulary_size']:,} terms; {info['queries']:,} "
        f"queries of 8-16 words from {info['query_source']} ({info['dropped_queries']} without an indexed term "
        f"dropped), k = {info['k']}; medians of {info['index_runs']} indexing and {info['query_runs']} query runs "
        f"on {info['cpus']} CPUs shared with other jobs (load average {info['load_average']:.1f} at the start); "
        f"ratios are medians of per-run pairs, by wall clock and by this process's CPU time. Index on disk: "
        f"relm {info['disk_mb']['relm']:.1f} MB, raw bm25s {info['disk_mb']['raw']:.1f} MB (rank-bm25 has no "
        f"save format).",
        "",
        f"relm and raw bm25s return identical scores: {a['relm_raw_identical_scores']} "
        f"({a['relm_raw_identical_id_rows']:,}/{a['queries']:,} rows with identical ids; any others differ only in "
        f"which of equal-scored passages fill the last places). Top-{info['k']} overlap with rank-bm25 (Robertson "
        f"idf): {a['relm_rank_bm25_overlap_at_k']:.2f}.",
    ]
    return "\n".join(lines)




def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datastore", type=Path, default=HERE / ".cache" / "corpus-ds")
    p.add_argument("--corpus", type=Path, default=SHARED_DATA / "corpus")
    p.add_argument("--eval", type=Path, default=SHARED_DATA / "eval", help="held-out documents for queries")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--rank-queries", type=int, default=100, help="rank-bm25's cap (it is slow per query)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--index-runs", type=int, default=5)
    p.add_argument("--query-runs", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true", help="do not write the table into benchmarks/README.md")
    args = p.parse_args()

    from relm.retrieval import BM25Config, BM25Index

    config = BM25Config()
    cpus = os.cpu_count() or 1
    threads = sorted({1, cpus})
    with tempfile.TemporaryDirectory(prefix="bm25-bench-") as tmp:
        scratch = Path(tmp)
        ds, texts, source = open_passages(args.datastore, args.corpus, scratch)
        print(f"{len(texts):,} passages from {source}", file=sys.stderr)
        load = os.getloadavg()[0]
        iruns, rank = measure_indexing(ds, texts, config, args.index_runs, scratch)
        index = BM25Index.open(ds, INDEX_NAME, mmap=True)
        raw = raw_open(config, scratch / "raw-bm25s")
        queries, query_source = make_queries(args.eval, texts, args.queries, args.seed)
        kept = [q for q, ids in zip(queries, index.tokenize(queries), strict=True) if ids]
        rank_queries = kept[: args.rank_queries]
        qruns = measure_queries(index, raw, rank, kept, rank_queries, args.k, threads, args.query_runs)
        info = {
            "passages": len(texts), "source": source, "vocabulary_size": index.vocabulary_size,
            "queries": len(kept), "dropped_queries": len(queries) - len(kept), "query_source": query_source,
            "rank_queries": len(rank_queries), "k": args.k, "threads": threads, "cpus": cpus, "load_average": load,
            "index_runs": args.index_runs, "query_runs": args.query_runs, "params": index.meta["params"],
            "disk_mb": {"relm": dir_mb(Path(ds.root) / "indexes" / INDEX_NAME), "raw": dir_mb(scratch / "raw-bm25s")},
            "agreement": agreement(index, raw, rank, kept, rank_queries, args.k),
            "relm_stage_seconds": index.meta["stage_seconds"],
        }
        if not isinstance(ds, PassageList):  # leave the cached datastore as it was found
            shutil.rmtree(Path(ds.root) / "indexes" / INDEX_NAME, ignore_errors=True)
            if not any((Path(ds.root) / "indexes").iterdir()):
                (Path(ds.root) / "indexes").rmdir()
    summary = summarize(len(texts), len(kept), len(rank_queries), iruns, qruns, threads)
    text = table(summary, info)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**info, **summary, "index_seconds_runs": iruns, "query_seconds_runs": qruns},
                                  indent=2) + "\n")
    if not args.no_readme:
        write_readme_table("bm25_bench", text)


if __name__ == "__main__":
    main()
