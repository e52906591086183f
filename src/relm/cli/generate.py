"""`relm generate DS "prompt"`: stream a continuation with retrieval every N tokens, then the citations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import HelpFormatter, add_query_backend_flags, open_for_queries
from .search import add_retriever_arguments, retriever_config


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate with retrieval every N tokens, streamed (exact or prefetch)",
        description="Continue PROMPT with the LM, retrieving k passages every --retrieve-every new tokens "
        "(query: the last --query-tokens tokens; the prompt for the first) and prepending them, best last. "
        "Tokens stream to stdout as they come; the passages used follow, with the spans of new tokens they "
        "were in context for. --json prints every event as a JSON line; --prompts FILE runs a batch to JSONL.",
        formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("prompt", nargs="?", help="the text to continue")
    p.add_argument("--prompts", metavar="FILE", help="a batch: queries as `relm search --queries` reads them")
    p.add_argument("--output", "-o", metavar="FILE", help="--prompts: write JSONL here (default: stdout)")
    p.add_argument("--lm", default="smollm2",
                   help="'smollm2', a local HF model directory, a .gguf file, or a RETRO run directory (`relm "
                   "retro train|retrofit`: it retrieves per chunk through its cross-attention instead)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], metavar="STR", help="stop before this text (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating after the end-of-text token")
    g.add_argument("--template", metavar="TEXT|FILE",
                   help="a prompt around the retrieved passages: {passages} (numbered, best first) and {prompt}, "
                        "e.g. 'Answer from these excerpts.\\n\\n{passages}\\n\\nQuestion: {prompt}' (a file path "
                        "is read); default: passages prepended to the text, best last")
    g.add_argument("--chat", action="store_true",
                   help="send the prompt (or rendered template) as a user turn of the LM's chat template")
    r = p.add_argument_group("retrieval during generation")
    r.add_argument("-k", type=int, default=2, help="passages in context")
    r.add_argument("--retrieve-every", type=int, default=10, help="new tokens between retrievals")
    r.add_argument("--query-tokens", type=int, default=32, help="the query: the last this many tokens")
    r.add_argument("--mode", default="exact", choices=["exact", "prefetch", "naive"],
                   help="exact: the naive loop's tokens, prefix KV reused; prefetch: retrieval overlapped "
                   "with decoding (queries stale by up to --retrieve-every tokens); naive: re-prefill all")
    r.add_argument("--no-retrieval", action="store_true", help="plain generation (the baseline)")
    r.add_argument("--adaptive-k", metavar="FILE",
                   help="choose k (0..-k) per retrieval from the LM's NLL on the recent tokens, with the "
                   "thresholds in FILE (k=0 skips the retrieval); make FILE with --calibrate-adaptive")
    r.add_argument("--calibrate-adaptive", nargs="+", metavar="HELD_OUT",
                   help="write adaptive-k thresholds (quantiles of the LM's NLL over spans of --retrieve-every "
                   "tokens of these held-out files) to -o FILE, for up to -k passages; no prompt needed")
    r.add_argument("--threshold", type=float, help="drop passages scoring below this (the retriever's scale)")
    r.add_argument("--before", metavar="TIME", help="only documents dated before this")
    r.add_argument("--after", metavar="TIME", help="only documents dated at or after this")
    r.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    p.add_argument("--json", action="store_true", help="print the events as JSON lines")
    add_retriever_arguments(p)
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def generation_config(args, adaptive=None):
    from ..generation import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, stop=tuple(args.stop), stop_at_eos=not args.ignore_eos, retrieval=not args.no_retrieval,
        k=args.k, retrieve_every=args.retrieve_every, query_tokens=args.query_tokens, threshold=args.threshold,
        mode=args.mode, adaptive=adaptive, template=read_template(args.template), chat=args.chat)


def read_template(value: str | None) -> str | None:
    """--template: the contents of a file of that name, or the text itself (with \\n read as a newline)."""
    if value is None:
        return None
    if "{" not in value:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--template {value!r}: no such file, and not a template with {{prompt}}")
        return path.read_text(encoding="utf-8")
    return value.replace("\\n", "\n")


def filters(args):
    from ..retrieval.options import SearchOptions, time_bound

    return SearchOptions(k=args.k if args.k > 0 else 1, before=time_bound(args.before, "--before"),
                         after=time_bound(args.after, "--after"), domains=tuple(args.domain))


def run(args) -> int:
    from ..corpus.queries import read_queries
    from ..generation import DoneEvent, RetrievalEvent, TokenEvent, event_dict, generate_stream
    from ..generation.adaptive import AdaptiveK
    from ..lm import LMConfig, load_lm
    from ..retrieval.retriever import Retriever
    from ..retro.lm import is_retro_run, load_retro_lm

    if args.calibrate_adaptive:
        return calibrate_adaptive(args)
    if (args.prompt is None) == (args.prompts is None):
        raise ConfigError("give either a PROMPT or --prompts FILE")
    adaptive = AdaptiveK.load(args.adaptive_k) if args.adaptive_k else None
    config = generation_config(args, adaptive)  # every flag checked before anything loads
    opts, rconfig = filters(args), retriever_config(args)
    prompts = [("1", args.prompt)] if args.prompt is not None else read_queries(args.prompts, None)
    ds = open_for_queries(args.datastore, args)
    retriever = None if args.no_retrieval else Retriever(ds, rconfig)
    if is_retro_run(args.lm):  # RETRO retrieves inside the model, per chunk: nothing is prepended
        lm, retriever = load_retro_lm(args.lm, ds, retriever), None
    else:
        lm = load_lm(LMConfig(model=args.lm, device=args.device, dtype=args.dtype))
    if args.prompts:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            for pid, prompt in prompts:
                events = list(generate_stream(lm, retriever, prompt, config, search_options=opts))
                done = events[-1]
                out.write(json.dumps({"id": pid, "prompt": prompt, "text": done.text,
                                      "finish_reason": done.finish_reason,
                                      "retrievals": [event_dict(e) for e in events if isinstance(e, RetrievalEvent)],
                                      "citations": list(done.citations), "timing": done.timing,
                                      "counts": done.counts}, ensure_ascii=False) + "\n")
                out.flush()
        finally:
            if out is not sys.stdout:
                out.close()
        return 0
    text: list[str] = []
    done = None
    try:
        for event in generate_stream(lm, retriever, args.prompt, config, search_options=opts):
            if args.json:
                print(json.dumps(event_dict(event), ensure_ascii=False), flush=True)
            elif isinstance(event, TokenEvent):
                text.append(event.text)
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, DoneEvent):
                done = event
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        print(f"relm generate: interrupted after {len(''.join(text))} characters; the text above is what was "
              "generated", file=sys.stderr)
        return 130
    if done is not None and not args.json:
        sys.stdout.write("\n")
        _print_citations(ds, done)
    return 0


def calibrate_adaptive(args) -> int:
    from ..eval.windows import read_eval_sets
    from ..generation.adaptive import calibrate
    from ..lm import LMConfig, load_lm

    if not args.output:
        raise ConfigError("--calibrate-adaptive writes the thresholds to -o FILE; give -o")
    generation_config(args)  # the flags checked
    texts = [d.text for _, docs in read_eval_sets(args.calibrate_adaptive) for d in docs]
    lm = load_lm(LMConfig(model=args.lm, device=args.device, dtype=args.dtype))
    a = calibrate(lm, texts, k_max=args.k, span=args.retrieve_every, source=" ".join(args.calibrate_adaptive))
    a.save(args.output)
    print(f"adaptive k thresholds (mean NLL, nats, over {a.span}-token spans): "
          + ", ".join(f"k>={i + 1} above {t:.3f}" for i, t in enumerate(a.thresholds)) + f"; wrote {args.output}")
    return 0


def _print_citations(ds, done) -> None:
    t = done.timing
    print(f"\n[{done.counts['new_tokens']} tokens, {done.finish_reason}; {done.counts['retrievals']} retrievals, "
          f"{done.counts['changed_sets']} changed the passages; {t['total']:.1f} s: prefill {t['prefill']:.1f} s, "
          f"decode {t['decode']:.1f} s, retrieval {t['retrieval']:.1f} s]", file=sys.stderr)
    if not done.citations:
        return
    print("passages in context:")
    for c in done.citations:
        for pid, score in zip(c["passage_ids"], c["scores"], strict=True):
            doc = ds.document(int(ds.doc_index[pid]))
            title = f" {doc['title']}" if doc.get("title") else ""
            snippet = " ".join(ds.passage(pid).split())[:100]
            print(f"  tokens [{c['start']}, {c['end']}): passage {pid} ({score:.4f}) {doc['id']}{title}: {snippet}...")
