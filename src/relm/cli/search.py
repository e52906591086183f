"""`relm search DS QUERY` or `relm search DS --queries FILE`: exact dense search."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import ConfigError, InputError
from .common import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a datastore",
        description="Exact inner-product search. One query from the command line, or a batch from --queries "
        "(a .jsonl file with 'id' and 'query' or 'text', a .tsv of 'id<TAB>query', or one query per line).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("datastore", metavar="DS")
    p.add_argument("query", nargs="?", help="the query text (or use --queries)")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--queries", metavar="FILE", help="batch of queries")
    p.add_argument("--output", "-o", metavar="FILE", help="write results here instead of stdout")
    p.add_argument("--format", choices=["jsonl", "trec"], default="jsonl",
                   help="batch output: one JSON line per query, or a TREC run (qid Q0 passage_id rank score run)")
    p.add_argument("--run-name", default="relm", help="TREC run tag")
    p.add_argument("--json", action="store_true", help="single query: print JSON")
    p.add_argument("--batch-size", type=int, default=64, help="query encoding batch size")
    r = p.add_argument_group("retrieval")
    r.add_argument("--retriever", default="exact", choices=["exact", "ann", "bm25", "hybrid", "sharded"],
                   help="how to search (ann/bm25/sharded need --index; hybrid needs --bm25-index)")
    r.add_argument("--index", metavar="NAME", help="the faiss, BM25 or sharded index to use")
    r.add_argument("--bm25-index", metavar="NAME", help="hybrid: the BM25 index")
    r.add_argument("--fusion", default="rrf", choices=["rrf", "interpolate", "hierarchical"],
                   help="hybrid: reciprocal rank fusion, score interpolation, or BM25 top-N -> dense re-score")
    r.add_argument("--candidates", type=int, default=100, help="hybrid: candidates taken from each run")
    r.add_argument("--alpha", type=float, default=0.5, help="hybrid interpolate: weight of the dense score")
    r.add_argument("--nprobe", type=int, help="ann: IVF lists to probe (default: the index's tuned value)")
    r.add_argument("--ef-search", type=int, help="ann: HNSW efSearch (default: the index's tuned value)")
    r.add_argument("--refine", type=int, dest="refine_factor", help="ann: exact re-score of k x REFINE")
    r.add_argument("--probe-shards", type=int, help="sharded: search only the N nearest shards")
    f = p.add_argument_group("filters")
    f.add_argument("--before", metavar="TIME",
                   help="only documents dated before this: ISO 8601 (2020-01-31) or epoch seconds "
                   "(negative before 1970: --before -86400, or --before=-1e9 with an exponent)")
    f.add_argument("--after", metavar="TIME", help="only documents dated at or after this (same formats)")
    f.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    f.add_argument("--threshold", type=float, help="drop hits scoring below this (a finite number)")
    f.add_argument("--adaptive-k", type=float, metavar="GAP",
                   help="cut each list at its largest score drop when that drop exceeds GAP (>= 0)")
    f.add_argument("--cache-mb", type=float, default=0, help="LRU result cache size for batches (>= 0; 0: off)")
    p.set_defaults(run=run)


def read_queries(path: str) -> list[tuple[str, str]]:
    """(id, text) pairs from .jsonl, .tsv or plain lines (ids are line numbers there)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(path, None, "missing", "no such query file")
    out = []
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise InputError(path, None, "non_utf8", f"not UTF-8 ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line, parse_constant=_no_constant)
            except json.JSONDecodeError as e:
                raise InputError(path, n, "bad_json", f"malformed JSON ({e.msg})") from e
            except ValueError as e:
                raise InputError(path, n, "bad_json", f"{e} is not valid JSON; write null or a number") from e
            text = obj.get("query", obj.get("text")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise InputError(path, n, "missing_text", "expected an object with a 'query' or 'text' string")
            out.append((str(obj.get("id", n)), text))
        elif p.suffix == ".tsv":
            qid, sep, text = line.partition("\t")
            if not sep:
                raise InputError(path, n, "bad_tsv", "expected 'id<TAB>query'")
            out.append((qid, text))
        else:
            out.append((str(n), line))
    if not out:
        raise InputError(path, None, "empty_file", "no queries in file")
    return out


def check_args(args) -> tuple[int | None, int | None]:
    """Every flag checked before the datastore is opened; returns the (--before, --after) bounds."""
    from ..config import check_float, check_int

    if (args.query is None) == (args.queries is None):
        raise ConfigError("give either a QUERY or --queries FILE")
    if args.k <= 0:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    check_int(args.batch_size, "--batch-size", minimum=1)
    check_int(args.candidates, "--candidates", minimum=1)
    check_float(args.alpha, "--alpha", minimum=0, maximum=1)
    for flag, value in (("--nprobe", args.nprobe), ("--ef-search", args.ef_search),
                        ("--refine", args.refine_factor), ("--probe-shards", args.probe_shards)):
        check_int(value, flag, minimum=1, optional=True)
    check_float(args.threshold, "--threshold", optional=True)
    check_float(args.adaptive_k, "--adaptive-k GAP (a score drop)", minimum=0, optional=True)
    check_float(args.cache_mb, "--cache-mb (0: off)", minimum=0, maximum=1e6)
    before, after = _time(args.before, "--before"), _time(args.after, "--after")
    if before is not None and after is not None and after >= before:
        raise ConfigError(f"--after {args.after} is not earlier than --before {args.before}: no document can match")
    return before, after


def _no_constant(name: str):
    raise ValueError(name)


def run(args) -> int:
    from ..datastore import Datastore

    before, after = check_args(args)
    from ..retrieval.retriever import make_retriever

    ds = Datastore.open(args.datastore)
    queries = [("1", args.query)] if args.query is not None else read_queries(args.queries)
    retriever = make_retriever(
        ds, args.retriever, index=args.index, bm25_index=args.bm25_index, fusion=args.fusion,
        candidates=args.candidates, alpha=args.alpha, nprobe=args.nprobe, ef_search=args.ef_search,
        refine_factor=args.refine_factor, probe_shards=args.probe_shards,
        cache_bytes=int(args.cache_mb * 2**20), batch_size=args.batch_size,
    )
    results = retriever.search(
        [q for _, q in queries], args.k,
        before=before, after=after, domains=args.domain or None,
        threshold=args.threshold, adaptive={"max_drop": args.adaptive_k} if args.adaptive_k is not None else None,
    )
    if retriever.cache is not None:
        st = retriever.cache.stats
        print(f"cache: {st.hits} hits, {st.misses} misses (hit rate {st.hit_rate:.1%})", file=sys.stderr)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.query is not None and not args.json and not args.output:
            _print_hits(results[0], out)
        elif args.format == "trec":
            for (qid, _), hits in zip(queries, results, strict=True):
                for rank, h in enumerate(hits, 1):
                    out.write(f"{qid} Q0 {h.passage_id} {rank} {h.score:.6f} {args.run_name}\n")
        else:
            replaced = 0
            for (qid, q), hits in zip(queries, results, strict=True):
                row, n = strict_json({"id": qid, "query": q, "hits": [h.to_dict() for h in hits]})
                replaced += n
                out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            if replaced:
                print(f"warning: {replaced} NaN/inf value(s) in stored metadata written as null (JSON has no NaN)",
                      file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def strict_json(value):
    """(value with NaN/±inf floats replaced by None, how many were replaced): what `json.dumps(...,
    allow_nan=False)` accepts. A datastore built before NaN was refused at read time may hold some."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = {k: strict_json(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
    if isinstance(value, list | tuple):
        pairs = [strict_json(v) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    return value, 0


def _time(value: str | None, flag: str) -> int | None:
    from ..corpus.documents import TIMESTAMP_FORMATS, parse_timestamp

    if value is None:
        return None
    try:
        ts = parse_timestamp(value)
    except (ValueError, OverflowError) as e:
        hint = "" if "accepted:" in str(e) else f"; accepted: {TIMESTAMP_FORMATS}"
        raise ConfigError(f"{flag} {value!r}: {e}{hint}") from e
    if ts is None:
        raise ConfigError(f"{flag} is empty; accepted: {TIMESTAMP_FORMATS}")
    return ts


def _print_hits(hits, out) -> None:
    for rank, h in enumerate(hits, 1):
        title = f" {h.title}" if h.title else ""
        out.write(f"{rank:>2}. {h.score:.4f}  [{h.domain}] {h.doc_id}{title}  (passage {h.passage_id})\n")
        text = " ".join(h.text.split())
        out.write(f"    {text[:300]}{'...' if len(text) > 300 else ''}\n")
