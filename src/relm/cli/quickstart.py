"""`relm quickstart`: build, evaluate and ask, on Python's own documentation (or --corpus), offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .common import HelpFormatter, add_progress_flags


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole loop on Python's bundled docs: build, evaluate with/without retrieval, ask",
        description="Build a datastore from the documentation inside Python (pydoc topics and stdlib "
        "docstrings) or from --corpus, hold out 10% of its documents, evaluate the LM on them without and "
        "with retrieval (table + plot), and answer sample questions with and without retrieval, showing the "
        "retrieved passages. Offline; a few minutes on 2 CPU cores with the defaults.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--corpus", nargs="+", metavar="PATH", help="your corpus files/dirs instead of Python's docs")
    p.add_argument("--out", "-o", default="runs/quickstart", metavar="DIR", help="where everything is written")
    p.add_argument("--lm", default="smollm2", help="'smollm2', a local HF model directory or a .gguf file")
    p.add_argument("--encoder", default="all-MiniLM-L6-v2", help="the datastore's encoder")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of documents held out for evaluation")
    p.add_argument("--window", type=int, default=512, help="eval window tokens (half context, half scored)")
    p.add_argument("--max-windows", type=int, default=32,
                   help="eval windows per held-out domain (32: nearly all of the Python docs' held-out text, "
                   "enough windows for a stable interval)")
    p.add_argument("-k", type=int, default=2, help="passages prepended per window / per question")
    p.add_argument("--variants", default="massiveds",
                   help="retrieval variants to compare (see relm eval; e.g. massiveds,last-q: each one adds "
                   "about as much eval time as the no-retrieval pass and massiveds together)")
    p.add_argument("--question", action="append", default=[], help="a question to answer (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_progress_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..artifacts import write_json_atomic
    from ..config import BuildConfig, EncoderConfig
    from ..datastore import build_datastore
    from ..errors import ConfigError
    from ..eval.evaluate import Evaluator
    from ..eval.report import eval_table, plot_eval
    from ..eval.variants import parse_variants
    from ..eval.windows import WindowConfig, read_eval_sets
    from ..lm import LMConfig, load_lm
    from ..quickstart import (
        QUESTIONS,
        answer_questions,
        corpus_fingerprint,
        format_answers,
        python_docs_records,
        read_user_corpus,
        split_corpus,
        timed,
    )
    from ..retrieval.retriever import Retriever

    if not 0 < args.heldout < 1:
        raise ConfigError(f"--heldout must be in (0, 1), got {args.heldout}")
    out = Path(args.out)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with timed("corpus", seconds):
        records = read_user_corpus(args.corpus) if args.corpus else python_docs_records()
        corpus, heldout, counts = split_corpus(records, out, args.heldout)
    words = sum(len(r["text"].split()) for r in records)
    source = corpus_fingerprint(records)
    print(f"corpus: {len(records):,} documents, {words:,} words "
          f"({'your files' if args.corpus else 'pydoc topics + stdlib docstrings of Python ' + source['python']}, "
          f"sha256 {source['sha256']}); {counts['heldout_documents']} held out for evaluation")
    with timed("build", seconds):
        ds = build_datastore([corpus], out / "ds", BuildConfig(encoder=EncoderConfig(model=args.encoder)),
                             show_progress=args.progress)
    print(f"datastore: {len(ds):,} passages in {out / 'ds'}")
    with timed("load_lm", seconds):
        lm = load_lm(LMConfig(model=args.lm, threads=args.threads))
    variants = parse_variants(args.variants, k=args.k)
    retriever = Retriever(ds)  # exact: the datastore was just built, it has no index yet
    with timed("eval", seconds):
        ev = Evaluator(retriever, lm, windows=WindowConfig(args.window, max_windows=args.max_windows),
                       show_progress=args.progress)
        result = ev.run(read_eval_sets([str(heldout)]), variants)
        summary = result.summary()
    table = eval_table(summary)
    print("\n" + table)
    plot = plot_eval(summary, out / "eval.png", title="Held-out perplexity, without and with retrieval")
    questions = args.question or (list(QUESTIONS) if not args.corpus else _questions_from(heldout))
    with timed("answers", seconds):
        answers = answer_questions(retriever, lm, questions, k=args.k, max_new_tokens=args.max_new_tokens)
    print("\n" + format_answers(answers))
    seconds["total"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "quickstart.json", {
        "counts": counts, "words": words, "corpus": source, "passages": len(ds), "summary": summary,
        "seconds": seconds,
        "answers": [a.__dict__ for a in answers],
    })
    (out / "table.md").write_text(table + "\n")
    print(f"wrote {out}/{{quickstart.json, table.md, {plot.name}}} in {seconds['total']:.0f}s "
          f"({json.dumps(seconds)})")
    return 0


def _questions_from(heldout: Path, n: int = 3) -> list[str]:
    """For a user corpus: ask about the opening words of a few held-out documents."""
    out = []
    with open(heldout, encoding="utf-8") as f:
        for line in f:
            text = " ".join(json.loads(line)["text"].split()[:12])
            out.append(f"What do you know about this: {text}?")
            if len(out) == n:
                break
    return out
