"""QA files: open-domain questions with gold answers, or multiple-choice items.

- JSONL (`.jsonl`, plain, `.gz` or `.zst`), one object per line: `id` (optional: numbered by line),
  `question`, and either `answers` (a list of gold strings, or SQuAD's [{"text": ...}]; one string is
  read as a list of one) or, with `choices=True`, `choices` (at least two strings) and `answer` (the
  0-based index of the right one, or its letter A, B, ...).
- SQuAD-format JSON (`.json`, `.json.gz`: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text", "answer_start"}]}]}]}]}), e.g. the official dev-v1.1.json; the
  distinct answer texts in order are the golds.

A file without answers, an empty question, a wrong answer index: an InputError naming file:line (a SQuAD
JSON file: the question id), never an item scored against nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..corpus.readers import COMPRESSIONS, InputFile, _lines, _open_stream
from ..errors import ConfigError, InputError


@dataclass(frozen=True)
class QAItem:
    """One question: gold `answers` (open QA), or `choices` and the right one's index `answer` (MC)."""

    id: str
    question: str
    answers: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    answer: int | None = None

    @property
    def gold(self) -> str:
        """The answer a few-shot example shows: the first gold, or the right choice."""
        return self.choices[self.answer] if self.choices else self.answers[0]


def _kind(path: Path) -> tuple[str, str | None]:
    name, compression = path.name.lower(), None
    for c in COMPRESSIONS:
        if name.endswith(c):
            name, compression = name[: -len(c)], c[1:]
    return ("json" if name.endswith(".json") else "jsonl"), compression


def read_qa(path: str | Path, *, choices: bool = False) -> list[QAItem]:
    """The items of a QA file (see the module docstring); ids must be unique."""
    p = Path(path)
    if not p.is_file():
        raise InputError(str(path), None, "missing", "no such QA file")
    kind, compression = _kind(p)
    inp = InputFile(p, str(path), kind, compression, "")
    if kind == "json":
        if choices:
            raise InputError(str(path), None, "format", "--choices reads JSONL (question, choices, answer), "
                             "not SQuAD JSON")
        items = _read_squad(inp)
    else:
        items = _read_jsonl(inp, choices)
    if not items:
        raise InputError(str(path), None, "empty", "no questions in the file")
    seen: dict[str, int] = {}
    for n, item in enumerate(items, 1):
        if item.id in seen:
            raise InputError(str(path), n if kind == "jsonl" else None, "duplicate_id",
                             f"question id {item.id!r} appears twice; ids must be unique")
        seen[item.id] = n
    return items


def _read_jsonl(inp: InputFile, choices: bool) -> list[QAItem]:
    items = []
    with open(inp.path, "rb") as raw:
        for n, data in _lines(inp, raw):
            if not data.strip():
                continue
            try:
                row = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(inp.display, n, "bad_json", f"not a JSON object ({e})") from None
            if not isinstance(row, dict):
                raise InputError(inp.display, n, "bad_json", "not a JSON object")
            items.append(_item(row, inp.display, n, choices))
    return items


def _item(row: dict, path: str, n: int, choices: bool) -> QAItem:
    def bad(reason: str, message: str) -> InputError:
        return InputError(path, n, reason, message)

    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise bad("no_question", "empty or missing 'question'")
    qid = str(row.get("id", n))
    if choices:
        opts = row.get("choices")
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(c, str) and c.strip() for c in opts):
            raise bad("no_choices", "'choices' must be a list of at least 2 non-empty strings")
        answer = row.get("answer")
        if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
            answer = ord(answer.upper()) - ord("A")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(opts):
            raise bad("no_answer", f"'answer' must be the index (0..{len(opts) - 1}) or letter of the right "
                      f"choice, got {row.get('answer')!r}")
        return QAItem(qid, question.strip(), choices=tuple(opts), answer=answer)
    golds = _golds(row.get("answers"))
    if not golds:
        hint = "; multiple-choice items (choices, answer) need --choices" if "choices" in row else ""
        raise bad("no_answers", f"no gold answers: give 'answers' as a list of non-empty strings{hint}")
    return QAItem(qid, question.strip(), answers=golds)


def _golds(value) -> tuple[str, ...]:
    """Distinct non-blank gold strings, in order, from a string, a list of strings or SQuAD's dicts."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    texts = [v.get("text") if isinstance(v, dict) else v for v in value]
    return tuple(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))


def _read_squad(inp: InputFile) -> list[QAItem]:
    with open(inp.path, "rb") as raw:
        try:
            doc = json.load(_open_stream(inp, raw))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(inp.display, None, "bad_json", f"not SQuAD JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(inp.display, None, "format", "SQuAD JSON needs a top-level 'data' list of articles "
                         "(or give JSONL with id, question, answers)")
    items = []
    for article in doc["data"]:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", len(items) + 1))
                where = f"{inp.display} (question {qid})"
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise InputError(where, None, "no_question", "empty or missing 'question'")
                golds = _golds(qa.get("answers"))
                if not golds:
                    raise InputError(where, None, "no_answers", "no gold answers (SQuAD v2's unanswerable "
                                     "questions are not scored; drop them first)")
                items.append(QAItem(qid, question.strip(), answers=golds))
    return items


def split_items(items: Sequence[QAItem], n_shots: int, *, seed: int = 0, shots_from: Sequence[QAItem] | None = None,
                max_questions: int | None = None) -> tuple[list[QAItem], list[QAItem]]:
    """(few-shot examples, scored questions). Examples come from `shots_from` (another split) or, without it,
    are a seeded draw from `items` that is then removed from the scored questions, so an example is never
    scored; `max_questions` takes a seeded sample of the rest, kept in file order. Same seed, same split."""
    if n_shots < 0:
        raise ConfigError(f"--shots must be >= 0, got {n_shots}")
    rng = np.random.default_rng(seed)
    pool = list(shots_from) if shots_from is not None else list(items)
    if n_shots > len(pool) - (0 if shots_from is not None else 1):
        where = "the --shots-file" if shots_from is not None else "the QA file (one question must stay to score)"
        raise ConfigError(f"--shots {n_shots}: {where} has only {len(pool)} questions")
    picked = sorted(rng.choice(len(pool), n_shots, replace=False).tolist()) if n_shots else []
    shots = [pool[i] for i in picked]
    if shots_from is None:
        taken = set(picked)
        scored = [q for i, q in enumerate(items) if i not in taken]
    else:
        shot_ids = {s.question for s in shots}
        scored = [q for q in items if q.question not in shot_ids]  # the same question in both files: not scored
    if max_questions is not None:
        if max_questions < 1:
            raise ConfigError(f"--max-questions must be >= 1, got {max_questions}")
        if max_questions < len(scored):
            keep = np.sort(rng.choice(len(scored), max_questions, replace=False))
            scored = [scored[i] for i in keep]
    return shots, scored
