"""`relm retro neighbours|train|retrofit|eval|generate`: RETRO on a token-mode datastore."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .common import HelpFormatter, add_progress_flags
from .search import add_retriever_arguments, retriever_config


def register(sub) -> None:
    p = sub.add_parser("retro", help="RETRO: neighbours, training, retrofitting, evaluation, generation",
                       description="RETRO (Borgeaud et al. 2021) over a token-mode datastore "
                       "(`relm build ... --chunk-tokens 64`).", formatter_class=HelpFormatter)
    rs = p.add_subparsers(dest="retro_command", metavar="STEP", required=True)

    n = rs.add_parser("neighbours", help="precompute k neighbours [N, F] per chunk", formatter_class=HelpFormatter,
                      description="For every 64-token chunk of the datastore (default: the training stream) or "
                      "of --eval documents, the k nearest datastore chunks from other documents, each with its "
                      "continuation, as memory-mapped arrays with a manifest.")
    n.add_argument("datastore", metavar="DS")
    n.add_argument("--out", "-o", required=True, metavar="DIR")
    n.add_argument("--eval", nargs="+", metavar="EVAL", help="eval documents instead of the datastore's chunks")
    n.add_argument("-k", type=int, default=2, help="neighbours per chunk")
    n.add_argument("--overwrite", action="store_true")
    add_retriever_arguments(n)  # by chunk embedding: exact, ann or sharded
    add_progress_flags(n)
    n.set_defaults(run=run_neighbours)

    for name, helptext in (("train", "train a RETRO model (or, with --no-retrieval, the same decoder alone)"),
                           ("retrofit", "insert CCA layers into a frozen pretrained LM and train only those")):
        t = rs.add_parser(name, help=helptext, description=helptext + ".", formatter_class=HelpFormatter)
        t.add_argument("datastore", metavar="DS")
        t.add_argument("--neighbours", required=True, metavar="DIR", help="from `relm retro neighbours DS`")
        t.add_argument("--out", "-o", required=True, metavar="RUN", help="run directory (resumed if present)")
        t.add_argument("--eval", nargs="+", metavar="EVAL", help="held-out documents for periodic evaluation")
        t.add_argument("--eval-neighbours", metavar="DIR", help="their neighbours (`relm retro neighbours --eval`)")
        if name == "retrofit":
            t.add_argument("--base", default="smollm2", help="the pretrained Llama-style LM")
        else:
            m = t.add_argument_group("model")
            m.add_argument("--d-model", type=int, default=256)
            m.add_argument("--layers", type=int, default=6)
            m.add_argument("--heads", type=int, default=4)
            m.add_argument("--kv-heads", type=int)
            m.add_argument("--d-ff", type=int, default=768)
            m.add_argument("--no-retrieval", action="store_true", help="the baseline: no CCA is used")
        r = t.add_argument_group("retrieval layers")
        r.add_argument("--cca-layers", help="comma list of 1-based layers (default: every 3rd from 6, else the last)")
        r.add_argument("--enc-layers", type=int, default=2)
        r.add_argument("--enc-d-model", type=int, help="retrieval encoder width (default: the decoder's)")
        r.add_argument("--no-cca-positions", dest="cca_positions", action="store_false",
                       help="CCA without the relative rotary positions (an ablation; RETRO §B.1.2 uses them)")
        r.add_argument("--fusion", choices=["retro", "relm"], default="retro",
                       help="retro: encoded neighbour tokens; relm: the neighbours' passage vectors")
        o = t.add_argument_group("optimisation")
        o.add_argument("--steps", type=int, default=1000)
        o.add_argument("--batch-size", type=int, default=8)
        o.add_argument("--seq-chunks", type=int, default=4, help="chunks per training sequence")
        o.add_argument("--lr", type=float, default=1e-3)
        o.add_argument("--min-lr", type=float, default=1e-4)
        o.add_argument("--warmup", type=int, default=100)
        o.add_argument("--weight-decay", type=float, default=0.1)
        o.add_argument("--grad-clip", type=float, default=1.0)
        o.add_argument("--eval-every", type=int, default=200)
        o.add_argument("--eval-sequences", type=int, default=64)
        o.add_argument("--checkpoint-every", type=int, default=200)
        o.add_argument("--seed", type=int, default=0)
        o.add_argument("--device", default="auto")
        o.add_argument("--threads", type=int, help="torch CPU threads")
        add_progress_flags(t)
        t.set_defaults(run=run_train, retrofit=name == "retrofit")

    e = rs.add_parser("eval", help="bits per byte ON/OFF and the leakage-filtered curve",
                      formatter_class=HelpFormatter,
                      description="Sliding windows over held-out chunks (each chunk scored once): bits per byte "
                      "and perplexity of each run with retrieval ON and OFF, and bpb over the chunks whose "
                      "overlap with their neighbours is at most α (RETRO §2.6); each ON run against its own OFF and "
                      "against the runs trained without retrieval, per α, with paired-bootstrap 95% intervals over "
                      "chunks. Writes retro_eval.json, table.md "
                      "and leakage.png to --out.")
    e.add_argument("runs", nargs="+", metavar="RUN")
    e.add_argument("--datastore", required=True, metavar="DS")
    e.add_argument("--eval", nargs="+", required=True, metavar="EVAL")
    e.add_argument("--neighbours", required=True, metavar="DIR", help="the eval documents' neighbours")
    e.add_argument("--window", type=int, default=2048, help="tokens per window")
    e.add_argument("--stride", type=int, default=1024, help="tokens scored per window")
    e.add_argument("--max-windows", type=int, metavar="N",
                   help="score only N windows spread evenly over the eval stream (default: all)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--threads", type=int)
    e.add_argument("--out", "-o", required=True, metavar="DIR")
    e.set_defaults(run=run_eval)

    g = rs.add_parser("generate", help="sample with retrieval at every chunk boundary (KV-cached)",
                      formatter_class=HelpFormatter)
    g.add_argument("run_dir", metavar="RUN")
    g.add_argument("prompt")
    g.add_argument("--datastore", required=True, metavar="DS")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-retrieval", action="store_true")
    add_retriever_arguments(g)
    g.set_defaults(run=run_generate)


def _open_token_datastore(path: str):
    from ..datastore.store import Datastore
    from ..errors import DatastoreError

    ds = Datastore.open(path)
    if ds.manifest.get("tokens") is None:
        raise DatastoreError(f"{path} holds word passages, not token chunks; RETRO needs "
                             "`relm build ... --chunk-tokens 64`")
    return ds


def run_neighbours(args) -> int:
    from ..eval.windows import read_eval_sets
    from ..retrieval.retriever import Retriever
    from ..retro.neighbours import (
        build_neighbours,
        datastore_stream,
        full_chunk_ids,
        resolve_tokenizer,
        text_stream,
    )

    config = retriever_config(args)
    ds = _open_token_datastore(args.datastore)
    retriever = Retriever(ds, config)
    if args.eval:
        docs = [d for _, ds_docs in read_eval_sets(args.eval) for d in ds_docs]
        chunks, excl, _ = text_stream(docs, resolve_tokenizer(ds), ds)
        db = build_neighbours(ds, chunks, excl, args.out, k=args.k, retriever=retriever, overwrite=args.overwrite,
                              batch_size=config.batch_size, show_progress=args.progress,
                              description="eval:" + ",".join(args.eval))
    else:
        chunks, excl = datastore_stream(ds)
        db = build_neighbours(ds, chunks, excl, args.out, k=args.k, retriever=retriever, overwrite=args.overwrite,
                              show_progress=args.progress, description="datastore",
                              query_vectors=ds.embeddings(full_chunk_ids(ds)))
    c = db.manifest["counts"]
    print(f"{len(db):,} chunks x {db.k} neighbours in {args.out}: {c['missing_neighbours']} missing neighbours, "
          f"{c['missing_continuations']} missing continuations")
    return 0


def run_train(args) -> int:
    import torch

    from ..eval.windows import read_eval_sets
    from ..retro.data import sequence_starts, split_starts
    from ..retro.model import RetroConfig, RetroModel
    from ..retro.neighbours import NeighbourDB
    from ..retro.runs import (
        check_tokenizer,
        eval_stream,
        lm_tokenizer_fingerprint,
        retrofit_model,
        train_stream,
    )
    from ..retro.train import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = _open_token_datastore(args.datastore)
    db = NeighbourDB.open(args.neighbours, ds)
    retrieval = {"chunk_size": db.chunk_size, "n_neighbours": db.k, "neighbour_len": db.neighbour_len,
                 "enc_layers": args.enc_layers, "enc_d_model": args.enc_d_model, "fusion": args.fusion,
                 "cca_positions": args.cca_positions,
                 "passage_dim": ds.dim}
    if args.cca_layers:
        retrieval["cca_layers"] = [int(x) for x in args.cca_layers.split(",")]
    extra = {"datastore": str(ds.root), "neighbours": str(args.neighbours)}
    if args.retrofit:
        model, lm = retrofit_model(args.base, **retrieval)
        check_tokenizer(ds, lm_tokenizer_fingerprint(lm), f"the base LM {args.base!r}")
        extra["base"] = args.base
        del lm
    else:
        torch.manual_seed(args.seed)
        vocab = ds.manifest["tokens"]["tokenizer"]["vocab_size"]
        model = RetroModel(RetroConfig(vocab_size=vocab, d_model=args.d_model, n_layers=args.layers,
                                       n_heads=args.heads, n_kv_heads=args.kv_heads, d_ff=args.d_ff,
                                       max_seq_len=max(2048, args.seq_chunks * db.chunk_size), **retrieval))
    use_retrieval = not getattr(args, "no_retrieval", False)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_chunks=args.seq_chunks, lr=args.lr,
                      min_lr=args.min_lr, warmup=args.warmup, weight_decay=args.weight_decay,
                      grad_clip=args.grad_clip, eval_every=args.eval_every, eval_sequences=args.eval_sequences,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, retrieval=use_retrieval,
                      device=args.device)
    vectors = args.fusion == "relm"
    train = train_stream(ds, args.neighbours, vectors=vectors)
    starts = sequence_starts(len(train.chunks), args.seq_chunks)
    held, held_starts, chunk_bytes = None, None, None
    if args.eval:
        if not args.eval_neighbours:
            from ..errors import ConfigError

            raise ConfigError("--eval needs --eval-neighbours DIR (`relm retro neighbours DS --eval ... --out DIR`)")
        docs = [d for _, s in read_eval_sets(args.eval) for d in s]
        held, chunk_bytes = eval_stream(ds, args.eval_neighbours, docs, vectors=vectors)
        held_starts = sequence_starts(len(held.chunks), args.seq_chunks)
    else:
        starts, held_starts = split_starts(starts, 0.02, args.seed)
        held = train
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {n_train:,} trained; "
          f"{len(starts):,} training sequences of {args.seq_chunks * db.chunk_size} tokens; retrieval "
          f"{'on' if use_retrieval else 'off'} ({args.fusion})")
    trainer = Trainer(model, train, starts, cfg, args.out, held_out=held, held_out_starts=held_starts,
                      chunk_bytes=chunk_bytes, extra_config=extra)
    t0 = time.perf_counter()
    history = trainer.train(show_progress=args.progress)
    last = [h for h in history if "held_out" in h]
    line = f"trained to step {trainer.step} in {time.perf_counter() - t0:.0f}s; saved {args.out}"
    if last:
        line += f"; held-out loss {last[-1]['held_out']['loss']:.4f}, bpb {last[-1]['held_out']['bits_per_byte']:.4f}"
    print(line)
    return 0


def run_eval(args) -> int:
    import torch

    from ..artifacts import write_json_atomic
    from ..errors import ConfigError
    from ..eval.windows import read_eval_sets
    from ..retro.evaluate import comparison_pairs, evaluate_retro, leakage_table, plot_leakage
    from ..retro.runs import eval_stream, load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = _open_token_datastore(args.datastore)
    docs = [d for _, s in read_eval_sets(args.eval) for d in s]
    models, fusion, baselines = {}, set(), []
    for run in args.runs:
        model, state = load_run(run)
        name = Path(run).name
        if state["train"]["retrieval"]:
            models[f"{name} ON"] = (model, True)
            fusion.add(model.config.fusion)
        else:
            baselines.append(f"{name} OFF")
        models[f"{name} OFF"] = (model, False)
    stream, nbytes = eval_stream(ds, args.neighbours, docs, vectors="relm" in fusion)
    m = stream.chunk_size
    if args.window % m or args.stride % m:
        raise ConfigError(f"--window and --stride must be multiples of the chunk size {m}")
    res = evaluate_retro(models, stream, nbytes, window_chunks=args.window // m, stride_chunks=args.stride // m,
                         batch_size=args.batch_size, max_windows=args.max_windows,
                         comparisons=comparison_pairs(list(models), baselines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "retro_eval.json", res)
    table = leakage_table(res)
    (out / "table.md").write_text(table + "\n")
    plot_leakage(res, out / "leakage.png")
    print(table)
    print(json.dumps({k: round(v["bits_per_byte"], 4) for k, v in res["results"].items()}))
    print(f"wrote {out}/{{retro_eval.json, table.md, leakage.png}}")
    return 0


def run_generate(args) -> int:
    """`relm generate` with a RETRO run: the same streaming loop (relm.generate_stream), retrieval per chunk."""
    from ..generation import GenerationConfig, TokenEvent, generate_stream
    from ..retrieval.retriever import Retriever
    from ..retro.lm import load_retro_lm

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed, stop_at_eos=False)
    ds = _open_token_datastore(args.datastore)
    lm = load_retro_lm(args.run_dir, ds, None if args.no_retrieval else Retriever(ds, retriever_config(args)))
    for event in generate_stream(lm, None, args.prompt, config):
        if isinstance(event, TokenEvent):
            sys.stdout.write(event.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
