"""RETRO training: batches from a real neighbour database, resume continues the same run, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relm import ConfigError
from relm.retro import RetroConfig, RetroModel
from relm.retro.data import ChunkStream, sequence_starts, split_starts
from relm.retro.neighbours import build_neighbours, datastore_stream, full_chunk_ids
from relm.retro.train import TrainConfig, Trainer, batch_starts, evaluate_sequences, lr_at, step_line
from test_retro_neighbours import VOCAB, BowEncoder, _build

torch.set_num_threads(1)
M = 4


@pytest.fixture(scope="module")
def stream(tmp_path_factory, word_tokenizer_dir):
    rng = np.random.default_rng(0)
    phrases = [" ".join(rng.choice(VOCAB, size=M)) for _ in range(6)]  # a small repeated "language"
    records = [{"id": f"d{i}", "text": " ".join(phrases[(i + j) % 6] for j in range(6))} for i in range(24)]
    root = tmp_path_factory.mktemp("retrotrain")
    ds = _build(root, records, word_tokenizer_dir, BowEncoder())
    chunks, doc = datastore_stream(ds)
    db = build_neighbours(ds, chunks, doc, root / "nb", k=2, query_vectors=ds.embeddings(full_chunk_ids(ds)))
    return ChunkStream(chunks, db, vectors=np.asarray(ds.embeddings(np.arange(len(ds))))), len(VOCAB) + 1


def tiny(vocab: int, fusion: str = "retro", passage_dim: int = 8) -> RetroModel:
    torch.manual_seed(0)
    return RetroModel(RetroConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64,
                                  chunk_size=M, n_neighbours=2, cca_layers=[2], enc_layers=1, fusion=fusion,
                                  passage_dim=passage_dim))


def test_batches_and_schedule(stream):
    st, _ = stream
    b = st.batch(np.array([0, 3]), 4)
    assert b["tokens"].shape == (2, 16) and b["neighbours"].shape == (2, 4, 2, 2 * M)
    np.testing.assert_array_equal(b["targets"][:, :-1], b["tokens"][:, 1:])
    assert b["targets"][0, -1] == st.chunks[4, 0] and b["passage_vectors"].shape[:3] == (2, 4, 2)
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(55, cfg) == pytest.approx(5.5e-4)
    starts = sequence_starts(len(st.chunks), 4)
    np.testing.assert_array_equal(batch_starts(starts, 7, 4, 0), batch_starts(starts, 7, 4, 0))
    train, held = split_starts(starts, 0.25, 0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(starts)


def test_training_lowers_loss_and_resume_continues_the_same_run(stream, tmp_path):
    st, vocab = stream
    starts = sequence_starts(len(st.chunks), 4)
    cfg = TrainConfig(steps=24, batch_size=4, seq_chunks=4, warmup=2, lr=3e-3, min_lr=3e-4, eval_every=12,
                      checkpoint_every=100, log_every=4)
    straight = Trainer(tiny(vocab), st, starts, cfg, tmp_path / "a", held_out=st, held_out_starts=starts[:8],
                       chunk_bytes=np.full(len(st.chunks), 20))
    hist = straight.train()
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("held_out" in h and np.isfinite(h["held_out"]["bits_per_byte"]) for h in hist)
    first = Trainer(tiny(vocab), st, starts, cfg, tmp_path / "b")
    first.train(until=10)
    assert (tmp_path / "b" / "state.json").exists() and first.step == 10
    resumed = Trainer(tiny(vocab), st, starts, cfg, tmp_path / "b")
    resumed.train()
    assert resumed.step == 24
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5, msg=n)
    other = Trainer(tiny(vocab, fusion="relm"), st, starts, cfg, tmp_path / "b")
    with pytest.raises(ConfigError, match="another model config"):
        other.resume()


def test_baseline_and_relm_fusion_train(stream, tmp_path, caplog):
    st, vocab = stream
    starts = sequence_starts(len(st.chunks), 4)
    cfg = TrainConfig(steps=6, batch_size=4, seq_chunks=4, warmup=1, retrieval=False, log_every=3)
    with caplog.at_level("INFO", logger="relm"):
        Trainer(tiny(vocab), st, starts, cfg, tmp_path / "base").train(show_progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2 and lines[0].startswith("step 3/6 loss ") and "tok/s ETA 0:00:" in lines[0]
    assert step_line({"step": 70, "loss": 6.1, "lr": 9e-4, "tokens_per_s": 345.0}, 700, 700.0, 70).endswith(
        "345 tok/s ETA 1:45:00")
    relm = tiny(vocab, fusion="relm", passage_dim=st.vectors.shape[1])
    cfg = TrainConfig(steps=6, batch_size=4, seq_chunks=4, warmup=1, log_every=3)
    Trainer(relm, st, starts, cfg, tmp_path / "relm").train()
    on = evaluate_sequences(relm, st, starts[:4], 4, True, None)
    off = evaluate_sequences(relm, st, starts[:4], 4, False, None, per_chunk=True)
    assert on["loss"] != off["loss"] and len(off["chunk_nll"]) == 16


def test_retro_evaluation_windows_and_leakage_curve(stream, tmp_path):
    from relm.retro.evaluate import (
        comparison_pairs,
        evaluate_retro,
        leakage_table,
        plot_leakage,
        scored_from,
        spread,
        window_starts,
    )

    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(11, 4, 2).tolist() == [0, 2, 4, 6, 7]
    assert scored_from(window_starts(11, 4, 2), 4).tolist() == [0, 2, 2, 2, 3]
    st, vocab = stream
    model = tiny(vocab)
    for p in model.parameters():  # non-zero CCA output so retrieval matters
        if p.dim() >= 2:
            torch.nn.init.normal_(p, std=0.2)
    res = evaluate_retro({"on": (model, True), "off": (model, False)}, st, np.full(len(st.chunks), 20),
                         window_chunks=4, stride_chunks=2, comparisons=[("off", "on"), ("off", "missing")])
    n = len(st.chunks)
    assert res["chunks"] == n  # every chunk scored exactly once
    on, off = res["results"]["on"], res["results"]["off"]
    assert on["bits_per_byte"] != off["bits_per_byte"]
    curve = on["leakage_curve"]
    assert curve[-1]["chunks"] == n and curve[-1]["bpb"] == pytest.approx(on["bits_per_byte"])
    assert [c["chunks"] for c in curve] == sorted(c["chunks"] for c in curve)
    some = evaluate_retro({"on": (model, True)}, st, np.full(len(st.chunks), 20), window_chunks=4,
                          stride_chunks=2, max_windows=3)
    assert some["windows"] == 3 and some["windows_total"] == res["windows"] and 0 < some["chunks"] < n
    all_starts = window_starts(n, 4, 2)
    keep = spread(len(all_starts), 3)
    assert keep[0] == 0 and keep[-1] == len(all_starts) - 1 and len(keep) == 3
    assert some["chunks"] == int((4 - scored_from(all_starts, 4)[keep]).sum())  # each kept window's own chunks
    assert spread(5, None).tolist() == spread(5, 9).tolist() == [0, 1, 2, 3, 4] and spread(5, 2).tolist() == [0, 4]
    (comp,) = res["comparisons"]  # pairs naming an unknown label are dropped
    assert comp["curve"][-1]["rel_diff"] == pytest.approx(on["bits_per_byte"] / off["bits_per_byte"] - 1)
    table = leakage_table(res)
    row = table.splitlines()[-1]
    assert "| on |" in table and row.startswith("| on vs off | +") and row.count("%") == 3 * 2 and "| – |" in row  # r = 1 here
    assert comparison_pairs(["r ON", "r OFF", "b OFF"], ["b OFF"]) == [("r OFF", "r ON"), ("b OFF", "r ON")]
    assert plot_leakage(res, tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
