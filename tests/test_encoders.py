"""The encode() contract: the default packaged model, plain HF encoders with mean pooling, offline errors."""

from __future__ import annotations

import numpy as np
import pytest

from relm import ConfigError, EncoderConfig
from relm.encoders import Encoder, load_encoder

from conftest import write_tiny_bert


def test_default_encoder_contract(encoder):
    assert isinstance(encoder, Encoder)
    texts = ["a short one", "a considerably longer sentence about retrieval-augmented language models", "x"]
    v = encoder.encode(texts, batch_size=2, normalize=True)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    # length-sorted batching must not reorder the output
    one_by_one = np.vstack([encoder.encode([t], normalize=True) for t in texts])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)
    raw = encoder.encode(texts, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), v, atol=1e-5)
    assert encoder.encode([], normalize=True).shape == (0, 384)
    ident = encoder.identity()
    assert ident["dim"] == 384 and ident["pooling"] == "mean" and len(ident["fingerprint"]) == 16


def test_plain_hf_encoder_uses_mean_pooling(tmp_path):
    """A plain transformers encoder directory (no sentence-transformers files) is mean-pooled over tokens."""
    import torch
    from transformers import AutoTokenizer, BertModel

    model_dir = write_tiny_bert(tmp_path / "tiny-bert")

    enc = load_encoder(EncoderConfig(model=str(model_dir)))
    assert enc.dim == 32 and enc.identity()["pooling"] == "mean"
    texts = ["retrieval from a datastore", "a second, longer text with more tokens in it than the first"]
    got = enc.encode(texts, normalize=False)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir)).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, C)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_encoder_fails_offline_with_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="offline"):
        load_encoder("no-such-org/no-such-encoder-xyz")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"0")
    with pytest.raises(ConfigError, match="directory"):
        load_encoder(str(f))


def test_left_truncation_keeps_the_end_of_a_long_text(encoder):
    """A text longer than max_seq_length encodes, with truncate="left", to the embedding of its last
    tokens (and with the default right truncation to that of its first tokens)."""
    tok = encoder.model.tokenizer
    head_words = "apple river cloud stone green music".split()
    tail_words = "table house light water night paper".split()
    assert all(len(tok.tokenize(w)) == 1 for w in head_words + tail_words)  # one wordpiece per word
    n = int(encoder.model.max_seq_length) - 2  # content tokens besides [CLS] and [SEP]
    rng = np.random.default_rng(0)
    words = list(rng.choice(head_words, 300)) + list(rng.choice(tail_words, 300))
    long, short = " ".join(words), "a short query"
    left = encoder.encode([long, short], truncate="left")
    right = encoder.encode([long, short])
    np.testing.assert_allclose(left[0], encoder.encode([" ".join(words[-n:])])[0], atol=1e-5)
    np.testing.assert_allclose(right[0], encoder.encode([" ".join(words[:n])])[0], atol=1e-5)
    assert float(left[0] @ right[0]) < 0.9  # the two ends are different text
    np.testing.assert_allclose(left[1], right[1], atol=1e-6)  # a text that fits is not cut either way
    assert tok.truncation_side == "right"  # the tokenizer's own setting is restored
    with pytest.raises(ConfigError, match="truncate must be one of"):
        encoder.encode([short], truncate="middle")


def test_token_counts_are_the_same_in_blocks(encoder):
    """`EncoderTokens.count` tokenizes in blocks (bounded memory); the counts do not depend on the block."""
    tokens = encoder.tokens()
    texts = [" ".join(["retrieval"] * i + ["datastore"] * (i % 3)) for i in range(11)]
    whole = tokens.count(texts, block=len(texts))
    np.testing.assert_array_equal(tokens.count(texts, block=3), whole)
    np.testing.assert_array_equal(tokens.count(texts, block=1), whole)
    assert whole[0] == 0 and whole[5] > 5 and tokens.count([]).shape == (0,)
