"""`relm qa DS QA_FILE`: open-domain QA (or multiple choice) with and without retrieval, scored."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .common import HelpFormatter, add_progress_flags, add_query_backend_flags, open_for_queries
from .search import add_retriever_arguments, retriever_config, strict_json


def register(sub) -> None:
    p = sub.add_parser(
        "qa", help="question answering with and without retrieval (EM, F1, answer recall; --choices)",
        description="Answer each question of QA_FILE (JSONL with id, question, answers; or SQuAD-format JSON) "
        "greedily with the LM, closed-book and with the top k passages the question retrieves, and score exact "
        "match and token F1 (SQuAD v1.1) and answer recall@k, with paired-bootstrap intervals on the change "
        "against closed-book. --choices scores multiple-choice items (question, choices, answer index) by "
        "log-likelihood instead. Writes summary.json, predictions.jsonl, table.md and qa.png to --out.",
        formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("qa_file", metavar="QA_FILE", help=".jsonl(.gz/.zst) or SQuAD .json(.gz)")
    m = p.add_argument_group("language model")
    m.add_argument("--lm", default="smollm2", help="'smollm2', a local HF model directory or a .gguf file")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    m.add_argument("--threads", type=int, help="torch CPU threads")
    q = p.add_argument_group("questions and prompts")
    q.add_argument("-k", default="0,5", metavar="K[,K...]",
                   help="passages per question, e.g. 5 or 0,1,3,5 (closed-book, k 0, always runs beside)")
    q.add_argument("--shots", default="0", metavar="N[,N...]", help="few-shot examples in the prompt, e.g. 0 or 0,3")
    q.add_argument("--shots-file", metavar="FILE",
                   help="draw the examples from this file (another split); default: a seeded draw from QA_FILE, "
                   "never scored")
    q.add_argument("--template", default="qa", metavar="NAME|FILE",
                   help="built-in (qa, context, plain) or a file with {passages} and {question} (last paragraph)")
    q.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the LM's chat template")
    q.add_argument("--max-new-tokens", type=int, default=32)
    q.add_argument("--stop", action="append", metavar="STR",
                   help="end the answer before this text (repeatable; default: a newline)")
    q.add_argument("--max-questions", type=int, metavar="N", help="a seeded sample of N questions")
    q.add_argument("--seed", type=int, default=0, help="the examples' and the sample's draw")
    q.add_argument("--choices", action="store_true",
                   help="multiple choice: QA_FILE has question, choices, answer (index or letter)")
    q.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="paired-bootstrap resamples")
    add_retriever_arguments(p, rename={"batch_size": "--query-batch-size"})
    p.add_argument("--out", "-o", metavar="DIR", help="output directory (default: runs/qa-<time>)")
    add_progress_flags(p)
    add_query_backend_flags(p)
    p.set_defaults(run=run)


def int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give integers separated by commas, e.g. {flag} 0,1,3,5") from None
    if not values:
        raise ConfigError(f"{flag}: give at least one integer")
    return values


def check_args(args):
    """Every flag checked before anything loads: (QAConfig, QAPrompt, RetrieverConfig)."""
    from ..config import check_int
    from ..qa import QAConfig, load_prompt

    check_int(args.threads, "--threads", minimum=1, optional=True)
    check_int(args.bootstrap, "--bootstrap", minimum=1)
    check_int(args.max_questions, "--max-questions", minimum=1, optional=True)
    stop = tuple(args.stop) if args.stop else ("\n",)
    if any(not s for s in stop):
        raise ConfigError("--stop takes non-empty text")
    config = QAConfig(ks=int_list(args.k, "-k"), shots=int_list(args.shots, "--shots"),
                      max_new_tokens=args.max_new_tokens, stop=stop, chat=args.chat, seed=args.seed)
    prompt = load_prompt(args.template)
    prompt.check_k(config.ks)
    return config, prompt, retriever_config(args)


def run(args) -> int:
    from ..artifacts import write_json_atomic
    from ..lm import LMConfig, load_lm
    from ..qa import read_qa, run_qa, split_items
    from ..qa.context import check_k
    from ..qa.report import plot_qa, qa_table, summarize
    from ..retrieval.retriever import Retriever

    config, prompt, rconfig = check_args(args)
    task = "choices" if args.choices else "open"
    items = read_qa(args.qa_file, choices=args.choices)
    shots_from = read_qa(args.shots_file, choices=args.choices) if args.shots_file else None
    shots, scored = split_items(items, max(config.shots), seed=config.seed, shots_from=shots_from,
                                max_questions=args.max_questions)
    ds = open_for_queries(args.datastore, args)
    check_k(config.ks, ds)
    retriever = Retriever(ds, rconfig)  # a missing index fails now, before the LM loads
    lm = load_lm(LMConfig(model=args.lm, device=args.device, dtype=args.dtype, threads=args.threads))
    t0 = time.perf_counter()
    records = []
    for _, recs in run_qa(lm, retriever, prompt, scored, shots, config, task=task, show_progress=args.progress):
        records += recs
    conditions = summarize(records, config.conditions, task, n_boot=args.bootstrap, seed=config.seed)
    summary = {"task": task, "qa_file": args.qa_file, "questions": len(scored), "datastore": str(args.datastore),
               "passages": len(ds), "retriever": rconfig.to_dict(), "lm": lm.identity(), "settings": config.to_dict(),
               "template": prompt.template, "template_name": prompt.name, "shots_from": args.shots_file or "QA_FILE",
               "examples": [{"id": s.id, "question": s.question, "answer": s.gold} for s in shots],
               "conditions": conditions, "seconds_total": time.perf_counter() - t0,
               "command": "relm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["qa"] else None}
    out = Path(args.out or f"runs/qa-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    write_predictions(out / "predictions.jsonl", records, ds)
    table = qa_table(conditions, task)
    dropped = sum(c.get("dropped_passages", 0) for c in conditions.values())
    note = (f"\n{dropped} passage(s) dropped (least relevant first) so that prompts fit {lm.name}'s "
            f"{lm.context_length}-token window with {config.max_new_tokens} tokens for the answer.\n" if dropped else "")
    (out / "table.md").write_text(table + note)
    plot_qa(conditions, out / "qa.png", task)
    print(table + note)
    print(f"{len(scored)} questions x {len(conditions)} conditions in {summary['seconds_total']:.0f}s; wrote {out}/"
          "{summary.json, predictions.jsonl, table.md, qa.png}")
    return 0


def write_predictions(path: Path, records, ds) -> None:
    """One line per (question, condition): the record with its passages' texts (and document ids)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            ids = r["passage_ids"]
            texts = ds.passages(ids) if ids else []
            passages = [{"id": i, "doc": ds.document(int(ds.doc_index[i]))["id"], "score": s, "text": t,
                         "in_prompt": n < r["in_prompt"]}
                        for n, (i, s, t) in enumerate(zip(ids, r["passage_scores"], texts, strict=True))]
            row = {k: v for k, v in r.items() if k not in ("passage_ids", "passage_scores")} | {"passages": passages}
            f.write(json.dumps(strict_json(row)[0], ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
