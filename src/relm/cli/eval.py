"""`relm eval DS EVAL...`: perplexity and bits per byte of an LM with and without retrieval."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .common import HelpFormatter, add_progress_flags, add_query_backend_flags, open_for_queries
from .search import add_retriever_arguments, retriever_config, strict_json


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate an LM with and without retrieval",
        description="Pack the eval documents into token windows (one stream per eval file and domain), score "
        "the second part of each window without retrieval and with each retrieval variant, and report token "
        "perplexity, loss and true bits per byte side by side, per eval set/domain and overall, with paired "
        "bootstrap intervals. Writes summary.json, windows.jsonl, table.md and eval.png to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("datastore", metavar="DS")
    p.add_argument("eval", nargs="+", metavar="EVAL", help="eval files or directories (any format relm build reads)")
    add_eval_arguments(p)
    p.add_argument("--out", "-o", metavar="DIR", help="output directory (default: runs/eval-<time>)")
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def add_eval_arguments(p, *, rename: dict[str, str] | None = None) -> None:
    """Flags shared by `relm eval` and `relm scale`: the LM, windows, retrieval and filters; `rename`
    renames retriever flags the command uses for something else."""
    m = p.add_argument_group("language model")
    m.add_argument("--lm", default="smollm2", help="'smollm2', a local HF model directory or a .gguf file")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    m.add_argument("--threads", type=int, help="torch CPU threads")
    m.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per LM batch")
    m.add_argument("--batch-size", type=int, help="at most this many sequences per LM batch")
    m.add_argument("--max-context", type=int, help="cap the LM input (default: the LM's context length)")
    w = p.add_argument_group("windows")
    w.add_argument("--window", type=int, default=1024, help="tokens per window")
    w.add_argument("--stride", type=int, help="scored tokens per window (default: window / 2)")
    w.add_argument("--max-windows", type=int, help="at most N windows per eval stream (evenly spaced)")
    r = p.add_argument_group("retrieval")
    r.add_argument("--variants", default="massiveds",
                   help="comma list of: massiveds, last-q, hybrid, rerank, adaptive, ralm, ralm-stale (queries "
                   "one stride old, as generation's prefetch), ralm-adaptive (k per block online; --adaptive-k)")
    r.add_argument("-k", type=int, default=3, help="passages per window")
    r.add_argument("--query-tokens", type=int, default=32, help="q: tokens in a last-q / ralm query")
    r.add_argument("--ralm-stride", type=int, default=32, help="ralm: retrieve every s tokens")
    r.add_argument("--rerank-candidates", type=int, default=8, help="rerank: candidates the LM reorders")
    r.add_argument("--adaptive-k", metavar="FILE",
                   help="ralm-adaptive: thresholds from `relm generate DS --calibrate-adaptive HELD_OUT -o FILE` "
                   "(calibrate on other text than the eval set)")
    r.add_argument("--query-truncation", default="left", choices=["left", "right"],
                   help="a query longer than the encoder reads keeps its end (left: the tokens next to the "
                   "scored text) or its start (right: the encoder's default, as in relm search)")
    add_retriever_arguments(p, rename={"batch_size": "--query-batch-size", **(rename or {})})
    f = p.add_argument_group("filters on retrieved passages")
    f.add_argument("--no-decontaminate", dest="decontaminate", action="store_false",
                   help="keep passages that copy the scored text (13-gram Jaccard > 0.8 or ≥ 32 shared words)")
    f.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep near-duplicate passages")
    f.add_argument("--min-words", type=int, default=0, help="drop passages shorter than this")
    add_progress_flags(p)


def check_args(args, variants):
    """Every flag and every variant's requirements, checked before the datastore or the LM is loaded;
    returns the `RetrieverConfig`."""
    from ..config import check_int
    from ..eval.evaluate import check_variants

    check_int(args.max_batch_tokens, "--max-batch-tokens", minimum=1)
    check_int(args.batch_size, "--batch-size", minimum=1, optional=True)
    check_int(args.threads, "--threads", minimum=1, optional=True)
    check_int(args.max_context, "--max-context", minimum=2, optional=True)
    check_int(args.min_words, "--min-words", minimum=0)
    config = retriever_config(args)
    check_variants(variants, config)
    check_hybrid_depth(variants, config)
    return config


def check_hybrid_depth(variants, config) -> None:
    """A hybrid variant searches CANDIDATE_SLACK x its k passages, which must fit in the hybrid's candidates
    (it fuses each run's top candidates for every k; see `retriever.check_hybrid_k`): refused before any scoring."""
    from ..errors import ConfigError
    from ..eval.evaluate import CANDIDATE_SLACK

    for v in variants:
        if (v.retriever or config.kind) == "hybrid":
            want = max(v.k, v.rerank) * CANDIDATE_SLACK
            if want > config.candidates:
                raise ConfigError(f"variant {v.name!r} searches {CANDIDATE_SLACK} x {max(v.k, v.rerank)} = {want} "
                                  f"hybrid candidates, more than --candidates {config.candidates}; pass --candidates "
                                  f"{want} or more")


def make_evaluator(args, variants=None):
    from ..eval.evaluate import Evaluator
    from ..eval.filters import PassageFilter
    from ..eval.windows import WindowConfig
    from ..lm import LMConfig, load_lm
    from ..retrieval.retriever import Retriever

    variants = variants_from(args) if variants is None else variants
    config = check_args(args, variants)
    windows = WindowConfig(args.window, args.stride, args.max_windows)
    filters = PassageFilter(decontaminate=args.decontaminate, dedup=args.dedup, min_words=args.min_words)
    lm_config = LMConfig(model=args.lm, device=args.device, dtype=args.dtype,
                         max_batch_tokens=args.max_batch_tokens, threads=args.threads)
    ds = open_for_queries(args.datastore, args)
    ds.encoder()  # fail early when the datastore's encoder is unavailable
    retriever = Retriever(ds, config)  # a missing or stale index fails now, not after scoring
    for v in variants:
        if v.retriever is not None:
            retriever.with_kind(v.retriever)  # and so does a variant's (e.g. hybrid's BM25 index)
    lm = load_lm(lm_config)
    return Evaluator(retriever, lm, windows=windows, filters=filters, max_context=args.max_context,
                     batch_size=args.batch_size, show_progress=args.progress, query_truncation=args.query_truncation)


def variants_from(args):
    from ..eval.variants import parse_variants
    from ..generation.adaptive import AdaptiveK

    online = AdaptiveK.load(args.adaptive_k) if getattr(args, "adaptive_k", None) else None
    return parse_variants(args.variants, k=args.k, query_tokens=args.query_tokens, stride=args.ralm_stride,
                          rerank=args.rerank_candidates, online=online)


def table_notes(summary) -> str:
    """What the table cannot show on its own: unstarred small comparisons and short windows."""
    notes = []
    groups = {"overall": summary["overall"], **summary["groups"]}
    few = sorted({m[vs]["windows"] for block in groups.values() for m in block.values()
                  for vs in ("vs_none", "vs_reference") if vs in m and m[vs].get("note")})
    if few:
        notes.append(f"comparisons over fewer than {summary['min_significance_windows']} windows are never "
                     f"starred (here {', '.join(map(str, few))} window(s)): too few for a bootstrap interval")
    if summary.get("short_windows"):
        notes.append(f"{summary['short_windows']} window(s) come from eval text shorter than --window "
                     f"{summary['settings']['windows']['window']} tokens and have a proportionally shorter "
                     "context ('short' in windows.jsonl)")
    return "".join(f"\n{n}" for n in notes)


def run(args) -> int:
    from ..artifacts import write_json_atomic
    from ..eval.report import eval_table, plot_eval
    from ..eval.windows import read_eval_sets

    variants = variants_from(args)
    check_args(args, variants)
    eval_sets = read_eval_sets(args.eval)
    ev = make_evaluator(args, variants)
    t0 = time.perf_counter()
    result = ev.run(eval_sets, variants)
    summary = result.summary()
    summary["seconds_total"] = time.perf_counter() - t0
    summary["command"] = "relm eval " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else None
    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    with open(out / "windows.jsonl.tmp", "w") as f:
        for rec in result.window_records():
            f.write(json.dumps(strict_json(rec)[0], allow_nan=False) + "\n")
    (out / "windows.jsonl.tmp").replace(out / "windows.jsonl")
    table = eval_table(summary) + table_notes(summary)
    (out / "table.md").write_text(table + "\n")
    plot_eval(summary, out / "eval.png")
    print(table)
    removed = {name: {k: v for k, v in counts.items() if v} for name, counts in summary["filters"].items()}
    print(f"\npassages removed by filters: {json.dumps(removed)}")
    print(f"{len(result.windows)} windows in {summary['seconds_total']:.0f}s; wrote {out}/"
          "{summary.json, windows.jsonl, table.md, eval.png}")
    return 0
