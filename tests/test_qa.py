"""Downstream QA with retrieval (relm.qa, `relm qa`): SQuAD EM/F1, answer recall, prompts and few-shot
splits, passages fitted to the window, multiple-choice log-likelihoods, the CLI and its bad input."""

from __future__ import annotations

import gzip
import json
import re
import string
from collections import Counter

import numpy as np
import pytest
import torch

from relm.errors import ConfigError, InputError
from relm.eval.answers import answer_recall, exact_match, normalize_answer, token_f1
from relm.qa import QAConfig, QAItem, load_prompt, read_qa, run_qa, split_items
from relm.qa.choices import choice_context
from relm.qa.context import FoundPassages, fit_passages, retrieve_all
from relm.qa.prompts import QAPrompt
from relm.qa.report import qa_table, summarize
from relm.retrieval.options import RetrieverConfig
from relm.retrieval.retriever import Retriever

from conftest import HashEncoder, build_hash_datastore, write_jsonl

# -- the official SQuAD v1.1 evaluate-v1.1.py, verbatim but for names ------------------------------------------

def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_em(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


CASES = [  # (prediction, golds, EM, F1) worked out by hand
    ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
    ("the Denver Broncos.", ["Denver Broncos"], 1.0, 1.0),  # article and punctuation dropped
    ("The cat sat", ["a cat sat down"], 0.0, 0.8),  # P = 2/2, R = 2/3
    ("x x y", ["x y y"], 0.0, 2 / 3),  # bag overlap: min counts, 2 shared of 3 each
    ("Santa Clara", ["Levi's Stadium", "Santa Clara, California"], 0.0, 0.8),  # max over golds
    ("Levis Stadium", ["Levi's Stadium", "Santa Clara, California"], 1.0, 1.0),
    ("", ["anything"], 0.0, 0.0),
    ("the", ["a"], 1.0, 0.0),  # both normalize to nothing: equal, and nothing shared
    ("1,000 people", ["1000 people"], 1.0, 1.0),  # punctuation inside numbers is removed too
    ("  MAY 21,   2013 ", ["May 21, 2013"], 1.0, 1.0),
    ("on June 4", ["June 4, 2014"], 0.0, 2 * (2 / 3) * (2 / 3) / (4 / 3)),
]


@pytest.mark.parametrize("prediction, golds, em, f1", CASES)
def test_em_f1_match_the_official_squad_script(prediction, golds, em, f1):
    assert normalize_answer(prediction) == official_normalize(prediction)
    assert exact_match(prediction, golds) == em == float(metric_max_over_ground_truths(official_em, prediction, golds))
    assert token_f1(prediction, golds) == pytest.approx(f1)
    assert token_f1(prediction, golds) == pytest.approx(metric_max_over_ground_truths(official_f1, prediction, golds))


def test_em_f1_need_golds():
    with pytest.raises(ValueError):
        exact_match("x", [])
    assert exact_match("Paris", "paris") == 1.0  # one gold string is a list of one


# -- QA files ----------------------------------------------------------------------------------------------

def test_read_jsonl_and_squad_json(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [{"id": "a", "question": " Who? ", "answers": ["X", "X", " Y "]},
                                            {"question": "When?", "answers": [{"text": "1999"}]},
                                            {"id": "c", "question": "Where?", "answers": "Here"}])
    items = read_qa(f)
    assert items[0] == QAItem("a", "Who?", ("X", "Y")) and items[1].id == "2" and items[2].answers == ("Here",)
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": [
        {"id": "q1", "question": "What?", "answers": [{"text": "it", "answer_start": 0},
                                                      {"text": "it", "answer_start": 0}, {"text": "that"}]}]}]}]}
    path = tmp_path / "dev.json.gz"
    path.write_bytes(gzip.compress(json.dumps(squad).encode()))
    assert read_qa(path) == [QAItem("q1", "What?", ("it", "that"))]
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Q", "choices": ["a", "b", "c"], "answer": "C"}])
    assert read_qa(mc, choices=True)[0].answer == 2


@pytest.mark.parametrize("rows, choices, message", [
    ([{"id": 1, "question": "ok", "answers": ["x"]}, {"id": 2, "question": "no answers here"}], False,
     r"qa.jsonl:2: no gold answers"),
    ([{"question": "ok", "answers": []}], False, r"qa.jsonl:1: no gold answers"),
    ([{"question": "  ", "answers": ["x"]}], False, r"qa.jsonl:1: empty or missing 'question'"),
    ([{"answers": ["x"]}], False, r"qa.jsonl:1: empty or missing 'question'"),
    ([{"id": 1, "question": "a", "answers": ["x"]}, {"id": 1, "question": "b", "answers": ["y"]}], False,
     r"qa.jsonl:2: question id '1' appears twice"),
    ([{"question": "q", "choices": ["a", "b"], "answer": 0}], False, r"need --choices"),
    ([{"question": "q", "choices": ["a", "b"], "answer": 2}], True, r"qa.jsonl:1: 'answer' must be the index"),
    ([{"question": "q", "choices": ["a"], "answer": 0}], True, r"at least 2"),
])
def test_bad_qa_files_name_file_and_line(tmp_path, rows, choices, message):
    with pytest.raises(InputError, match=message):
        read_qa(write_jsonl(tmp_path / "qa.jsonl", rows), choices=choices)


def test_bad_squad_json_and_missing_files(tmp_path):
    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"qas": [{"id": "q9", "question": "Why?", "answers": []}]}]}]}))
    with pytest.raises(InputError, match=r"question q9.*no gold answers"):
        read_qa(bad)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not SQuAD JSON"):
        read_qa(tmp_path / "x.json")
    with pytest.raises(InputError, match="no such QA file"):
        read_qa(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no questions"):
        read_qa(tmp_path / "empty.jsonl")


def test_examples_are_never_scored_and_the_split_is_seeded():
    items = [QAItem(str(i), f"q{i}", ("a",)) for i in range(50)]
    shots, scored = split_items(items, 5, seed=3, max_questions=20)
    assert len(shots) == 5 and len(scored) == 20
    assert not {s.id for s in shots} & {q.id for q in scored}
    assert [q.id for q in scored] == sorted((q.id for q in scored), key=int)  # file order kept
    assert split_items(items, 5, seed=3, max_questions=20) == (shots, scored)
    assert split_items(items, 5, seed=4, max_questions=20) != (shots, scored)
    other = [QAItem("t1", "q3", ("a",)), QAItem("t2", "elsewhere", ("b",))]
    shots, scored = split_items(items, 2, shots_from=other)
    assert len(scored) == 49 and "q3" not in {q.question for q in scored}  # a question in both files: not scored
    with pytest.raises(ConfigError, match="--shots 3"):
        split_items(items, 3, shots_from=other)
    with pytest.raises(ConfigError, match="--shots 50"):
        split_items(items, 50)


# -- prompts -----------------------------------------------------------------------------------------------

def test_templates_examples_and_closed_book():
    p = load_prompt("qa")
    shots = [QAItem("s", "What is {x}?", ("a b",))]
    text = p.text("Who {y}?", ["one  two", "three"], shots)
    assert text == ("Answer the question in a few words.\n\n[1] one two\n\n[2] three\n\n"
                    "Question: What is {x}?\nAnswer: a b\n\nQuestion: Who {y}?\nAnswer:")
    assert p.text("Who?", [], shots) == "Answer the question in a few words.\n\nQuestion: What is {x}?\nAnswer: a b" \
        "\n\nQuestion: Who?\nAnswer:"  # closed-book: no passages paragraph
    custom = QAPrompt("Literal {{braces}}\n\nDocs:\n{passages}\n\nQ: {prompt}\nA:")
    assert custom.text("q", ["p"]) == "Literal {braces}\n\nDocs:\n[1] p\n\nQ: q\nA:"


@pytest.mark.parametrize("template, message", [
    ("{passages}\n\nQuestion:", r"\{question\} once"),
    ("{passages}\n\n{question} {question}", r"\{question\} once"),
    ("{passages}\n\n{question} {answer}", r"nothing else"),
    ("{question}\n\n{passages}", r"last paragraph"),
    ("{passages}\nQ: {question}", r"different paragraphs"),
    ("{passages\n\n{question}", r"braces"),
])
def test_bad_templates(template, message):
    with pytest.raises(ConfigError, match=message):
        QAPrompt(template)


def test_template_without_passages_is_closed_book_only(tmp_path):
    p = QAPrompt("Q: {question}\nA:")
    p.check_k([0])
    with pytest.raises(ConfigError, match="no \\{passages\\}"):
        p.check_k([0, 3])
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_prompt(str(tmp_path / "missing.txt"))
    f = tmp_path / "t.txt"
    f.write_text("{passages}\n\nQ: {question}\nA:\n")
    assert load_prompt(str(f)).template == "{passages}\n\nQ: {question}\nA:"


# -- retrieval, recall, fitting --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qa_ds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("qa"), n_docs=40)


@pytest.fixture(scope="module")
def qa_items(qa_ds):
    """Questions that are passage texts (the hash encoder finds that passage first), answered by a word of it."""
    texts = qa_ds.passages(range(0, 40, 4))
    return [QAItem(f"q{i}", t, (t.split()[0],)) for i, t in enumerate(texts)]


def test_answer_recall_on_a_tiny_datastore(qa_ds, qa_items):
    retriever = Retriever(qa_ds, RetrieverConfig("exact"))
    found = retrieve_all(retriever, [q.question for q in qa_items], 3)
    for item, f in zip(qa_items, found, strict=True):
        assert qa_ds.passage(f.ids[0]) == item.question and len(f.ids) == 3
        assert answer_recall(item.answers, f.texts) == 1.0  # its own passage holds the answer
        elsewhere = next(t for i, t in enumerate(qa_ds.passages(range(len(qa_ds)))) if i not in f.ids)
        gold = next(w for w in elsewhere.split() if not any(w in t.split() for t in f.texts))
        assert answer_recall([gold], f.texts) == 0.0
    scores, ids = FoundPassages(qa_ds, found[0]).search_ids(["whatever"], 5)
    assert ids[0, :3].tolist() == list(found[0].ids) and (ids[0, 3:] == -1).all()


def test_fit_drops_the_least_relevant_first():
    lengths = [10, 20, 30, 40]  # prompt tokens with 0..3 passages
    assert fit_passages(3, lambda j: lengths[j], 40) == 3
    assert fit_passages(3, lambda j: lengths[j], 39) == 2
    assert fit_passages(3, lambda j: lengths[j], 10) == 0
    assert fit_passages(3, lambda j: lengths[j], 9) == -1


# -- runs with a tiny LM ---------------------------------------------------------------------------------------

def test_answers_come_from_generate_stream_and_are_scored(tiny_lm, qa_ds, qa_items):
    from relm.generation import DoneEvent, GenerationConfig, generate_stream

    retriever = Retriever(qa_ds, RetrieverConfig("exact"))
    shots, scored = split_items(qa_items, 2, seed=0)
    config = QAConfig(ks=(2,), shots=(0, 2), max_new_tokens=5, stop=("whale",))
    assert config.ks == (0, 2)  # closed-book always runs beside
    prompt = load_prompt("qa")
    runs = dict(run_qa(tiny_lm, retriever, prompt, scored, shots, config, show_progress=False))
    assert list(runs) == [(0, 0), (2, 0), (0, 2), (2, 2)]
    rec = runs[(2, 2)][0]
    item = scored[0]
    gen = GenerationConfig(max_new_tokens=5, stop=("whale",), k=2, retrieve_every=5,
                           template=prompt.generation_template(shots, 2))
    events = list(generate_stream(tiny_lm, retriever, item.question, gen, query=item.question))
    assert rec["prediction"] == events[-1].text.strip() and isinstance(events[-1], DoneEvent)
    assert rec["passage_ids"] == list(events[0].passage_ids)  # the same passages as a live retrieval
    for recs in runs.values():
        for r in recs:
            assert r["em"] == exact_match(r["prediction"], r["gold"]) and r["f1"] == token_f1(r["prediction"], r["gold"])
    assert all(r["recall"] == 1.0 and r["in_prompt"] == 2 for r in runs[(2, 0)])
    assert all(r["recall"] is None and r["passage_ids"] == [] for r in runs[(0, 0)])
    summary = summarize([r for recs in runs.values() for r in recs], config.conditions, n_boot=200)
    assert summary["k2-shots2"]["recall"] == 1.0 and "vs_closed_book" in summary["k2-shots2"]
    vs = summary["k2-shots0"]["vs_closed_book"]["f1"]
    assert vs["mean_diff"] == pytest.approx(summary["k2-shots0"]["f1"] - summary["k0-shots0"]["f1"])
    assert "k2-shots2" in qa_table(summary)


def test_overflowing_prompts_lose_their_least_relevant_passages(tiny_lm, qa_ds, qa_items):
    from relm.generation.config import render_prompt
    from relm.qa.run import fitted

    from conftest import make_text

    retriever = Retriever(qa_ds, RetrieverConfig("exact"))
    prompt = load_prompt("plain")
    item = qa_items[0]
    shots = [QAItem("long", make_text(1, 420), ("king",))]  # a long example fills most of the 512-token window
    found = retrieve_all(retriever, [item.question], 6)[0]
    template = prompt.generation_template(shots, 6)
    n_tokens = lambda j: len(tiny_lm.encode(render_prompt(template, item.question, list(found.texts[:j])))[0])  # noqa: E731
    reserve = tiny_lm.context_length - n_tokens(3)  # room for exactly 3 passages
    assert 0 < reserve < 64
    kept = fitted(tiny_lm, prompt, shots, item, found, 6, False, reserve)
    assert kept.ids == found.ids[:3]
    config = QAConfig(ks=(6,), shots=(1,), max_new_tokens=reserve, stop=("whale",))
    (_, closed), (_, recs) = run_qa(tiny_lm, retriever, prompt, [item], shots, config, found=[found],
                                    show_progress=False)
    assert recs[0]["in_prompt"] == 3 and recs[0]["dropped"] == 3 and recs[0]["retrieved"] == 6
    summary = summarize(closed + recs, config.conditions, n_boot=50)
    assert summary["k6-shots1"]["dropped_passages"] == 3 and summary["k6-shots1"]["questions_with_dropped"] == 1
    with pytest.raises(ConfigError, match="use fewer --shots"):
        fitted(tiny_lm, prompt, shots, item, found, 6, False, tiny_lm.context_length - n_tokens(0) + 1)


def test_multiple_choice_against_a_direct_log_prob(tiny_lm, qa_ds, qa_items):
    retriever = Retriever(qa_ds, RetrieverConfig("exact"))
    items = [QAItem(q.id, q.question, choices=("whale ship", "king", "forest wolf grandmother"), answer=i % 3)
             for i, q in enumerate(qa_items[:4])]
    prompt = load_prompt("qa")
    config = QAConfig(ks=(2,))
    runs = dict(run_qa(tiny_lm, retriever, prompt, items[1:], items[:1], config, task="choices",
                       conditions=[(0, 1), (2, 1)], show_progress=False))
    rec = runs[(2, 1)][0]
    item = items[1]
    texts = qa_ds.passages(rec["passage_ids"])
    context = choice_context(tiny_lm, prompt, items[:1], item, texts, 2, False)
    assert context.endswith("Question: " + item.question + "\nAnswer:") and "[2] " in context
    for c, got in zip(item.choices, rec["loglik"], strict=True):
        ctx, cont = tiny_lm.encode(context)[0], tiny_lm.encode(" " + c)[0]
        ids = torch.as_tensor(np.concatenate([ctx, cont]))[None]
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_lm.model(ids).logits[0].double(), -1)
        direct = sum(float(logp[len(ctx) + t - 1, cont[t]]) for t in range(len(cont)))
        assert got == pytest.approx(direct, abs=1e-3)
    raw, norm = np.array(rec["loglik"]), np.array(rec["loglik"]) / [len(c) for c in item.choices]
    assert rec["pred_raw"] == int(np.argmax(raw)) and rec["pred_norm"] == int(np.argmax(norm))
    assert rec["acc"] == float(rec["pred_raw"] == item.answer)
    summary = summarize(runs[(0, 1)] + runs[(2, 1)], [(0, 1), (2, 1)], "choices", n_boot=50)
    assert set(summary) == {"k0-shots1", "k2-shots1"} and "acc_norm" in summary["k2-shots1"]["vs_closed_book"]


def test_continuations_share_one_context_state(tiny_lm):
    """score_continuation leaves the context's state as it was, so each choice sees the same context, and
    agrees with a full forward of context + continuation."""
    from relm.lm.continuations import score_continuation

    ctx, conts = tiny_lm.encode("The whale and the king")[0], [tiny_lm.encode(" of the sea")[0], tiny_lm.encode(" wolf")[0]]
    state = tiny_lm.prefill(ctx)
    before = (state.ids.copy(), state.logits.copy())
    first = [score_continuation(tiny_lm, state, c) for c in conts]
    again = [score_continuation(tiny_lm, state, c) for c in conts]
    assert np.array_equal(state.ids, before[0]) and np.array_equal(state.logits, before[1])
    for (lp, greedy), (lp2, greedy2), c in zip(first, again, conts, strict=True):
        assert np.array_equal(lp, lp2) and greedy == greedy2 and len(lp) == len(c)
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_lm.model(torch.as_tensor(np.concatenate([ctx, c]))[None]).logits[0].double(), -1)
        direct = [float(logp[len(ctx) + t - 1, c[t]]) for t in range(len(c))]
        assert lp == pytest.approx(direct, abs=1e-4)
    with pytest.raises(ConfigError, match="at least one token"):
        score_continuation(tiny_lm, state, [])


# -- the CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture
def hash_queries(monkeypatch):
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())


def test_cli_qa_writes_summary_predictions_table_plot(qa_ds, qa_items, tiny_lm_dir, tmp_path, hash_queries, capsys):
    from relm.cli import main

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": q.id, "question": q.question, "answers": list(q.answers)}
                                             for q in qa_items])
    out = tmp_path / "out"
    assert main(["qa", str(qa_ds.root), str(qa), "--lm", str(tiny_lm_dir), "-k", "1,3", "--shots", "0,2",
                 "--max-new-tokens", "4", "--max-questions", "5", "--stop", "whale", "--out", str(out),
                 "--bootstrap", "100"]) == 0
    assert "k3-shots2" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 5 and sorted(summary["conditions"]) == [
        "k0-shots0", "k0-shots2", "k1-shots0", "k1-shots2", "k3-shots0", "k3-shots2"]
    assert summary["conditions"]["k3-shots0"]["recall"] == 1.0 and len(summary["examples"]) == 2
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"prediction", "gold", "passages", "em", "f1", "recall"} <= set(rows[0])
    with_passages = next(r for r in rows if r["k"] == 3)
    assert len(with_passages["passages"]) == 3 and with_passages["passages"][0]["text"] == with_passages["question"]
    assert (out / "table.md").read_text().startswith("| condition") and (out / "qa.png").stat().st_size > 1000
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"question": q.question, "choices": ["king", "whale"], "answer": i % 2}
                                             for i, q in enumerate(qa_items)])
    assert main(["qa", str(qa_ds.root), str(mc), "--choices", "--lm", str(tiny_lm_dir), "-k", "2",
                 "--out", str(tmp_path / "mc"), "--bootstrap", "100"]) == 0
    summary = json.loads((tmp_path / "mc" / "summary.json").read_text())
    assert summary["task"] == "choices" and summary["conditions"]["k2-shots0"]["questions"] == len(qa_items)


@pytest.mark.parametrize("extra, message", [
    (["-k", "500"], r"-k 500 exceeds the datastore's \d+ passages"),
    (["-k", "a,b"], r"-k 'a,b': give integers"),
    (["-k", "-1"], r"-k must be"),
    (["--shots", "20"], r"--shots 20"),
    (["--template", "nope"], r"neither a built-in template"),
    (["--max-new-tokens", "0"], r"--max-new-tokens"),
    (["--max-questions", "0"], r"--max-questions"),
])
def test_cli_bad_input_is_one_line(qa_ds, qa_items, tiny_lm_dir, tmp_path, hash_queries, capsys, extra, message):
    from relm.cli import main

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q.question, "answers": list(q.answers)} for q in qa_items])
    assert main(["qa", str(qa_ds.root), str(qa), "--lm", str(tiny_lm_dir), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_cli_bad_files(qa_ds, tiny_lm_dir, tmp_path, hash_queries, capsys):
    from relm.cli import main

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "fine", "answers": ["x"]}, {"question": "", "answers": ["y"]}])
    assert main(["qa", str(qa_ds.root), str(qa), "--lm", str(tiny_lm_dir)]) == 2
    assert "qa.jsonl:2: empty or missing 'question'" in capsys.readouterr().err
    template = tmp_path / "t.txt"
    template.write_text("Q: {question}\nA:")
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "fine", "answers": ["x"]}])
    assert main(["qa", str(qa_ds.root), str(good), "--lm", str(tiny_lm_dir), "--template", str(template)]) == 2
    assert "no {passages} placeholder" in capsys.readouterr().err


# -- lm-evaluation-harness -----------------------------------------------------------------------------------

def test_lm_eval_harness_wrapper_on_a_local_task(tiny_lm, qa_ds, qa_items, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from relm.generation.config import render_prompt
    from relm.lm.base import ScoreRequest
    from relm.qa.harness import TEMPLATE, RetrievalLM, last_paragraph

    retriever = Retriever(qa_ds, RetrieverConfig("exact"))
    wrapped = RetrievalLM(lm=tiny_lm, retriever=retriever, k=2)
    rows = [{"question": q.question, "choices": ["whale ship", "king"], "answer": i % 2} for i, q in enumerate(qa_items)]
    data = write_jsonl(tmp_path / "tiny.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        "task: relm_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\n  cache_dir: {tmp_path / 'hf-cache'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
    result = lm_eval.simple_evaluate(model=wrapped, tasks=["relm_tiny_mc"],
                                     task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
                                     log_samples=True)
    assert 0.0 <= result["results"]["relm_tiny_mc"]["acc,none"] <= 1.0
    sample = result["samples"]["relm_tiny_mc"][0]
    context, continuation = sample["arguments"][0]
    assert last_paragraph(context) == context  # no few-shot: the whole context is the query
    found = retrieve_all(retriever, [context], 2)[0]
    text = render_prompt(TEMPLATE, context, list(found.texts))
    ctx, cont = tiny_lm.encode(text)[0], tiny_lm.encode(continuation)[0]
    direct = float(np.sum(tiny_lm.score([ScoreRequest(np.concatenate([ctx, cont]), len(cont))])[0]))
    assert float(sample["resps"][0][0][0]) == pytest.approx(direct, abs=1e-3)  # passages prepended, then scored
    closed = RetrievalLM(lm=tiny_lm, k=0)
    req = Instance("loglikelihood", {}, (context, continuation), 0)
    ll_closed = closed.loglikelihood([req])[0][0]
    assert ll_closed == pytest.approx(float(np.sum(tiny_lm.score(
        [ScoreRequest(np.concatenate([tiny_lm.encode(context)[0], cont]), len(cont))])[0])), abs=1e-3)
    gen = Instance("generate_until", {}, (context, {"until": ["whale"], "max_gen_toks": 3}), 0)
    assert isinstance(wrapped.generate_until([gen])[0], str)
    assert closed.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (qa_items[0].question,), 0)])[0] < 0
    with pytest.raises(ConfigError, match="exceeds the datastore"):
        RetrievalLM(lm=tiny_lm, retriever=retriever, k=10_000)
