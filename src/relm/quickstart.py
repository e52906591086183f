"""`relm quickstart`: the whole loop on documentation that ships inside Python itself, offline.

1. corpus: the `pydoc_data` topics (the language reference sections `help("with")` shows) and the
   docstrings of common standard-library modules, one JSONL document per topic / module, read by a
   fresh isolated interpreter (`relm.pydocs`) so that one Python build always gives the same corpus;
   `--corpus PATH` uses the user's files instead;
2. hold out 10% of the documents (by a hash of their id) for evaluation;
3. build a datastore of the rest with the default encoder;
4. evaluate the default LM on the held-out text without and with retrieval (table + plot);
5. answer a few sample questions with and without retrieval, showing the passages retrieved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .pydocs import module_text, python_docs_corpus  # noqa: F401 (the in-process reader, re-exported)

log = logging.getLogger(__name__)

QUESTIONS = (
    "How do I read a JSON file into a Python dictionary?",
    "What does the with statement do in Python?",
    "How can I remove duplicates from a list while keeping the order?",
)


def python_docs_records(timeout: float = 300) -> list[dict[str, Any]]:
    """The Python-docs corpus as read by a fresh interpreter of this Python (`python -I -S`: no site
    packages, no environment, nothing imported but the standard library), so that it does not depend on
    what this process imported (see `relm.pydocs`)."""
    from . import pydocs

    try:
        proc = subprocess.run([sys.executable, "-I", "-S", pydocs.__file__], capture_output=True, text=True,
                              encoding="utf-8", timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot read Python's documentation with {sys.executable} ({e}); "
                          "pass your own files with --corpus") from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"reading Python's documentation failed ({last}); pass your own files with --corpus")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def corpus_fingerprint(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's numbers depend on besides the code and the models: the corpus (sha256 of its records
    in order) and the Python that produced it (its bundled docs change with the version and platform)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return {"sha256": h.hexdigest()[:16], "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": sys.platform}


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


QA_TEMPLATE = "Use the documentation excerpts to answer.\n\n{passages}\n\nQuestion: {prompt}"


def answer_questions(retriever, lm, questions, *, k: int = 2, max_new_tokens: int = 80) -> list[Answer]:
    """Each question answered greedily by the LM alone and with the top-k passages the retriever finds for
    it (one retrieval, `QA_TEMPLATE`, as a chat turn), both through `generate_stream`."""
    from .generation import DoneEvent, GenerationConfig, RetrievalEvent, generate_stream

    def run(q: str, with_retrieval: bool) -> tuple[str, RetrievalEvent | None]:
        config = GenerationConfig(max_new_tokens=max_new_tokens, k=k, retrieve_every=max_new_tokens,
                                  retrieval=with_retrieval, template=QA_TEMPLATE if with_retrieval else None,
                                  chat=True)
        found = text = None
        for event in generate_stream(lm, retriever, q, config):
            if isinstance(event, RetrievalEvent):
                found = event
            elif isinstance(event, DoneEvent):
                text = event.text.strip()
        return text, found

    out = []
    for q in questions:
        without, _ = run(q, False)
        answer, found = run(q, True)
        hits = retriever.ds.hits(np.asarray(found.scores), np.asarray(found.passage_ids))
        out.append(Answer(q, without, answer, [{"id": h.passage_id, "doc": h.doc_id, "score": round(h.score, 4),
                                                "text": h.text} for h in hits]))
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
