"""RETRO model: Llama equivalence, the causal shift of chunked cross-attention, masks, KV-cache decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from relm.errors import ConfigError
from relm.retro import RetroConfig, RetroModel
from relm.retro.model import default_cca_layers, is_retrieval_parameter

torch.set_num_threads(1)

M, K, R, T, V = 4, 2, 8, 16, 50  # chunk size, neighbours, neighbour length, tokens, vocab
L = T // M


def tiny_config(**overrides) -> RetroConfig:
    args = dict(vocab_size=V, d_model=32, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=64,
                chunk_size=M, n_neighbours=K, neighbour_len=R, cca_layers=[2, 3], enc_layers=1,
                enc_d_model=16, enc_heads=2, passage_dim=12)
    return RetroConfig(**{**args, **overrides})


def trained_like(config: RetroConfig, seed: int = 0) -> RetroModel:
    """A model whose CCA output projections are random, as after training (fresh ones are zero)."""
    torch.manual_seed(seed)
    model = RetroModel(config).eval()
    for block in model.layers:
        if block.cca is not None:
            nn.init.normal_(block.cca.attn.o_proj.weight, std=0.3)
    return model


def inputs(seed: int = 0, B: int = 2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    neighbours = torch.randint(0, V, (B, L, K, R), generator=g)
    return tokens, neighbours


@torch.no_grad()
def logits_of(model, *args, **kwargs):
    return model(*args, **kwargs)[0]


# -- retrofitting a Hugging Face Llama --------------------------------------------------------------------


def tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hc = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=tie)
    return LlamaForCausalLM(hc).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_from_llama_matches_hf_logits(tie):
    hf = tiny_llama(tie)
    model = RetroModel.from_llama(hf, cca_layers=[2], chunk_size=M, n_neighbours=K, neighbour_len=R).eval()
    assert model.config.tie_embeddings is tie and model.config.n_kv_heads == 2
    tokens = torch.randint(0, 100, (2, T))
    neighbours = torch.randint(0, 100, (2, L, K, R))
    with torch.no_grad():
        ref = hf(tokens).logits
    # same op order as modeling_llama: bitwise equal on CPU in practice; the tolerance is the contract
    torch.testing.assert_close(logits_of(model, tokens, retrieval=False), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_of(model, tokens, neighbours), ref, atol=1e-5, rtol=1e-5)


def test_freeze_base_leaves_retrieval_trainable():
    model = RetroModel.from_llama(tiny_llama(False), cca_layers=[2, 3], chunk_size=M, neighbour_len=R)
    model.freeze_base()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if is_retrieval_parameter(n)}
    assert any(n.startswith("encoder.") for n in trainable)
    assert {"layers.1.cca.attn.o_proj.weight", "layers.2.cca_norm.weight"} <= trainable
    assert "embed_tokens.weight" not in trainable and "layers.1.self_attn.q_proj.weight" not in trainable
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n in trainable)


def test_fresh_cca_is_a_no_op():
    model = RetroModel(tiny_config()).eval()
    tokens, neighbours = inputs()
    assert torch.equal(logits_of(model, tokens, neighbours), logits_of(model, tokens, retrieval=False))


# -- causality -------------------------------------------------------------------------------------


def test_logits_ignore_future_tokens():
    model = trained_like(tiny_config())
    tokens, neighbours = inputs()
    base = logits_of(model, tokens, neighbours)
    for t in (0, 2, 3, 7, 12):
        changed = tokens.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % V
        out = logits_of(model, changed, neighbours)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", ["retro", "relm"])
def test_neighbours_of_a_chunk_are_read_from_its_last_token_on(fusion):
    model = trained_like(tiny_config(fusion=fusion))
    tokens, neighbours = inputs()
    vectors = torch.randn(2, L, K, 12)
    key = "neighbours" if fusion == "retro" else "passage_vectors"
    retrieved = neighbours if fusion == "retro" else vectors
    base = logits_of(model, tokens, **{key: retrieved})
    for u in range(L):
        changed = retrieved.clone()
        changed[:, u] = (changed[:, u] + 1) % V if fusion == "retro" else torch.randn_like(changed[:, u])
        out = logits_of(model, tokens, **{key: changed})
        first = (u + 1) * M - 1  # the last token of chunk u is the first to read its neighbours
        torch.testing.assert_close(out[:, :first], base[:, :first], atol=1e-6, rtol=0)
        assert (out[:, first] - base[:, first]).abs().max() > 1e-4


def test_neighbours_of_the_last_partial_chunk_are_never_read():
    model = trained_like(tiny_config())
    tokens, neighbours = inputs()
    tokens = tokens[:, : T - 1]  # 15 tokens: chunk 3 is incomplete
    base = logits_of(model, tokens, neighbours)
    changed = neighbours.clone()
    changed[:, L - 1] = (changed[:, L - 1] + 3) % V
    assert torch.equal(logits_of(model, tokens, changed), base)
    assert torch.equal(logits_of(model, tokens, neighbours[:, : L - 1]), base)  # L = T // m suffices


# -- masks -----------------------------------------------------------------------------------------


def test_all_masked_neighbours_equal_retrieval_off():
    model = trained_like(tiny_config())
    tokens, neighbours = inputs()
    off = logits_of(model, tokens, retrieval=False)
    none = torch.zeros(2, L, K, R, dtype=torch.bool)
    out = logits_of(model, tokens, neighbours, none)
    assert not out.isnan().any()
    torch.testing.assert_close(out, off, atol=1e-6, rtol=0)
    # only chunk 0 masked: positions reading chunk 0 (or nothing) are as without retrieval
    mask = torch.ones(2, L, K, R, dtype=torch.bool)
    mask[:, 0] = False
    out = logits_of(model, tokens, neighbours, mask)
    torch.testing.assert_close(out[:, : 2 * M - 1], off[:, : 2 * M - 1], atol=1e-6, rtol=0)
    assert (out[:, 2 * M - 1] - off[:, 2 * M - 1]).abs().max() > 1e-4


def test_masked_neighbour_tokens_do_not_matter():
    model = trained_like(tiny_config())
    tokens, neighbours = inputs()
    mask = torch.ones(2, L, K, R, dtype=torch.bool)
    mask[:, 1, 1] = False  # neighbour 1 of chunk 1 is missing
    mask[:, 2, 0, 5:] = False  # neighbour 0 of chunk 2 is padded after 5 tokens
    base = logits_of(model, tokens, neighbours, mask)
    changed = neighbours.clone()
    changed[~mask] = (changed[~mask] + 7) % V
    torch.testing.assert_close(logits_of(model, tokens, changed, mask), base, atol=1e-6, rtol=0)
    changed[:, 1, 0] = (changed[:, 1, 0] + 1) % V  # a present neighbour does matter
    assert (logits_of(model, tokens, changed, mask) - base).abs().max() > 1e-4


def test_relm_fusion_masks_and_zero_init():
    tokens, _ = inputs()
    vectors = torch.randn(2, L, K, 12)
    fresh = RetroModel(tiny_config(fusion="relm")).eval()
    assert fresh.encoder is None and fresh.fusion is not None
    off = logits_of(fresh, tokens, retrieval=False)
    assert torch.equal(logits_of(fresh, tokens, passage_vectors=vectors), off)
    model = trained_like(tiny_config(fusion="relm"))
    off = logits_of(model, tokens, retrieval=False)
    missing = torch.zeros(2, L, K, dtype=torch.bool)
    torch.testing.assert_close(logits_of(model, tokens, passage_vectors=vectors, vector_mask=missing), off,
                               atol=1e-6, rtol=0)
    token_mask = torch.zeros(2, L, K, R, dtype=torch.bool)  # a neighbour_mask works too: any token = present
    out = logits_of(model, tokens, passage_vectors=vectors, neighbour_mask=token_mask)
    torch.testing.assert_close(out, off, atol=1e-6, rtol=0)
    one = torch.ones(2, L, K, dtype=torch.bool)
    one[:, :, 1] = False
    changed = vectors.clone()
    changed[:, :, 1] = torch.randn(2, L, 12)
    out = logits_of(model, tokens, passage_vectors=changed, vector_mask=one)
    torch.testing.assert_close(out, logits_of(model, tokens, passage_vectors=vectors, vector_mask=one),
                               atol=1e-6, rtol=0)


def test_loss_ignores_minus_100_and_rejects_bad_shapes():
    model = trained_like(tiny_config())
    tokens, neighbours = inputs()
    targets = torch.roll(tokens, -1, 1)
    targets[:, -1] = -100
    logits, loss = model(tokens, neighbours, targets=targets)
    ref = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, :-1].reshape(-1))
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ConfigError, match="pad missing neighbours"):
        model(tokens, neighbours[:, : L - 2])
    with pytest.raises(ConfigError, match="fusion='relm'"):
        model(tokens, passage_vectors=torch.randn(2, L, K, 12))
    with pytest.raises(ConfigError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


# -- decoding --------------------------------------------------------------------------------------


def make_retrieve(fusion: str, calls: list):
    def retrieve(chunk: np.ndarray):
        calls.append(chunk.copy())
        rng = np.random.default_rng(int(chunk @ (np.arange(M) + 3)))
        if fusion == "relm":
            return rng.standard_normal((K, 12)).astype(np.float32), np.array([True, chunk[0] % 2 == 0])
        mask = np.ones((K, R), dtype=bool)
        mask[1, 6:] = False
        return rng.integers(0, V, (K, R)), mask
    return retrieve


@pytest.mark.parametrize("fusion,prompt_len", [("retro", 3), ("retro", 8), ("relm", 6)])
def test_kv_cache_generation_equals_full_recompute(fusion, prompt_len):
    model = trained_like(tiny_config(fusion=fusion))
    prompt = torch.randint(0, V, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    runs = {}
    for use_cache in (True, False):
        calls = []
        out, logits = model.generate(prompt, 14, retrieve=make_retrieve(fusion, calls), use_cache=use_cache,
                                     return_logits=True)
        runs[use_cache] = out, logits, calls
    (a, la, ca), (b, lb, cb) = runs[True], runs[False]
    assert a.shape == (1, prompt_len + 14) and torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=0)
    # one retrieval per completed chunk, queried with that chunk's ids
    assert len(ca) == len(cb) == (prompt_len + 13) // M
    for u, chunk in enumerate(ca):
        assert np.array_equal(chunk, a[0, u * M:(u + 1) * M].numpy())
    # the neighbours are used: without retrieval the logits differ
    _, off = model.generate(prompt, 14, return_logits=True)
    assert (off - la).abs().max() > 1e-4


def test_sampling_is_seeded():
    model = trained_like(tiny_config())
    prompt = torch.tensor([[1, 2, 3]])
    retrieve = make_retrieve("retro", [])
    runs = [model.generate(prompt, 10, retrieve=retrieve, temperature=1.0, top_p=0.9, seed=s, use_cache=c)
            for s, c in [(5, True), (5, False), (6, True)]]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# -- training --------------------------------------------------------------------------------------


def test_tiny_model_overfits_with_retrieval():
    torch.manual_seed(0)
    model = RetroModel(tiny_config(n_layers=2, cca_layers=[1, 2]))
    seq = torch.tensor([[5, 9, 2, 7, 1, 8, 3, 6] * 2])  # (1, T) repetitive
    nxt = torch.cat([seq[:, 1:], seq[:, :1]], 1)
    # each chunk's neighbours: the chunk and its continuation, as retrieved from a datastore holding seq
    padded = torch.cat([seq, seq], 1)
    neighbours = torch.stack([padded[0, u * M: u * M + R] for u in range(L)])  # (L, r)
    neighbours = neighbours[None, :, None].repeat(1, 1, K, 1)  # (1, L, k, r)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(seq, neighbours, targets=nxt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    assert all(b.cca.attn.o_proj.weight.abs().max() > 0 for b in model.layers)  # the CCA path trained


def test_retrieval_carries_the_continuation_to_the_next_chunk():
    """Random token sequences (nothing to learn without retrieval); chunk u's neighbour is [C_u, C_{u+1}],
    what a datastore holding the text returns. Through the causal shift, the tokens of C_{u+1} can be copied
    from it: trained with retrieval, their loss falls far below log V; the same model with retrieval off
    stays near log V, and so does the first chunk (whose neighbours are never readable). (Without CCA
    positions, cca_positions=False, the copy must be found by content alone: 3.04 nats after the same 300
    steps, against 0.01 with them.)"""
    torch.manual_seed(0)
    model = RetroModel(tiny_config(n_layers=2, cca_layers=[1, 2], d_model=64, d_ff=128, n_heads=4, n_kv_heads=2,
                                   enc_d_model=32, n_neighbours=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)

    def batch(b: int = 16):
        seq = torch.randint(0, V, (b, T + M), generator=g)
        nb = torch.stack([seq[:, u * M: u * M + R] for u in range(L)], 1)[:, :, None]  # (b, L, 1, r)
        targets = seq[:, 1: T + 1].clone()
        return seq[:, :T], nb, targets

    for _ in range(300):
        tokens, nb, targets = batch()
        _, loss = model(tokens, nb, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens, nb, targets = batch(64)
    with torch.no_grad():
        on, off = model(tokens, nb)[0], model(tokens)[0]
    nll = lambda lg: torch.nn.functional.cross_entropy(lg.transpose(1, 2), targets, reduction="none")  # noqa: E731
    later = slice(M, T - 1)  # predicting tokens of chunks 2.. (the last target lies past the last neighbour)
    log_v = float(np.log(V))
    assert nll(on)[:, later].mean() < 0.3 * log_v
    assert nll(off)[:, later].mean() > 0.8 * log_v and nll(on)[:, : M - 1].mean() > 0.8 * log_v


@pytest.mark.parametrize("fusion", ["retro", "relm"])
def test_bf16_autocast_forward_and_backward(fusion):
    """The AMP path the trainer takes on GPUs (autocast to bf16), run on the CPU: finite loss close to fp32,
    gradients for the retrieval parameters."""
    model = trained_like(tiny_config(fusion=fusion)).train()
    tokens, neighbours = inputs()
    kw = ({"neighbours": neighbours} if fusion == "retro" else
          {"passage_vectors": torch.randn(2, L, K, 12), "vector_mask": torch.ones(2, L, K, dtype=torch.bool)})
    targets = torch.roll(tokens, -1, 1)
    ref = model(tokens, targets=targets, **kw)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(tokens, targets=targets, **kw)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()
    loss.backward()
    cca = next(b.cca for b in model.layers if b.cca is not None)
    assert cca.attn.q_proj.weight.grad is not None and cca.attn.q_proj.weight.grad.abs().sum() > 0


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    (dict(d_model=33), "divisible by n_heads"),
    (dict(d_model=30), "must be even"),
    (dict(n_kv_heads=3, n_heads=4), "multiple of n_kv_heads"),
    (dict(cca_layers=[0]), "outside"),
    (dict(cca_layers=[4]), "outside"),
    (dict(cca_layers=[]), "empty"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(fusion="fid"), "unknown fusion"),
    (dict(enc_d_model=15), "divisible by enc_heads"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)


def test_config_round_trip_and_defaults():
    config = tiny_config(fusion="relm", tie_embeddings=True)
    assert RetroConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown RetroConfig fields"):
        RetroConfig.from_dict({**config.to_dict(), "colour": 1})
    default = RetroConfig(n_layers=12)
    assert default.cca_layers == [6, 9, 12] and default.neighbour_len == 128 and default.n_kv_heads == 8
    assert default.cca_positions  # the paper's relative positions in CCA; a config saved before them had none:
    old = {k: v for k, v in default.to_dict().items() if k != "cca_positions"}
    assert not RetroConfig.from_dict(old).cca_positions
    assert default_cca_layers(32) == [6, 9, 12, 15, 18, 21, 24, 27, 30] and default_cca_layers(3) == [3]
