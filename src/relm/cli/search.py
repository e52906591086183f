"""`relm search DS QUERY` or `relm search DS --queries FILE`: exact dense search."""

from __future__ import annotations

import json
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
    f.add_argument("--before", help="only documents dated before this (ISO 8601 or epoch seconds)")
    f.add_argument("--after", help="only documents dated at or after this")
    f.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    f.add_argument("--threshold", type=float, help="drop hits scoring below this")
    f.add_argument("--adaptive-k", type=float, metavar="GAP",
                   help="cut each list at its largest score drop when that drop exceeds GAP")
    f.add_argument("--cache-mb", type=float, default=0, help="LRU result cache size for batches (0: off)")
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
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, n, "bad_json", f"malformed JSON ({e.msg})") from e
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


def run(args) -> int:
    from ..datastore import Datastore

    if (args.query is None) == (args.queries is None):
        raise ConfigError("give either a QUERY or --queries FILE")
    if args.k <= 0:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    from ..retrieval.retriever import make_retriever

    ds = Datastore.open(args.datastore)
    queries = [("1", args.query)] if args.query is not None else read_queries(args.queries)
    retriever = make_retriever(
        ds, args.retriever, index=args.index, bm25_index=args.bm25_index, fusion=args.fusion,
        candidates=args.candidates, alpha=args.alpha, nprobe=args.nprobe, ef_search=args.ef_search,
        refine_factor=args.refine_factor, probe_shards=args.probe_shards,
        cache_bytes=int(args.cache_mb * 2**20),
    )
    results = retriever.search(
        [q for _, q in queries], args.k,
        before=_time(args.before, "--before"), after=_time(args.after, "--after"), domains=args.domain or None,
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
            for (qid, q), hits in zip(queries, results, strict=True):
                out.write(json.dumps({"id": qid, "query": q, "hits": [h.to_dict() for h in hits]},
                                     ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _time(value: str | None, flag: str) -> int | None:
    from ..corpus.documents import parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as e:
        raise ConfigError(f"{flag} {value!r}: {e}; use ISO 8601 (2020-01-31) or epoch seconds") from e


def _print_hits(hits, out) -> None:
    for rank, h in enumerate(hits, 1):
        title = f" {h.title}" if h.title else ""
        out.write(f"{rank:>2}. {h.score:.4f}  [{h.domain}] {h.doc_id}{title}  (passage {h.passage_id})\n")
        text = " ".join(h.text.split())
        out.write(f"    {text[:300]}{'...' if len(text) > 300 else ''}\n")
