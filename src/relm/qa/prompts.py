"""QA prompts: a template by name (`TEMPLATES`) or from a file, with {passages} and {question}.

A template is paragraphs separated by blank lines. The paragraph holding {question} must be the last one
(the answer continues it) and is also the few-shot format: each example is that paragraph with the
example's question, a space and its answer, placed before it. The paragraph holding {passages} (the
retrieved passages, numbered best first, as `generation.config.render_prompt` lists them) is left out of
a closed-book (k = 0) prompt. {prompt} is accepted for {question}.

`QAPrompt.generation_template(shots, k)` gives the template `GenerationConfig(template=...)` takes
({passages} and {prompt}, the question being the prompt), so answers go through `generate_stream`;
`QAPrompt.text(question, passages, shots)` the same text directly (multiple-choice scoring, checks).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..generation.config import check_template, render_prompt
from .data import QAItem

TEMPLATES = {
    # In-Context RALM's layout: the passages, then the question and a short answer
    "qa": "Answer the question in a few words.\n\n{passages}\n\nQuestion: {question}\nAnswer:",
    # the passages as a context to read, SQuAD's own wording
    "context": "Context:\n{passages}\n\nQuestion: {question}\nShort answer:",
    # no instruction at all: passages and a Q/A pair
    "plain": "{passages}\n\nQ: {question}\nA:",
}


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class QAPrompt:
    """A checked QA template (`template` holds {question}, and {passages} unless closed-book only)."""

    template: str
    name: str = "custom"

    def __post_init__(self):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:
            raise ConfigError(f"template {self.name} (--template): {e}; write literal braces as {{{{ and }}}}") from None
        fields = ["question" if f == "prompt" else f for f in fields]
        unknown = sorted(set(fields) - {"passages", "question"})
        if unknown or fields.count("question") != 1 or fields.count("passages") > 1:
            raise ConfigError(f"template {self.name} (--template) must hold {{question}} once and {{passages}} at "
                              f"most once, nothing else; it has {fields}")
        if "{question}" not in self.paragraphs[-1] and "{prompt}" not in self.paragraphs[-1]:
            raise ConfigError(f"template {self.name} (--template): {{question}} must be in the last paragraph "
                              "(after the last blank line), since the answer continues it")
        if "passages" in fields and any("{passages}" in p and ("{question}" in p or "{prompt}" in p)
                                        for p in self.paragraphs):
            raise ConfigError(f"template {self.name} (--template): put {{passages}} and {{question}} in "
                              "different paragraphs (a blank line between), so a closed-book prompt can drop "
                              "the passages")

    @property
    def paragraphs(self) -> list[str]:
        return self.template.split("\n\n")

    @property
    def has_passages(self) -> bool:
        return "{passages}" in self.template

    def check_k(self, ks: Sequence[int]) -> None:
        if any(k > 0 for k in ks) and not self.has_passages:
            raise ConfigError(f"template {self.name} (--template) has no {{passages}} placeholder; add one for k > 0 "
                              "(or run closed-book, -k 0)")

    def _literal(self, paragraph: str, **values: str) -> str:
        """A paragraph as format-ready text: literal braces escaped, placeholders in `values` filled in
        (literally), {passages} and {question} otherwise kept (the latter as {prompt})."""
        fill = {"passages": "\x00P\x00", "question": "\x00Q\x00"}
        fill.update(values)
        text = _escape(paragraph.format(**fill, prompt=fill["question"]))
        return text.replace("\x00P\x00", "{passages}").replace("\x00Q\x00", "{prompt}")

    def shot(self, item: QAItem) -> str:
        """One few-shot example (plain text): the question paragraph filled in, then ' ' and the answer."""
        return self.paragraphs[-1].format(question=item.question, prompt=item.question) + " " + item.gold

    def generation_template(self, shots: Sequence[QAItem], k: int) -> str:
        """The template for `GenerationConfig(template=...)`: the examples filled in (braces escaped), the
        passages paragraph kept for k > 0 and dropped for k = 0, {question} as {prompt}."""
        paragraphs = [p for p in self.paragraphs if k > 0 or "{passages}" not in p]
        head = [self._literal(p) for p in paragraphs[:-1]]
        examples = [_escape(self.shot(s)) for s in shots]
        return check_template("\n\n".join([*head, *examples, self._literal(paragraphs[-1])]))

    def text(self, question: str, passages: Sequence[str], shots: Sequence[QAItem] = ()) -> str:
        """The prompt itself: what `generate_stream` renders from `generation_template` (no chat turn)."""
        return render_prompt(self.generation_template(shots, len(passages)), question, list(passages))


def load_prompt(spec: str) -> QAPrompt:
    """A template by name (see TEMPLATES) or the text of a file."""
    if spec in TEMPLATES:
        return QAPrompt(TEMPLATES[spec], spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--template {spec!r}: neither a built-in template ({', '.join(TEMPLATES)}) nor a file")
    try:
        text = path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--template {spec}: cannot read it ({e})") from None
    return QAPrompt(text, str(path))
