"""`relm quickstart`: the whole loop on documentation that ships inside Python itself, offline.

1. corpus: the `pydoc_data` topics (the language reference sections `help("with")` shows) and the
   docstrings of common standard-library modules, one JSONL document per topic / module;
   `--corpus PATH` uses the user's files instead;
2. hold out 10% of the documents (by a hash of their id) for evaluation;
3. build a datastore of the rest with the default encoder;
4. evaluate the default LM on the held-out text without and with retrieval (table + plot);
5. answer a few sample questions with and without retrieval, showing the passages retrieved.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

STDLIB_MODULES = (
    "abc argparse array asyncio base64 bisect collections contextlib copy csv dataclasses datetime decimal "
    "enum fnmatch fractions functools glob gzip hashlib heapq inspect io itertools json logging math "
    "operator os pathlib pickle random re shutil socket sqlite3 statistics string struct subprocess "
    "tempfile textwrap threading time typing unittest urllib.parse uuid zipfile"
).split()

QUESTIONS = (
    "How do I read a JSON file into a Python dictionary?",
    "What does the with statement do in Python?",
    "How can I remove duplicates from a list while keeping the order?",
)


def python_docs_corpus() -> Iterator[dict[str, Any]]:
    """Documents from Python's own documentation: pydoc topics, then stdlib module docstrings."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield {"id": f"topic/{name}", "title": name, "domain": "pydoc-topics", "text": text}
    for mod_name in STDLIB_MODULES:
        text = module_text(mod_name)
        if text:
            yield {"id": f"module/{mod_name}", "title": mod_name, "domain": "stdlib-docstrings", "text": text}


def module_text(name: str) -> str | None:
    """A module's docstring followed by each public class and function with its signature and docstring."""
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return None
    parts = [f"Module {name}\n\n{inspect.getdoc(mod) or ''}".strip()]
    for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
        if attr.startswith("_"):
            continue
        obj = getattr(mod, attr, None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", name) not in (name, f"_{name}", None) and not name.startswith("os"):
            continue
        doc = inspect.getdoc(obj)
        if not doc:
            continue
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        kind = "class" if inspect.isclass(obj) else "function"
        parts.append(f"{name}.{attr}{sig} ({kind})\n{doc}")
    return "\n\n".join(parts) if len(parts) > 1 or len(parts[0]) > 200 else None


def held_out(doc_id: str, fraction: float = 0.1) -> bool:
    """A stable 10% split: the first 8 bytes of sha256(id) below fraction·2^64."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h < fraction * 2**64


def split_corpus(records, out: Path, fraction: float = 0.1) -> tuple[Path, Path, dict[str, int]]:
    """Write corpus.jsonl and heldout.jsonl under out; every held-out document is whole and absent from the
    corpus. A split that leaves either side empty moves one document across."""
    records = list(records)
    if len(records) < 2:
        raise ConfigError(f"the quickstart corpus needs at least 2 documents, got {len(records)}")
    ev = [r for r in records if held_out(str(r["id"]), fraction)]
    train = [r for r in records if not held_out(str(r["id"]), fraction)]
    if not ev:
        ev, train = train[-1:], train[:-1]
    if not train:
        train, ev = ev[:1], ev[1:]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("corpus.jsonl", train), ("heldout.jsonl", ev)):
        path = out / name
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1], {"corpus_documents": len(train), "heldout_documents": len(ev)}


def read_user_corpus(paths: list[str]) -> list[dict[str, Any]]:
    from .config import ReaderConfig
    from .corpus.readers import read_documents, resolve_inputs

    docs = read_documents(resolve_inputs(paths, ReaderConfig()), ReaderConfig())
    return [{"id": d.id, "title": d.title, "domain": d.domain, "text": d.text} for d in docs]


@dataclass
class Answer:
    question: str
    without: str
    with_retrieval: str
    passages: list[dict[str, Any]] = field(default_factory=list)


def rag_prompt(question: str, passages: list[str]) -> str:
    context = "\n\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
    return f"Use the documentation excerpts to answer.\n\n{context}\n\nQuestion: {question}"


def answer_questions(retriever, lm, questions, *, k: int = 2, max_new_tokens: int = 80, passage_words: int = 150):
    """Each question answered by the LM alone and with the top-k passages a `Retriever` finds in its
    prompt (greedy)."""
    from .retrieval.options import SearchOptions

    out = []
    hits_all = retriever.search(list(questions), SearchOptions(k=k))
    for q, hits in zip(questions, hits_all, strict=True):
        texts = [" ".join(h.text.split()[:passage_words]) for h in hits]
        out.append(Answer(
            q,
            lm.generate(q, max_new_tokens=max_new_tokens, chat=True),
            lm.generate(rag_prompt(q, texts), max_new_tokens=max_new_tokens, chat=True),
            [{"id": h.passage_id, "doc": h.doc_id, "score": round(float(h.score), 4), "text": t}
             for h, t in zip(hits, texts, strict=True)],
        ))
    return out


def format_answers(answers: list[Answer], width: int = 240) -> str:
    lines = []
    for a in answers:
        lines += [f"Q: {a.question}", f"  LM alone:       {a.without}", f"  LM + retrieval: {a.with_retrieval}",
                  "  retrieved:"]
        for p in a.passages:
            snippet = " ".join(p["text"].split())[:width]
            lines.append(f"    [{p['score']:.3f}] {p['doc']}: {snippet}...")
        lines.append("")
    return "\n".join(lines)


def timed(stage: str, seconds: dict[str, float]):
    """Context manager recording a stage's wall time into `seconds`."""
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            seconds[stage] = round(time.perf_counter() - self.t0, 2)

    return _T()
