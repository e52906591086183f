"""Titles prepended for embedding and BM25; passages cut to fit the encoder; truncation counted."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, Datastore, ReaderConfig, build_datastore
from relm.corpus.chunking import (
    budget_passage_bounds,
    chunk_words,
    tokens_per_word,
    word_passage_bounds,
    word_spans,
)
from relm.corpus.documents import with_title
from relm.datastore import update as U
from relm.datastore.build import truncation_warning
from relm.encoders.tokens import EncoderTokens, resolve_passage_tokens, text_budget_after_title

from conftest import HashEncoder, make_text, write_jsonl


@pytest.fixture(scope="module")
def minilm_tokens():
    """all-MiniLM-L6-v2's own tokenizer (tokenizer.json only: no model load), its real 256-token limit."""
    from tokenizers import Tokenizer

    from relm.encoders import resolve_model_path

    return EncoderTokens(Tokenizer.from_file(str(resolve_model_path("all-MiniLM-L6-v2") / "tokenizer.json")),
                         max_length=256, n_special=2)


class CountingEncoder(HashEncoder):
    """The hash encoder with a real tokenizer at a small max length, recording the passages it was asked to
    embed (not the build's backend probe, `relm.encoders.compat.PROBE_TEXTS`)."""

    def __init__(self, tokens: EncoderTokens | None):
        self._tokens = tokens
        self.seen: list[str] = []

    def tokens(self):
        return self._tokens

    def encode(self, texts, **kw):
        from relm.encoders.compat import PROBE_TEXTS

        if tuple(texts) != PROBE_TEXTS:
            self.seen.extend(texts)
        return super().encode(texts, **kw)


def small_tokens(minilm_tokens, max_length: int) -> EncoderTokens:
    return EncoderTokens(minilm_tokens._tok, max_length=max_length, n_special=2)


# -- the pure pieces ------------------------------------------------------------------------------
def test_with_title_is_beirs_join():
    assert with_title("A Title", "the text") == "A Title the text"
    assert with_title(" A Title ", "text \n") == "A Title  text"  # (title + " " + text).strip()
    assert with_title(None, " text ") == " text " and with_title("  ", "text") == "text"


def test_budget_bounds_without_a_budget_are_the_word_bounds():
    for n in range(0, 40):
        assert budget_passage_bounds([1] * n, 8, 3, None) == word_passage_bounds(n, 8, 3)


def test_budget_bounds_pack_whole_words_under_both_limits():
    costs = [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4]
    bounds = budget_passage_bounds(costs, max_words=5, min_words=0, max_tokens=7)
    assert bounds == [(0, 2), (2, 7), (7, 12), (12, 14)]  # 6 tokens; 3+1+1+1+1 words; 5 words; 1+4
    assert [sum(costs[a:b]) for a, b in bounds] == [6, 7, 5, 5]


def test_a_word_over_the_budget_is_a_passage_of_its_own():
    assert budget_passage_bounds([2, 9, 2], max_words=10, min_words=0, max_tokens=4) == [(0, 1), (1, 2), (2, 3)]


def test_a_short_tail_merges_only_when_the_merge_fits():
    # tail of 1 word (< min_words 2): merged when 3 + 1 <= 4 ...
    assert budget_passage_bounds([1, 1, 1, 1, 1], max_words=4, min_words=2, max_tokens=5) == [(0, 5)]
    # ... kept apart when the merged passage would exceed the token budget
    assert budget_passage_bounds([2, 2, 2], max_words=2, min_words=2, max_tokens=4) == [(0, 2), (2, 3)]


@pytest.mark.parametrize("seed", range(20))
def test_budget_bounds_property(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 200))
    costs = rng.integers(1, 6, size=n)
    max_words, max_tokens = int(rng.integers(1, 30)), int(rng.integers(1, 40))
    min_words = int(rng.integers(0, max_words + 1))
    bounds = budget_passage_bounds(costs, max_words, min_words, max_tokens)
    assert [a for a, _ in bounds] == [0] + [b for _, b in bounds[:-1]] and (not n or bounds[-1][1] == n)
    for a, b in bounds:
        assert sum(costs[a:b]) <= max_tokens or b - a == 1
        assert b - a <= max_words + max(min_words - 1, 0)


def test_word_token_counts_add_up_to_the_passage_count(minilm_tokens):
    text = ("Naïve café-au-lait costs $3.50 (approx.)—really?\nSee https://example.org/x_y, "
            "pneumonoultramicroscopicsilicovolcanoconiosis  and 東京 too. ") * 5
    counts = minilm_tokens.word_tokens(text)
    assert len(counts) == len(word_spans(text)) and counts.sum() == minilm_tokens.count([text])[0]
    for a, b, _ in chunk_words(text, 7, 2, word_tokens=counts, max_tokens=20):
        assert minilm_tokens.count([text[a:b]])[0] <= 20


def test_tokens_per_word_puts_a_leading_space_token_on_the_next_word():
    spans = np.array([[0, 3], [4, 7]])
    assert tokens_per_word(spans, np.array([[0, 3], [3, 5], [5, 7]])).tolist() == [1, 2]


def test_resolving_the_budget():
    tok = type("T", (), {"text_budget": 254})()
    assert resolve_passage_tokens("auto", tok) == 254 and resolve_passage_tokens(100, tok) == 100
    assert resolve_passage_tokens(None, tok) is None and resolve_passage_tokens("auto", None) is None
    assert text_budget_after_title(254, 10) == 244 and text_budget_after_title(100, 99) == 25


def test_saved_configs_from_before_default_to_the_old_behaviour():
    old = ChunkConfig.from_dict({"mode": "words", "max_words": 256, "min_words": 32, "chunk_tokens": 64,
                                 "tokenizer": "smollm2"})
    assert old.max_tokens is None and old.prepend_title is False
    assert ChunkConfig().max_tokens == "auto"
    with pytest.raises(ConfigError, match="--max-tokens"):
        ChunkConfig(max_tokens=0)
    with pytest.raises(ConfigError, match="word passages only"):
        ChunkConfig(mode="tokens", prepend_title=True)


def test_truncation_warning_names_the_flag():
    assert truncation_warning({"passages": 100, "truncated": 2, "max_length": 256}, None) is None
    line = truncation_warning({"passages": 100, "truncated": 30, "max_length": 256}, None)
    assert "30 of 100 passages (30.0%)" in line and "--max-tokens auto" in line and "\n" not in line


# -- builds ---------------------------------------------------------------------------------------
def titled_records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"t{i}", "title": f"zebra{i} heading", "text": make_text(i, 60 + 11 * i), "domain": "alpha"}
            for i in range(start, start + n)]


def titled_config(**chunk) -> BuildConfig:
    return BuildConfig(reader=ReaderConfig(title_field="title"),
                       chunk=ChunkConfig(max_words=20, min_words=4, prepend_title=True, **chunk), shard_size=7)


def test_titles_are_embedded_and_indexed_not_stored(tmp_path, minilm_tokens):
    from relm.retrieval.bm25 import build_bm25_index
    from relm.retrieval.options import SearchOptions
    from relm.retrieval.retriever import Retriever, RetrieverConfig

    enc = CountingEncoder(small_tokens(minilm_tokens, 64))
    corpus = write_jsonl(tmp_path / "c.jsonl", titled_records(6))
    ds = build_datastore([corpus], tmp_path / "ds", titled_config(), encoder=enc)
    assert ds.manifest["chunker"]["prepend_title"] is True and ds.prepends_title
    texts = [ds.passage(i) for i in range(len(ds))]
    titles = [ds.document(int(ds.doc_index[i]))["title"] for i in range(len(ds))]
    assert all("zebra" not in t for t in texts)  # stored text is the document's own
    inputs = [f"{ti} {t}".strip() for ti, t in zip(titles, texts, strict=True)]
    assert sorted(enc.seen) == sorted(inputs)  # seen in length-sorted batches (encoders.batching)
    assert ds.passage_input_texts(range(len(ds))) == inputs  # one derivation, shared with BM25
    np.testing.assert_array_equal(ds.embeddings(range(len(ds))), HashEncoder().encode(inputs).astype(np.float16))

    build_bm25_index(ds, "bm25")
    ds._encoder = enc
    r = Retriever(ds, RetrieverConfig("bm25", bm25_index="bm25"))
    hits = r.search(["zebra3"], SearchOptions(k=50))[0]
    assert {h.doc_id for h in hits} == {"t3"} and len(hits) == len(ds.document_passages(3))  # the title term
    assert hits[0].title == "zebra3 heading" and "zebra" not in hits[0].text

    # add: the datastore's own setting, the new documents' titles embedded and BM25-indexed too
    extra = write_jsonl(tmp_path / "e.jsonl", titled_records(2, start=10))
    enc.seen.clear()
    ds = U.add_documents(ds, [extra], encoder=enc)
    new = range(len(ds) - len(enc.seen), len(ds))
    assert enc.seen and all(s.startswith("zebra1") for s in enc.seen)
    assert sorted(ds.passage_input_texts(new)) == sorted(enc.seen)
    ds._encoder = enc
    hits = Retriever(ds, RetrieverConfig("bm25", bm25_index="bm25")).search(["zebra11"], SearchOptions(k=50))[0]
    assert {h.doc_id for h in hits} == {"t11"}


def test_passages_fit_the_encoder_and_truncation_is_counted(tmp_path, minilm_tokens, caplog):
    corpus = write_jsonl(tmp_path / "c.jsonl", titled_records(6))
    enc = CountingEncoder(small_tokens(minilm_tokens, 24))  # 22 tokens of text per input
    ds = build_datastore([corpus], tmp_path / "fit", titled_config(), encoder=enc)
    assert ds.manifest["chunker"]["max_tokens"] == "auto" and ds.manifest["chunker"]["passage_tokens"] == 22
    assert minilm_tokens.count(enc.seen).max() <= 22  # title included
    counted = ds.manifest["build"]["encoder_input"]
    assert counted == {"max_length": 24, "passages": len(ds), "truncated": 0}
    assert ds.info()["encoder_input"] == counted
    assert Datastore.open(ds.root).info()["stats"]["encoder_input"] == counted

    old = CountingEncoder(small_tokens(minilm_tokens, 24))
    with caplog.at_level(logging.WARNING, logger="relm"):
        ds_old = build_datastore([corpus], tmp_path / "old", titled_config(max_tokens=None), encoder=old)
    cut = int(np.sum(minilm_tokens.count(old.seen) + 2 > 24))
    assert cut > 0 and ds_old.manifest["build"]["encoder_input"]["truncated"] == cut
    assert any("--max-tokens auto" in r.getMessage() for r in caplog.records)
    assert len(ds_old) < len(ds)  # fitting the encoder cuts more, shorter passages

    # add counts its own passages; relm info sums build and adds
    extra = write_jsonl(tmp_path / "e.jsonl", titled_records(2, start=10))
    ds = U.add_documents(ds, [extra], encoder=CountingEncoder(small_tokens(minilm_tokens, 24)))
    assert ds.info()["encoder_input"] == {"max_length": 24, "passages": len(ds), "truncated": 0}


def test_an_encoder_without_a_tokenizer_cuts_by_words_and_is_not_counted(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", titled_records(3))
    ds = build_datastore([corpus], tmp_path / "ds", titled_config(), encoder=CountingEncoder(None))
    assert ds.manifest["chunker"]["passage_tokens"] is None and "encoder_input" not in ds.manifest["build"]
    with pytest.raises(Exception, match="--max-tokens 10"):
        build_datastore([corpus], tmp_path / "n", titled_config(max_tokens=10), encoder=CountingEncoder(None))


def test_cli_flags_map_onto_the_config():
    from relm.cli import make_parser
    from relm.cli.build import config_from_args

    parse = lambda *a: config_from_args(make_parser().parse_args(["build", "x", "--out", "y", *a]))  # noqa: E731
    plain = parse()
    assert plain.chunk.prepend_title is False and plain.reader.title_field == "title"
    assert plain.chunk.max_tokens == "auto"
    titled = parse("--title-field", "name", "--max-tokens", "none")
    assert titled.chunk.prepend_title is True and titled.reader.title_field == "name"
    assert titled.chunk.max_tokens is None
    assert parse("--title-field", "t", "--no-prepend-title").chunk.prepend_title is False
    assert parse("--max-tokens", "128").chunk.max_tokens == 128
    with pytest.raises(ConfigError, match="--max-tokens must be auto, none or a positive integer"):
        parse("--max-tokens", "lots")
