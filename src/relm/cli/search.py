"""`relm search DS QUERY` or `relm search DS --queries FILE`: any retriever, filters, threshold, adaptive k.

Also the retriever flags every command that searches shares (`add_retriever_arguments`).
"""

from __future__ import annotations

import json
import math
import sys

from ..corpus.queries import read_queries
from ..distributed.runtime import add_ray_arguments, ray_config
from ..errors import ConfigError
from .common import HelpFormatter, add_query_backend_flags, open_for_queries


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a datastore",
        description="Search with any retriever (exact inner product by default). One query from the command "
        "line, or a batch from --queries (a .jsonl file with 'id' and 'query' or 'text', a .tsv of "
        "'id<TAB>query', or one query per line).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("datastore", metavar="DS")
    p.add_argument("query", nargs="?", help="the query text (or use --queries)")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--queries", metavar="FILE", help="batch of queries (.jsonl, .tsv or lines; .gz/.zst read too)")
    p.add_argument("--query-id-field", metavar="FIELD",
                   help="JSONL queries: the id field (default: 'id', or BEIR's '_id' when the file uses it)")
    p.add_argument("--output", "-o", metavar="FILE", help="write results here instead of stdout")
    p.add_argument("--format", choices=["jsonl", "trec"], default="jsonl",
                   help="one JSON line per query (hits with text and metadata), or a TREC run (qid Q0 id rank score "
                   "run; ids and scores only, no text is read)")
    p.add_argument("--level", choices=["passage", "doc"], default="passage",
                   help="TREC run of passage numbers, or of the datastore's document ids (passage hits aggregated "
                   "by --doc-agg; -k counts passages), what qrels judge")
    p.add_argument("--doc-agg", default="max", choices=["max", "first", "sum"],
                   help="--level doc: a document's score from its passages' (max: MaxP, first, sum)")
    p.add_argument("--run-name", default="relm", help="TREC run tag")
    p.add_argument("--json", action="store_true", help="single query: print JSON")
    add_retriever_arguments(p)
    add_ray_arguments(p, search=True)
    f = p.add_argument_group("filters")
    f.add_argument("--before", metavar="TIME",
                   help="only documents dated before this: ISO 8601 (2020-01-31) or epoch seconds "
                   "(negative before 1970: --before -86400, or --before=-1e9 with an exponent)")
    f.add_argument("--after", metavar="TIME", help="only documents dated at or after this (same formats)")
    f.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    f.add_argument("--threshold", type=float,
                   help="drop hits scoring below this, on the retriever's raw scale: exact/ann/sharded and hybrid "
                   "hierarchical: cosine in [-1, 1] (normalized embeddings, the default); bm25: > 0, unbounded; "
                   "hybrid rrf: sum of 1/(rrf_k + rank) over 2 runs, at most 2/61 = 0.0328; hybrid interpolate: "
                   "in [0, 1]")
    f.add_argument("--adaptive-k", type=float, metavar="GAP",
                   help="cut each list at its largest score drop when that drop exceeds GAP (>= 0)")
    f.add_argument("--adaptive-ratio", type=float, metavar="R",
                   help="adaptive k: keep hits scoring at least R x the best (in [0, 1])")
    f.add_argument("--adaptive-min-k", type=int, default=1, metavar="N", help="adaptive k: keep at least N hits")
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def add_retriever_arguments(p, *, rename: dict[str, str] | None = None, group=None) -> None:
    """The flags of a `RetrieverConfig`, one per field (`relm search`, `relm eval`, `relm scale`,
    `relm retro`); `rename` gives a field another flag where the command uses the default for something
    else (e.g. {"batch_size": "--query-batch-size"} beside an LM's --batch-size)."""
    from ..retrieval.options import FLAGS, FUSIONS, RETRIEVERS

    flags = {**FLAGS, **(rename or {})}
    dests = {f: {"kind": "retriever", "refine_factor": "refine_factor", "cache_bytes": "cache_mb"}.get(
        f, flag.lstrip("-").replace("-", "_")) for f, flag in flags.items()}
    r = group or p.add_argument_group("retriever")

    def add(field: str, **kw) -> None:
        r.add_argument(flags[field], dest=dests[field], **kw)

    add("kind", default="exact", choices=list(RETRIEVERS),
        help="how to search (ann/sharded need --index, bm25 a BM25 --index or --bm25-index, hybrid --bm25-index)")
    add("index", metavar="NAME", help="the faiss or sharded index (bm25: the BM25 index); hybrid: dense ANN index")
    add("bm25_index", metavar="NAME", help="the BM25 index of bm25 and hybrid (and of an eval hybrid variant)")
    add("fusion", default="rrf", choices=list(FUSIONS),
        help="hybrid: reciprocal rank fusion, score interpolation, or BM25 top-N -> dense re-score")
    add("candidates", type=int, default=100, metavar="N", help="hybrid: candidates taken from each run")
    add("alpha", type=float, default=0.5, metavar="A", help="hybrid interpolate: weight of the dense score")
    add("rrf_k", type=int, default=60, metavar="N", help="hybrid rrf: the rank offset N of 1 / (N + rank)")
    add("nprobe", type=int, metavar="N", help="ann: IVF lists to probe (default: the index's tuned value)")
    add("ef_search", type=int, metavar="N", help="ann: HNSW efSearch (default: the index's tuned value)")
    add("refine_factor", type=int, metavar="N", help="ann: exact re-score of k x N candidates")
    add("probe_shards", type=int, metavar="N", help="sharded: search only the N nearest shards")
    add("batch_size", type=int, default=64, metavar="N", help="query encoding batch size")
    add("cache_bytes", type=float, default=0, metavar="MB", help="LRU result cache size in MiB (>= 0; 0: off)")
    p.set_defaults(retriever_flags={f: (flags[f], dests[f]) for f in flags})


def retriever_config(args):
    """The `RetrieverConfig` of the flags `add_retriever_arguments` added, each checked under its flag."""
    from ..config import check_float
    from ..retrieval.options import RetrieverConfig, check_numbers

    flags = args.retriever_flags
    values = {f: getattr(args, dest) for f, (_, dest) in flags.items()}
    cache_mb = check_float(values.pop("cache_bytes"), f"{flags['cache_bytes'][0]} (0: off)", minimum=0, maximum=1e6)
    values |= check_numbers(values, lambda f: flags[f][0])
    values["cache_bytes"] = int(cache_mb * 2**20)
    return RetrieverConfig(**values)


def search_options(args):
    """The `SearchOptions` of `relm search`'s -k and filter flags, each checked under its flag."""
    from ..config import check_float, check_int
    from ..retrieval.options import AdaptiveK, SearchOptions, time_bound

    if args.k <= 0:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    check_float(args.threshold, "--threshold", optional=True)
    check_float(args.adaptive_k, "--adaptive-k GAP (a score drop)", minimum=0, optional=True)
    check_float(args.adaptive_ratio, "--adaptive-ratio", minimum=0, maximum=1, optional=True)
    check_int(args.adaptive_min_k, "--adaptive-min-k", minimum=0)
    adaptive = None
    if args.adaptive_k is not None or args.adaptive_ratio is not None:
        adaptive = AdaptiveK(max_drop=args.adaptive_k, max_ratio=args.adaptive_ratio or 0.0,
                             min_k=args.adaptive_min_k)
    return SearchOptions(k=args.k, before=time_bound(args.before, "--before"), after=time_bound(args.after, "--after"),
                         domains=tuple(args.domain), threshold=args.threshold, adaptive=adaptive)


def check_args(args):
    """Every flag checked before the datastore is opened: (RetrieverConfig, SearchOptions)."""
    if (args.query is None) == (args.queries is None):
        raise ConfigError("give either a QUERY or --queries FILE")
    if args.level == "doc" and args.format != "trec":
        raise ConfigError("--level doc writes a document-level TREC run; add --format trec")
    opts = search_options(args)
    return retriever_config(args), opts


def run(args) -> int:
    from ..retrieval.retriever import Retriever

    config, opts = check_args(args)
    ray = ray_config(args)
    ds = open_for_queries(args.datastore, args)
    queries = [("1", args.query)] if args.query is not None else read_queries(args.queries, args.query_id_field)
    if ray is None:
        return _answer(args, ds, queries, Retriever(ds, config), opts)
    from ..distributed.search import RayShards

    shards = RayShards(ray)
    try:
        return _answer(args, ds, queries, shards.retriever(ds, config), opts)
    finally:
        shards.close()


def _answer(args, ds, queries, retriever, opts) -> int:
    import numpy as np

    texts = [q for _, q in queries]
    if args.format == "trec":  # ids and scores only: no passage text or document record is read per hit
        scores, ids = retriever.search_ids(texts, opts)
        n_hits = [int(np.count_nonzero(row != -1)) for row in ids]
    else:
        results = retriever.search(texts, opts)
        n_hits = [len(hits) for hits in results]
    if retriever.cache is not None:
        st = retriever.cache.stats
        print(f"cache: {st.hits} hits, {st.misses} misses (hit rate {st.hit_rate:.1%})", file=sys.stderr)
    _say_if_empty(n_hits)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "trec":
            out.writelines(trec_run(ds, [q for q, _ in queries], scores, ids, args.level, args.doc_agg,
                                    args.run_name))
        elif args.query is not None and not args.json and not args.output:
            _print_hits(results[0], out)
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


def trec_run(ds, qids: list[str], scores, ids, level: str = "passage", agg: str = "max", name: str = "relm"):
    """TREC run lines of passage results (nq, k): passage numbers, or (`level="doc"`) the datastore's document
    ids with passage hits aggregated as `relm eval-retrieval` does (`eval.retrieval.doc_run`)."""
    from ..eval.retrieval import doc_run, trec_lines

    if level == "doc":
        yield from trec_lines(doc_run(ds, qids, scores, ids, agg), name)
        return
    for qid, s_row, i_row in zip(qids, scores.tolist(), ids.tolist(), strict=True):
        for rank, (s, i) in enumerate(((s, i) for s, i in zip(s_row, i_row, strict=True) if i != -1), 1):
            yield f"{qid} Q0 {i} {rank} {s:.6f} {name}\n"


def _say_if_empty(n_hits: list[int]) -> None:
    """An empty answer says so on stderr (the reason, when relm knows one, was logged before it)."""
    empty = sum(n == 0 for n in n_hits)
    if empty and len(n_hits) == 1:
        print("relm search: no hits", file=sys.stderr)
    elif empty:
        print(f"relm search: {empty} of {len(n_hits)} queries have no hits", file=sys.stderr)


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


def _print_hits(hits, out) -> None:
    for rank, h in enumerate(hits, 1):
        title = f" {h.title}" if h.title else ""
        out.write(f"{rank:>2}. {h.score:.4f}  [{h.domain}] {h.doc_id}{title}  (passage {h.passage_id})\n")
        text = " ".join(h.text.split())
        out.write(f"    {text[:300]}{'...' if len(text) > 300 else ''}\n")
