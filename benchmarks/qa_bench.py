"""Open-domain QA on SQuAD v1.1 dev with retrieval: SmolLM2-135M(-Instruct) closed-book and with k = 1, 3, 5
passages from dense, BM25 and hybrid retrieval, zero- and few-shot; EM, F1 (official SQuAD v1.1
definitions), answer recall@k, each with a paired-bootstrap interval on the change against closed-book.

Data: ../shared/data/external/squad-v1.1-dev/dev-v1.1.json.gz (10,570 questions); the datastore is the
2,067 paragraphs with titles (`/work/beir/squad`, built by benchmarks/beir_bench.py: 2,253 passages since
a paragraph longer than the encoder's 256 wordpieces is cut in two). One seeded permutation of the
questions (seed 0) gives three disjoint parts: the few-shot examples (the first 8), a tuning sample
(--tune-questions, where k and shots are chosen by F1) and the scored sample (--questions, the same for
every condition; disjoint in questions, not paragraphs: SQuAD asks about 5 questions per paragraph).
Retrievers, all through relm.Retriever:

  dense    exact inner product over the float16 all-MiniLM-L6-v2 vectors
  bm25     bm25s, k1 1.5, b 0.75 (the defaults)
  hybrid   interpolation of dense and BM25 (k1 0.9, b 0.5), alpha 0.4, 200 candidates: the settings
           benchmarks/beir_bench.py chose on SciFact *train* (no SQuAD question tuned them)

Prompts: the built-in `qa` template (instruction, passages numbered best first, question). Few-shot
(--shots, default 3): plain text, the examples as "Question: ...\\nAnswer: ..." paragraphs. Zero-shot: the
same text as a chat turn (SmolLM2-135M-Instruct ends a plain zero-shot prompt with its end-of-text token at
once; --zero-shot-plain turns that off). Greedy, stop at a newline, at most --max-new-tokens.

    python benchmarks/qa_bench.py                                       # everything (hours; see docs/results.md)
    python benchmarks/qa_bench.py --questions 60 --tune-questions 0 --conditions 'closed-k0-shots3,bm25-k3-shots3'
    python benchmarks/qa_bench.py --list                                # the condition names
    python benchmarks/qa_bench.py --phase recall --out benchmarks/results/qa_recall.json   # retrieval only

`--phase recall` measures the retrieval side alone (no LM): answer recall@1, 3, 5, 20, 100 of every
retriever on the scored sample and on all the questions (the top-20 and top-100 accuracy DPR reports).

Results go to --out (benchmarks/results/qa_bench.json) after every condition; a rerun skips the
conditions already there for the same questions and settings (resume), then prints the table. To use both
cores, run two processes on different --conditions, each with its own --out, then `--merge A.json B.json`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RELM_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "external"
SQUAD = SHARED / "squad-v1.1-dev" / "dev-v1.1.json.gz"
RESULTS = HERE / "results" / "qa_bench.json"
MAX_SHOTS = 8


def retriever_configs() -> dict[str, Any]:
    from relm.retrieval.options import RetrieverConfig

    return {"dense": RetrieverConfig("exact"),
            "bm25": RetrieverConfig("bm25", bm25_index="bm25-k1.5-b0.75"),
            "hybrid": RetrieverConfig("hybrid", bm25_index="bm25-k0.9-b0.5", fusion="interpolate", alpha=0.4,
                                      candidates=200)}


def conditions(ks: list[int], shots: list[int]) -> list[tuple[str, str | None, int, int]]:
    """(name, retriever or None, k, shots): closed-book per shots, then every retriever x k x shots."""
    out = [(f"closed-k0-shots{s}", None, 0, s) for s in shots]
    out += [(f"{r}-k{k}-shots{s}", r, k, s) for r in retriever_configs() for s in shots for k in ks if k]
    return out


def split(items, n_tune: int, n_test: int, seed: int):
    """(examples, tuning sample, scored sample): disjoint parts of one seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(items))
    if MAX_SHOTS + n_tune + n_test > len(items):
        sys.exit(f"qa_bench: {MAX_SHOTS} + {n_tune} + {n_test} questions asked, the file has {len(items)}")
    pick = lambda a, b: [items[i] for i in sorted(order[a:b])]  # noqa: E731  (file order within a part)
    return (pick(0, MAX_SHOTS), pick(MAX_SHOTS, MAX_SHOTS + n_tune),
            pick(MAX_SHOTS + n_tune, MAX_SHOTS + n_tune + n_test))


def digest(items) -> str:
    return hashlib.sha256("\n".join(q.id for q in items).encode()).hexdigest()[:16]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, report: dict[str, Any]) -> None:
    from relm.artifacts import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)


def run_phase(phase: str, items, examples, todo, report, args, lm, ds, out: Path) -> None:
    """Run the conditions of `todo` not yet in report[phase] on `items`, saving after each one."""
    from relm.qa import QAConfig, load_prompt, run_qa
    from relm.qa.context import retrieve_all
    from relm.retrieval.retriever import Retriever

    block = report.setdefault(phase, {"questions": len(items), "ids_sha256": digest(items), "conditions": {}})
    if block["ids_sha256"] != digest(items):
        sys.exit(f"qa_bench: {out} holds another {phase} sample; pass another --out or the same --questions/--seed")
    prompt = load_prompt("qa")
    found: dict[str, list] = {}
    for name, rname, k, s in todo:
        if name in block["conditions"]:
            continue
        retriever = None
        if rname is not None:
            retriever = Retriever(ds, retriever_configs()[rname])
            if rname not in found:  # one batched search per retriever at the largest k; each k takes a prefix
                t0 = time.perf_counter()
                found[rname] = retrieve_all(retriever, [q.question for q in items], max(args.ks))
                say(f"{phase} {rname}: searched {len(items)} questions in {time.perf_counter() - t0:.1f}s")
        chat = s == 0 and not args.zero_shot_plain
        config = QAConfig(ks=(k,), shots=(s,), max_new_tokens=args.max_new_tokens, stop=("\n",), chat=chat)
        t0 = time.perf_counter()
        [(_, recs)] = run_qa(lm, retriever, prompt, items, examples, config, conditions=[(k, s)],
                             found=found.get(rname) if rname else None, show_progress=args.progress)
        secs = [r["seconds"] for r in recs]
        block["conditions"][name] = {
            "retriever": rname, "retriever_config": retriever_configs()[rname].to_dict() if rname else None,
            "k": k, "shots": s, "chat": chat, "em": float(np.mean([r["em"] for r in recs])),
            "f1": float(np.mean([r["f1"] for r in recs])),
            "recall": float(np.mean([r["recall"] for r in recs])) if k else None,
            "dropped_passages": int(sum(r["dropped"] for r in recs)),
            "seconds_per_question_median": statistics.median(secs), "seconds_total": time.perf_counter() - t0,
            "items": [{"id": r["id"], "em": r["em"], "f1": r["f1"], "recall": r["recall"], "prediction": r["prediction"],
                       "in_prompt": r["in_prompt"], "new_tokens": r["new_tokens"], "seconds": round(r["seconds"], 3)}
                      for r in recs]}
        c = block["conditions"][name]
        say(f"{phase} {name}: EM {c['em']:.4f} F1 {c['f1']:.4f}"
            + (f" recall@{k} {c['recall']:.4f}" if k else "") + f"; {c['seconds_per_question_median']:.2f} s/question")
        save(out, report)


RECALL_KS = (1, 3, 5, 20, 100)


def recall_phase(ds, items, scored, args) -> dict[str, Any]:
    """Answer recall@k (RECALL_KS) of each retriever, on the scored sample (with a bootstrap interval)
    and on every question; the passages are searched once per retriever at the largest k."""
    from relm.eval.answers import answer_recall
    from relm.eval.retrieval import paired_bootstrap
    from relm.qa.context import retrieve_all
    from relm.retrieval.retriever import Retriever

    def mean_ci(x: list[float]) -> dict[str, float]:  # the percentile interval of a mean: x against zeros
        b = paired_bootstrap(x, [0.0] * len(x), n_boot=args.bootstrap)
        return {"mean": b["mean_diff"], "ci_low": b["ci_low"], "ci_high": b["ci_high"], "n": b["n"]}

    scored_ids = {q.id for q in scored}
    out: dict[str, Any] = {}
    for rname, config in retriever_configs().items():
        t0 = time.perf_counter()
        found = retrieve_all(Retriever(ds, config), [q.question for q in items], max(RECALL_KS))
        secs = time.perf_counter() - t0
        hits = {k: [answer_recall(q.answers, f.top(k).texts) for q, f in zip(items, found, strict=True)]
                for k in RECALL_KS}
        mask = [q.id in scored_ids for q in items]
        out[rname] = {"retriever_config": config.to_dict(), "search_seconds": round(secs, 2),
                      "all": {str(k): float(np.mean(h)) for k, h in hits.items()},
                      "scored": {str(k): mean_ci([x for x, m in zip(h, mask, strict=True) if m])
                                 for k, h in hits.items()}}
        say(f"recall {rname}: " + ", ".join(f"@{k} {out[rname]['all'][str(k)]:.4f}" for k in RECALL_KS)
            + f" (all {len(items):,} questions; {secs:.0f}s)")
    return {"questions_all": len(items), "questions_scored": len(scored), "ks": list(RECALL_KS), "retrievers": out}


def recall_table(block: dict[str, Any]) -> str:
    ks = block["ks"]
    lines = [f"Answer recall@k, all {block['questions_all']:,} questions (scored sample of "
             f"{block['questions_scored']:,} [95% CI] below)", "",
             "| retriever | " + " | ".join(f"@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for rname, r in block["retrievers"].items():
        lines.append(f"| {rname} | " + " | ".join(f"{r['all'][str(k)]:.4f}" for k in ks) + " |")
    for rname, r in block["retrievers"].items():
        lines.append(f"| {rname} (scored) | " + " | ".join(
            f"{r['scored'][str(k)]['mean']:.4f} [{r['scored'][str(k)]['ci_low']:.3f}, {r['scored'][str(k)]['ci_high']:.3f}]"
            for k in ks) + " |")
    return "\n".join(lines)


def compare(block: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """Each retrieval condition against closed-book with the same shots: paired bootstrap over questions."""
    from relm.eval.retrieval import paired_bootstrap

    conds = block["conditions"]
    out = {}
    for name, c in conds.items():
        base = conds.get(f"closed-k0-shots{c['shots']}")
        if c["k"] == 0 or base is None:
            continue
        b = {it["id"]: it for it in base["items"]}
        items = [it for it in c["items"] if it["id"] in b]
        out[name] = {m: paired_bootstrap([it[m] for it in items], [b[it["id"]][m] for it in items], n_boot=n_boot)
                     for m in ("em", "f1")}
    return out


def choose(tune: dict[str, Any]) -> dict[str, Any] | None:
    """The (retriever, k, shots) with the best tuning-sample F1, per retriever and overall."""
    conds = tune.get("conditions", {})
    if not conds:
        return None
    best = lambda cs: max(cs, key=lambda n: conds[n]["f1"])  # noqa: E731
    per = {r: best([n for n, c in conds.items() if c["retriever"] == r])
           for r in {c["retriever"] for c in conds.values() if c["retriever"]}}
    return {"overall": best(list(conds)), "per_retriever": per}


def table(report: dict[str, Any]) -> str:
    test = report.get("test", {})
    conds, comps = test.get("conditions", {}), report.get("comparisons", {})
    lines = [f"SQuAD v1.1 dev, {test.get('questions', 0)} questions (seeded sample), {report['meta']['lm']}",
             "", "| condition | EM | F1 | answer recall@k | ΔEM vs closed-book [95% CI] | ΔF1 [95% CI] | s/question |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: f"{v['mean_diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}]"  # noqa: E731
    for name, c in conds.items():
        cmp = comps.get(name)
        lines.append(f"| {name} | {c['em']:.4f} | {c['f1']:.4f} | "
                     + (f"{c['recall']:.4f}" if c["recall"] is not None else "-") + " | "
                     + (fmt(cmp["em"]) if cmp else "-") + " | " + (fmt(cmp["f1"]) if cmp else "-")
                     + f" | {c['seconds_per_question_median']:.2f} |")
    chosen = report.get("chosen")
    if chosen:
        lines += ["", f"chosen on the {report['tune']['questions']}-question tuning sample (best F1): "
                  f"{chosen['overall']}; per retriever: {chosen['per_retriever']}"]
    return "\n".join(lines)


def merge(paths: list[Path], out: Path, n_boot: int) -> int:
    """One report from runs of the same settings and samples that ran different conditions."""
    report: dict[str, Any] = {}
    for path in paths:
        part = load(path)
        if not part:
            sys.exit(f"qa_bench: {path}: no results")
        if report and part["meta"]["settings"] != report["meta"]["settings"]:
            sys.exit(f"qa_bench: {path} was run with other settings than {paths[0]}")
        report.setdefault("meta", part["meta"])
        for phase in ("tune", "test"):
            if phase not in part:
                continue
            block = report.setdefault(phase, {k: v for k, v in part[phase].items() if k != "conditions"}
                                      | {"conditions": {}})
            if block["ids_sha256"] != part[phase]["ids_sha256"]:
                sys.exit(f"qa_bench: {path} scored another {phase} sample")
            block["conditions"].update(part[phase]["conditions"])
    report["comparisons"] = compare(report.get("test", {"conditions": {}}), n_boot)
    report["chosen"] = choose(report.get("tune", {}))
    save(out, report)
    plots(report, out)
    print(table(report))
    return 0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datastore", type=Path, default=Path("/work/beir/squad"))
    ap.add_argument("--questions", type=int, default=1000, help="the scored sample")
    ap.add_argument("--tune-questions", type=int, default=200, help="the sample k and shots are chosen on (0: none)")
    ap.add_argument("--ks", default="1,3,5", help="passages per question besides closed-book")
    ap.add_argument("--shots", default="0,3", help="few-shot examples (at most 8)")
    ap.add_argument("--conditions", default="*", help="comma list of condition names or globs (see --list)")
    ap.add_argument("--phase", choices=["tune", "test", "both", "recall"], default="both")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--zero-shot-plain", action="store_true", help="zero-shot prompts as plain text, not a chat turn")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: no oversubscription on a busy box)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--progress", action="store_true", default=None)
    ap.add_argument("--list", action="store_true", help="print the condition names and exit")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="merge the conditions of runs split across processes (each with its own --out) into --out")
    args = ap.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    shots = [int(s) for s in args.shots.split(",")]
    if max(shots) > MAX_SHOTS:
        sys.exit(f"qa_bench: --shots at most {MAX_SHOTS}")
    grid = conditions(args.ks, shots)
    if args.list:
        print("\n".join(n for n, *_ in grid))
        return 0
    if args.merge:
        return merge(args.merge, args.out, args.bootstrap)
    patterns = [p.strip() for p in args.conditions.split(",") if p.strip()]
    todo = [c for c in grid if any(fnmatch.fnmatch(c[0], p) for p in patterns)]
    if not todo:
        sys.exit(f"qa_bench: no condition matches {args.conditions!r}; see --list")

    from relm.datastore import Datastore
    from relm.lm import LMConfig, load_lm
    from relm.qa import read_qa

    items = read_qa(SQUAD)
    examples, tune, test = split(items, args.tune_questions, args.questions, args.seed)
    settings = {"questions": args.questions, "tune_questions": args.tune_questions, "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "zero_shot_chat": not args.zero_shot_plain, "template": "qa",
                "datastore": str(args.datastore), "threads": args.threads}
    report = load(args.out)
    if report and report.get("meta", {}).get("settings") != settings:
        sys.exit(f"qa_bench: {args.out} was run with other settings ({report['meta']['settings']}); pass another --out")
    ds = Datastore.open(args.datastore)
    if args.phase == "recall":
        report["meta"] = {"settings": settings, "passages": len(ds), "command": "python benchmarks/qa_bench.py "
                          + " ".join(argv if argv is not None else sys.argv[1:])}
        report["recall"] = recall_phase(ds, items, test, args)
        save(args.out, report)
        print(recall_table(report["recall"]))
        return 0
    lm = load_lm(LMConfig(threads=args.threads))
    report["meta"] = {"settings": settings, "lm": lm.name, "lm_identity": lm.identity(), "passages": len(ds),
                      "examples": [{"id": q.id, "question": q.question, "answer": q.gold} for q in examples],
                      "command": "python benchmarks/qa_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.phase in ("tune", "both") and args.tune_questions:
        run_phase("tune", tune, examples, todo, report, args, lm, ds, args.out)
    if args.phase in ("test", "both"):
        run_phase("test", test, examples, todo, report, args, lm, ds, args.out)
    report["comparisons"] = compare(report.get("test", {"conditions": {}}), args.bootstrap)
    report["chosen"] = choose(report.get("tune", {}))
    save(args.out, report)
    plots(report, args.out)
    print(table(report))
    return 0


def plots(report: dict[str, Any], out: Path) -> None:
    """EM, F1 and answer recall against k, per retriever, on each sample that ran a k sweep
    (OUT_tune-RETRIEVER.png, OUT_test-RETRIEVER.png beside --out)."""
    from relm.qa.report import plot_qa

    for phase in ("tune", "test"):
        conds = report.get(phase, {}).get("conditions", {})
        for r in sorted({c["retriever"] for c in conds.values() if c["retriever"]}):
            sweep = {n: c for n, c in conds.items() if c["retriever"] in (r, None)}
            if len({c["k"] for c in sweep.values()}) > 2:
                path = plot_qa(sweep, out.with_name(f"{out.stem}_{phase}-{r}.png"),
                               title=f"SQuAD v1.1 dev, {report[phase]['questions']} {phase} questions, {r}")
                say(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
