"""`relm index DS --name NAME ...`: build a faiss ANN, BM25 or sharded index inside a datastore."""

from __future__ import annotations

import json

from ..distributed.runtime import add_ray_arguments, ray_config
from ..errors import ConfigError
from .common import HelpFormatter, add_progress_flags, add_wait_flag, parse_bytes, writing


def register(sub) -> None:
    p = sub.add_parser(
        "index",
        help="build an ANN (faiss), BM25 or sharded index",
        description="Build an index under DS/indexes/NAME/. Dense: --factory takes a preset "
        "(flat, hnsw, ivfpq, ivf-hnsw-pq, opq-ivfpq), any faiss index_factory string, or 'auto' (planned "
        "for --memory-budget). Sparse: --bm25. Sharded: --shards N --shard-by kmeans|lsh|domain.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--name", help="index name (a directory under DS/indexes/)")
    p.add_argument("--refresh", action="store_true",
                   help="bring every stale index up to date (append what it can, rebuild the rest)")
    p.add_argument("--remove", metavar="NAME", help="delete index NAME")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--factory", help="faiss preset or index_factory string, or 'auto' (default: hnsw)")
    kind.add_argument("--bm25", action="store_true", help="a BM25 index over the passage text (bm25s)")
    kind.add_argument("--shards", type=int, metavar="N", help="a sharded index of N shards")
    p.add_argument("--shard-by", choices=["kmeans", "lsh", "domain"],
                   help="a sharded index partitioned this way (kmeans with --shards alone; "
                   "domain: one shard per domain)")
    p.add_argument("--shard-factory", default="Flat", help="sharded: faiss index_factory string per shard")
    bm = p.add_argument_group("BM25 (with --bm25; defaults: bm25s's Lucene BM25)")
    bm.add_argument("--bm25-method", default="lucene", help="lucene, robertson or atire")
    bm.add_argument("--k1", type=float, default=1.5, help="term-frequency saturation")
    bm.add_argument("--b", type=float, default=0.75, help="length normalisation, in [0, 1]")
    bm.add_argument("--stopwords", default="en", help="a bm25s stopword list name, or 'none'")
    bm.add_argument("--stemmer", default="english", help="a PyStemmer algorithm, or 'none'")
    p.add_argument("--memory-budget", help="with --factory auto: RAM for the index, e.g. 8GB, 512MB")
    p.add_argument("--train-size", type=int, help="training sample (default: chosen from the list count)")
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    p.add_argument("--nprobe", type=int, help="default IVF lists probed at search")
    p.add_argument("--ef-search", type=int, help="default HNSW efSearch at search")
    p.add_argument("--refine", type=int, dest="refine_factor",
                   help="re-score k x REFINE candidates exactly from the float16 vectors (0: off)")
    p.add_argument("--tune", action="store_true", help="pick the cheapest knobs reaching --target-recall")
    p.add_argument("--target-recall", type=float, default=0.95, help="with --tune: recall@k to reach")
    p.add_argument("--tune-k", type=int, default=10, help="with --tune: the k of recall@k")
    p.add_argument("--tune-queries", type=int, default=1000, help="with --tune: query sample size")
    p.add_argument("--queries", metavar="FILE",
                   help="with --tune: held-out query texts (a query file, or held-out documents cut into "
                   "256-word passages; default: a sample of the datastore's own passages, each without itself)")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing index of this name")
    p.add_argument("--json", action="store_true", help="print the index config as JSON")
    add_wait_flag(p)
    add_progress_flags(p)
    add_ray_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..retrieval.indexes import index_transaction

    chosen = [flag for flag, on in (("--name", args.name), ("--refresh", args.refresh), ("--remove", args.remove)) if on]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --name NAME (build), --refresh, --remove NAME")
    if ray_config(args) is not None and args.shards is None and args.shard_by is None:
        raise ConfigError("--ray builds sharded indexes: add --shards N (or --shard-by)")
    with writing(args.datastore, args.wait) as ds:
        if args.refresh:
            from ..retrieval.maintenance import refresh_indexes

            names = refresh_indexes(ds)
            print(f"refreshed indexes: {', '.join(names) or 'none (every index is up to date)'}")
            return 0
        if args.remove:
            from ..retrieval.maintenance import remove_index

            remove_index(ds, args.remove)
            print(f"removed index {args.remove!r} from {ds.root}")
            return 0
        with index_transaction(ds) as view:  # build (and tune) beside the live index, one commit
            config = _build(view, args)
    from ..retrieval.indexes import read_index_config

    config = read_index_config(ds, args.name)
    if args.json:
        print(json.dumps(config, indent=2))
    else:
        print(f"index {args.name!r} ({config['type']}) built in {ds.root}/indexes/{args.name}")
    return 0


def _build(ds, args) -> dict:
    if args.bm25:
        from ..retrieval.bm25 import BM25Config, build_bm25_index

        none = lambda v: None if v is None or v.lower() == "none" else v  # noqa: E731
        config = BM25Config(method=args.bm25_method, k1=args.k1, b=args.b, stopwords=none(args.stopwords),
                            stemmer=none(args.stemmer))
        index = build_bm25_index(ds, args.name, config, overwrite=args.overwrite,
                                 show_progress=args.progress)
        config = index.meta
    elif args.shards is not None or args.shard_by is not None:
        from ..retrieval.sharding import ShardConfig, build_sharded_index

        shard_config = ShardConfig(by=args.shard_by or "kmeans", n_shards=args.shards or 8,
                                   factory=args.shard_factory, seed=args.seed)
        ray = ray_config(args)
        if ray is None:
            index = build_sharded_index(ds, args.name, shard_config, overwrite=args.overwrite)
        else:  # each shard trained and filled in its own Ray task
            from ..distributed.index import ray_build_sharded_index

            index = ray_build_sharded_index(ds, args.name, shard_config, overwrite=args.overwrite, ray_config=ray)
        config = index.config
    else:
        config = _build_ann(ds, args)
    return config


def _build_ann(ds, args) -> dict:
    from ..retrieval.ann import AnnConfig, build_ann_index, plan_index, tune_ann_index

    factory = args.factory or "hnsw"
    if factory == "auto":
        if not args.memory_budget:
            raise ConfigError("--factory auto needs --memory-budget (e.g. 8GB)")
        plan = plan_index(len(ds), ds.dim, parse_bytes(args.memory_budget))
        print(f"plan: {plan.factory} — memory ~{plan.est_memory_bytes / 2**20:,.0f} MiB, "
              f"disk ~{plan.est_disk_bytes / 2**20:,.0f} MiB, build ~{plan.est_build_seconds:,.0f} s ({plan.reason})")
        factory = plan.factory
    elif args.memory_budget:
        raise ConfigError("--memory-budget only applies to --factory auto")
    knobs = {k: getattr(args, k) for k in ("nprobe", "ef_search", "refine_factor") if getattr(args, k) is not None}
    config = AnnConfig(factory=factory, train_size=args.train_size, seed=args.seed, **knobs)
    index = build_ann_index(ds, args.name, config, overwrite=args.overwrite, show_progress=args.progress)
    if args.tune:
        from .index_eval import tuning_table

        result = tune_ann_index(ds, args.name, target_recall=args.target_recall, k=args.tune_k,
                                n_queries=args.tune_queries, seed=args.seed, queries_file=args.queries)
        print(tuning_table(result))
    elif args.queries:
        raise ConfigError("--queries applies to --tune")
    from ..retrieval.ann import AnnIndex

    del index
    return AnnIndex.open(ds, args.name).config
