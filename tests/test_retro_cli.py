"""`relm retro ...` in-process: neighbours, train, baseline, retrofit, eval with the leakage curve, generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relm.cli import main
from test_retro_neighbours import VOCAB, BowEncoder, _build

from conftest import write_jsonl

torch.set_num_threads(1)


def texts(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    phrases = [" ".join(rng.choice(VOCAB, size=4)) for _ in range(5)]
    return [{"id": f"s{seed}-{i}", "text": " ".join(phrases[(i + j) % 5] for j in range(8))} for i in range(n)]


@pytest.fixture
def setup(tmp_path, tiny_lm_dir, monkeypatch):
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: BowEncoder())
    ds = _build(tmp_path, texts(20, 0), tiny_lm_dir, BowEncoder())  # the tiny Llama's tokenizer
    evalf = write_jsonl(tmp_path / "heldout.jsonl", texts(4, 1))
    return ds, evalf, tmp_path


def test_retro_cli_end_to_end(setup, capsys, tiny_lm_dir):
    ds, evalf, tmp = setup
    root = str(ds.root)
    assert main(["retro", "neighbours", root, "--out", str(tmp / "nb")]) == 0
    assert main(["retro", "neighbours", root, "--eval", str(evalf), "--out", str(tmp / "nb-eval")]) == 0
    common = ["--neighbours", str(tmp / "nb"), "--eval", str(evalf), "--eval-neighbours", str(tmp / "nb-eval"),
              "--steps", "6", "--batch-size", "2", "--seq-chunks", "4", "--warmup", "1", "--eval-every", "3",
              "--eval-sequences", "2"]
    tiny = ["--d-model", "32", "--layers", "2", "--heads", "2", "--d-ff", "64", "--cca-layers", "2",
            "--enc-layers", "1"]
    assert main(["retro", "train", root, "--out", str(tmp / "retro"), *common, *tiny]) == 0
    assert main(["retro", "train", root, "--out", str(tmp / "base"), "--no-retrieval", *common, *tiny]) == 0
    assert main(["retro", "train", root, "--out", str(tmp / "relm"), "--fusion", "relm", *common, *tiny]) == 0
    assert main(["retro", "retrofit", root, "--base", str(tiny_lm_dir), "--out", str(tmp / "rf"),
                 "--cca-layers", "2", "--enc-layers", "1", *common]) == 0
    state = json.loads((tmp / "rf" / "state.json").read_text())
    assert state["base"] == str(tiny_lm_dir) and state["step"] == 6
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "trained" in printed
    out = tmp / "eval"
    assert main(["retro", "eval", str(tmp / "retro"), str(tmp / "base"), str(tmp / "relm"), str(tmp / "rf"),
                 "--datastore", root, "--eval", str(evalf), "--neighbours", str(tmp / "nb-eval"),
                 "--window", "16", "--stride", "8", "--out", str(out)]) == 0
    res = json.loads((out / "retro_eval.json").read_text())
    assert set(res["results"]) == {"retro ON", "retro OFF", "base OFF", "relm ON", "relm OFF", "rf ON", "rf OFF"}
    assert (out / "leakage.png").read_bytes()[:4] == b"\x89PNG"
    assert "r≤0.125" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main(["retro", "generate", str(tmp / "retro"), "whale ship captain sea harpoon",
                 "--datastore", root, "--max-new-tokens", "6"]) == 0
    retro_text = capsys.readouterr().out.strip()
    assert retro_text
    # `relm generate` with a RETRO run is the same path: the same greedy tokens
    assert main(["generate", root, "whale ship captain sea harpoon", "--lm", str(tmp / "retro"),
                 "--max-new-tokens", "6", "--ignore-eos"]) == 0
    assert capsys.readouterr().out.strip().startswith(retro_text)


def test_retro_cli_errors(setup, capsys, word_tokenizer_dir, tiny_lm_dir, tmp_path_factory):
    ds, evalf, tmp = setup
    root = str(ds.root)
    assert main(["retro", "neighbours", root, "--out", str(tmp / "nb")]) == 0
    # a datastore built with another tokenizer than the base LM's
    other = _build(tmp_path_factory.mktemp("other"), texts(20, 0), word_tokenizer_dir, BowEncoder())
    assert main(["retro", "neighbours", str(other.root), "--out", str(tmp / "nb2")]) == 0
    assert main(["retro", "retrofit", str(other.root), "--base", str(tiny_lm_dir), "--neighbours",
                 str(tmp / "nb2"), "--out", str(tmp / "x"), "--steps", "1"]) == 2
    assert "tokenizer differs" in capsys.readouterr().err
    # neighbours built for another datastore
    assert main(["retro", "train", root, "--neighbours", str(tmp / "nb2"), "--out", str(tmp / "y"),
                 "--steps", "1"]) == 2
    assert "another datastore" in capsys.readouterr().err
    # a checkpoint from another config
    tiny = ["--d-model", "32", "--layers", "2", "--heads", "2", "--d-ff", "64", "--cca-layers", "2",
            "--enc-layers", "1", "--batch-size", "2", "--warmup", "1"]
    assert main(["retro", "train", root, "--neighbours", str(tmp / "nb"), "--out", str(tmp / "r"), "--steps", "2",
                 *tiny]) == 0
    assert main(["retro", "train", root, "--neighbours", str(tmp / "nb"), "--out", str(tmp / "r"), "--steps", "2",
                 "--d-model", "64", *tiny[2:]]) == 2
    assert "another model config" in capsys.readouterr().err
    # a word-mode datastore
    from conftest import build_hash_datastore

    words = build_hash_datastore(tmp_path_factory.mktemp("words"), n_docs=5)
    assert main(["retro", "neighbours", str(words.root), "--out", str(tmp / "z")]) == 2
    assert "--chunk-tokens" in capsys.readouterr().err
