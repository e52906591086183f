"""`relm scale`: subsampling after retrieval equals really subsampling the datastore; CLI outputs."""

from __future__ import annotations

import json

import pytest

from relm import ConfigError
from relm.eval.evaluate import Evaluator
from relm.eval.scale import run_scaling
from relm.eval.variants import Variant
from relm.eval.windows import WindowConfig
from test_eval import docs

from conftest import HashEncoder, build_hash_datastore, make_text, write_jsonl


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_hash_datastore(tmp_path_factory.mktemp("scaleds"), n_docs=40)


def test_after_retrieval_equals_direct_subsampling(ds, tiny_lm):
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    res = run_scaling(ev, [("s", docs())], Variant("massiveds", k=2), [0.3, 0.6, 1.0], 2, candidates=len(ds),
                      direct=[0.3, 0.6])
    rows = res["rows"]
    for p in (0.3, 0.6):
        for seed in (0, 1):
            a = [r for r in rows if (r["method"], r["fraction"], r["seed"]) == ("after-retrieval", p, seed)][0]
            d = [r for r in rows if (r["method"], r["fraction"], r["seed"]) == ("direct", p, seed)][0]
            assert a["loss"] == pytest.approx(d["loss"], abs=1e-9)
            assert a["datastore_tokens"] == d["datastore_tokens"] > 0
    assert all(a["within_noise"] for a in res["agreement"])
    full = [r for r in rows if r["fraction"] == 1.0]
    assert len({r["loss"] for r in full}) == 1 and full[0]["datastore_passages"] == len(ds)
    small = [r for r in rows if r["fraction"] == 0.3 and r["method"] == "after-retrieval"]
    assert all(r["datastore_tokens"] < full[0]["datastore_tokens"] for r in small)
    assert all(r["flops_per_token"] > res["baseline"]["flops_per_token"] for r in rows)


def test_scaling_checks(ds, tiny_lm):
    ev = Evaluator(ds, tiny_lm, windows=WindowConfig(window=48))
    with pytest.raises(ConfigError, match="outside"):
        run_scaling(ev, [("s", docs())], Variant("m", k=2), [0.0, 1.0], 1, candidates=50)
    with pytest.raises(ConfigError, match="K = 1 < k = 2"):
        run_scaling(ev, [("s", docs())], Variant("m", k=2), [1.0], 1, candidates=1)
    res = run_scaling(ev, [("s", docs(1))], Variant("m", k=2), [0.01, 1.0], 1, candidates=10)
    assert any("0.01" in w for w in res["warnings"])  # 10 candidates cannot leave 6 at p = 0.01


@pytest.fixture
def second_lm_dir(tiny_lm_dir, tmp_path):
    """The tiny Llama's tokenizer with a wider random model: a second LM size for L(N, R)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path / "lm2"
    shutil.copytree(tiny_lm_dir, out)
    torch.manual_seed(1)
    cfg = LlamaConfig.from_pretrained(str(tiny_lm_dir))
    cfg.hidden_size, cfg.intermediate_size = 64, 128
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


def test_cli_scale(ds, tiny_lm_dir, second_lm_dir, tmp_path, monkeypatch, capsys):
    from relm.cli import main
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())
    evalf = write_jsonl(tmp_path / "e.jsonl", [{"id": f"x{i}", "text": make_text(200 + i, 120)} for i in range(3)])
    out = tmp_path / "scale"
    code = main(["scale", str(ds.root), str(evalf), "--lms", f"{tiny_lm_dir},{second_lm_dir}", "--window", "48",
                 "-k", "2", "--fractions", "0.25,0.5,1", "--seeds", "2", "--candidates", "60", "--direct", "0.5",
                 "--n-boot", "20", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "scale.json").read_text())
    assert len(data["rows"]) == 2 * (3 * 2 + 2) and set(data["fits"]) == {str(tiny_lm_dir), str(second_lm_dir)}
    assert data["joint_fit"] is not None and "gamma" in data["joint_fit"]
    assert (out / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "scale.csv").read_text().count("\n") == len(data["rows"]) + 1
    printed = capsys.readouterr().out
    assert "no retrieval" in printed and "L(R)" in printed and "direct vs after-retrieval" in printed
    assert main(["scale", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--fractions", "0.5,2"]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["scale", str(ds.root), str(evalf), "--lm", str(tiny_lm_dir), "--variants", "rerank"]) == 2
