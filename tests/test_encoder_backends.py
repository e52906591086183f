"""Encoder backends (issue 17): torch vs ONNX Runtime fp32 / int8, exported once into relm's cache, the
backend in the manifest's encoder identity, queries on the building backend, refusal of a backend whose
embeddings differ."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from relm import ConfigError, EncoderConfig
from relm.encoders import load_encoder

from conftest import write_tiny_bert

pytest.importorskip("onnxruntime")

TEXTS = ["retrieval from a datastore", "a second, longer text with more tokens in it than the first", "x",
         "What is the capital of France? Paris is the capital and largest city of France."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A seeded 2-layer BERT (mean pooling) beside the MiniLM tokenizer: exports in about a second."""
    return write_tiny_bert(tmp_path_factory.mktemp("enc") / "tiny-bert")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_backend_is_checked():
    with pytest.raises(ConfigError, match="--encoder-backend must be one of torch, onnx, onnx-int8, openvino"):
        EncoderConfig(backend="tensorrt")
    # a config saved before backends existed was run by torch
    assert EncoderConfig.from_dict({"model": "m"}).backend == "torch"


def test_onnx_backends_match_torch_and_export_once(tiny_bert, cache, monkeypatch):
    from relm.encoders import onnx

    torch_enc = load_encoder(EncoderConfig(model=str(tiny_bert)))
    ref = torch_enc.encode(TEXTS)
    fp32 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx"))
    int8 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx-int8"))
    np.testing.assert_allclose(fp32.encode(TEXTS), ref, atol=1e-4)
    assert np.min(np.sum(int8.encode(TEXTS) * ref, axis=1)) > 0.95
    # the input order survives the length-sorted batches
    np.testing.assert_allclose(fp32.encode(TEXTS[::-1], batch_size=2)[::-1], fp32.encode(TEXTS), atol=1e-5)

    dirs = sorted(p.name for p in (cache / "encoders").iterdir())
    assert len(dirs) == 1 and dirs[0].endswith(torch_enc.fingerprint())
    export = json.loads((cache / "encoders" / dirs[0] / "onnx" / "export.json").read_text())
    assert export["max_abs_diff_vs_torch"] < onnx.EXPORT_ATOL and export["fused"]["Attention"] == 2
    assert (cache / "encoders" / dirs[0] / "onnx-int8" / "model.onnx").stat().st_size < \
        (cache / "encoders" / dirs[0] / "onnx" / "model.onnx").stat().st_size / 2

    # a second load reuses the files: exporting or quantizing again would fail here
    def no_export(*a, **k):
        raise AssertionError("exported again")
    monkeypatch.setattr(onnx, "_export_fp32", no_export)
    monkeypatch.setattr(onnx, "_quantize", no_export)
    again = load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx-int8"))
    np.testing.assert_array_equal(again.encode(TEXTS), int8.encode(TEXTS))

    ids = {b: e.identity() for b, e in (("torch", torch_enc), ("onnx", fp32), ("onnx-int8", int8))}
    assert {b: i["backend"] for b, i in ids.items()} == {"torch": "torch", "onnx": "onnx", "onnx-int8": "onnx-int8"}
    assert len({i["fingerprint"] for i in ids.values()}) == 1  # one source model
    assert ids["onnx-int8"]["quantization"]["weight_type"] == "QInt8" and ids["onnx"]["quantization"] is None
    assert ids["onnx"]["runtime"].startswith("onnxruntime")


def test_openvino_backends_match_torch_and_convert_once(tiny_bert, cache, monkeypatch):
    pytest.importorskip("openvino")
    from relm.encoders import openvino

    torch_enc = load_encoder(EncoderConfig(model=str(tiny_bert)))
    ref = torch_enc.encode(TEXTS)
    fp32 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino"))
    np.testing.assert_allclose(fp32.encode(TEXTS), ref, atol=1e-4)
    np.testing.assert_allclose(fp32.encode(TEXTS[::-1], batch_size=2)[::-1], fp32.encode(TEXTS), atol=1e-5)
    (ir,) = (cache / "encoders").glob("*/openvino")
    export = json.loads((ir / "export.json").read_text())
    assert export["max_abs_diff_vs_torch"] < openvino.EXPORT_ATOL and (ir / "model.bin").exists()
    ident = fp32.identity()
    assert ident["backend"] == "openvino" and ident["runtime"].startswith("openvino")
    assert ident["fingerprint"] == torch_enc.fingerprint() and fp32.export["precision"] == "f32"

    def no_convert(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(openvino, "_convert", no_convert)  # both backends compile the one cached IR
    if "BF16" not in openvino.cpu_capabilities():
        with pytest.raises(ConfigError, match="no bf16 units"):
            load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino-bf16"))
        return
    bf16 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino-bf16"))
    got = bf16.encode(TEXTS)
    assert bf16.export["precision"] == "bf16" and bf16.identity()["quantization"]["precision"] == "bf16"
    assert np.min(np.sum(got * ref, axis=1)) > 0.99 and not np.array_equal(got, ref)  # bf16 arithmetic


def test_openvino_int8_is_quantized_once_from_the_shipped_calibration_set(tiny_bert, cache, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from relm.encoders import openvino

    assert len(openvino.calibration_texts()) >= 64  # the packaged file, read without the shared corpus
    ref = load_encoder(EncoderConfig(model=str(tiny_bert))).encode(TEXTS)
    # a quantization too far from torch is refused, and leaves nothing in the cache
    with monkeypatch.context() as m, pytest.raises(ConfigError, match="too far from torch"):
        m.setattr(openvino, "INT8_MIN_COSINE", 1.01)
        load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino-int8"))
    assert [p.name for p in (cache / "encoders").glob("*/*")] == ["openvino"]  # the fp32 IR it started from

    int8 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino-int8"))
    got = int8.encode(TEXTS)
    assert np.min(np.sum(got * ref, axis=1)) > 0.95 and not np.allclose(got, ref, atol=1e-4)  # int8 arithmetic
    (q,) = (cache / "encoders").glob("*/openvino-int8-*")
    export = json.loads((q / "export.json").read_text())
    assert export["mean_cosine_vs_torch_on_calibration"] >= openvino.INT8_MIN_COSINE
    assert export["calibration_passages"] == len(openvino.calibration_texts())
    assert q.name.endswith(openvino.int8_key())
    # the IR holds int8 weights: FakeQuantize (activations) and int8 constants (weights)
    xml = (q / "model.xml").read_text()
    assert "FakeQuantize" in xml and 'element_type="i8"' in xml
    ident = int8.identity()
    assert ident["backend"] == "openvino-int8" and ident["quantization"]["key"] == openvino.int8_key()

    def no_quantize(*a, **k):
        raise AssertionError("quantized again")
    monkeypatch.setattr(openvino, "_quantize", no_quantize)
    monkeypatch.setattr(openvino, "_convert", no_quantize)
    np.testing.assert_array_equal(load_encoder(EncoderConfig(model=str(tiny_bert), backend="openvino-int8"))
                                  .encode(TEXTS), got)


def test_onnx_backend_refuses_a_gpu(tiny_bert, cache):
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx", device="cuda"))


def test_a_bad_export_is_refused_not_cached(tiny_bert, cache, monkeypatch):
    from relm.encoders import onnx

    monkeypatch.setattr(onnx, "EXPORT_ATOL", -1.0)  # no export can pass
    with pytest.raises(ConfigError, match="differs from torch"):
        load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx"))
    assert not list((cache / "encoders").glob("*/onnx/export.json"))


def _build(corpus, out, model, backend):
    from relm.config import BuildConfig
    from relm.datastore import build_datastore

    return build_datastore([corpus], out, BuildConfig(encoder=EncoderConfig(model=str(model), backend=backend)),
                           show_progress=False)


def test_build_records_the_backend_and_queries_use_it(tiny_bert, cache, small_corpus, tmp_path, caplog):
    from relm.datastore import Datastore
    from relm.encoders.compat import PROBE_TEXTS, decode_probe

    ds = _build(small_corpus, tmp_path / "ds", tiny_bert, "onnx-int8")
    recorded = ds.manifest["encoder"]
    assert recorded["backend"] == "onnx-int8" and recorded["quantization"]["per_channel"] is True
    assert decode_probe(recorded["probe"], recorded["dim"]).shape == (len(PROBE_TEXTS), 32)
    ds = Datastore.open(ds.root)
    assert ds.encoder().identity()["backend"] == "onnx-int8"  # the building backend by default
    first = ds.encode_queries(["datastore retrieval"])
    np.testing.assert_allclose(first, load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx-int8"))
                               .encode(["datastore retrieval"]), atol=1e-6)

    # fp32 onnx agrees with the torch-built probe: accepted
    torch_ds = _build(small_corpus, tmp_path / "ds-torch", tiny_bert, "torch")
    with caplog.at_level(logging.INFO, logger="relm.encoders.compat"):
        other = Datastore.open(torch_ds.root, query_backend="onnx")
        assert other.encoder().identity()["backend"] == "onnx"
    assert "probe cosine mean" in caplog.text


def _tamper_probe(ds_root, probe):
    path = ds_root / "manifest.json"
    m = json.loads(path.read_text())
    if probe is None:
        m["encoder"].pop("probe")
    else:
        m["encoder"]["probe"] = probe
    path.write_text(json.dumps(m))


def test_a_backend_whose_embeddings_differ_is_refused_or_allowed_with_a_warning(
        tiny_bert, cache, small_corpus, tmp_path, caplog):
    import base64

    from relm.datastore import Datastore
    from relm.encoders.compat import PROBE_TEXTS

    ds = _build(small_corpus, tmp_path / "ds", tiny_bert, "onnx-int8")
    # what a backend with other embeddings recorded: seeded random unit vectors
    rng = np.random.default_rng(0)
    other = rng.standard_normal((len(PROBE_TEXTS), 32)).astype("<f2")
    _tamper_probe(ds.root, base64.b64encode(other.tobytes()).decode())
    Datastore.open(ds.root).encoder()  # the same backend is never compared
    with pytest.raises(ConfigError, match=r"built with encoder backend onnx-int8, queries would use torch.*"
                                          r"differ.*--allow-backend-mismatch"):
        Datastore.open(ds.root, query_backend="torch").encoder()
    with caplog.at_level(logging.WARNING, logger="relm.encoders.compat"):
        enc = Datastore.open(ds.root, query_backend="torch", allow_backend_mismatch=True).encoder()
    assert enc.identity()["backend"] == "torch" and "allowed by --allow-backend-mismatch" in caplog.text

    _tamper_probe(ds.root, None)  # a manifest from before probes: nothing to compare with
    with pytest.raises(ConfigError, match="records no probe"):
        Datastore.open(ds.root, query_backend="onnx").encoder()


def test_cli_build_and_search_take_the_backend(tiny_bert, cache, small_corpus, tmp_path, capsys):
    from relm.cli import main

    out = tmp_path / "ds"
    assert main(["build", str(small_corpus), "--out", str(out), "--encoder", str(tiny_bert),
                 "--encoder-backend", "onnx", "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["encoder"]["backend"] == "onnx"
    capsys.readouterr()
    assert main(["search", str(out), "datastore", "-k", "2", "--encoder-backend", "torch", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["hits"]) == 2
    assert main(["info", str(out)]) == 0 and "backend onnx)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["build", str(small_corpus), "--out", str(out), "--encoder-backend", "tpu"])


@pytest.mark.slow
def test_minilm_int8_is_within_the_quality_bar(encoder):
    """all-MiniLM-L6-v2: each backend's embeddings vs torch fp32, mean cosine >= 0.99."""
    from relm.encoders.compat import PROBE_TEXTS

    texts = list(PROBE_TEXTS) + TEXTS
    ref = encoder.encode(texts)
    for backend, bar in (("onnx", 0.9999), ("onnx-int8", 0.99), ("openvino", 0.9999), ("openvino-bf16", 0.999),
                         ("openvino-int8", 0.99)):
        got = load_encoder(EncoderConfig(backend=backend)).encode(texts)
        assert np.mean(np.sum(got * ref, axis=1)) >= bar, backend


def test_add_embeds_with_the_recorded_backend(tiny_bert, cache, small_corpus, tmp_path):
    from relm.datastore import Datastore
    from relm.datastore.update import add_documents

    from conftest import corpus_records, write_jsonl

    ds = _build(small_corpus, tmp_path / "ds", tiny_bert, "onnx-int8")
    n = len(ds)
    extra = [dict(r, id=f"new-{i}") for i, r in enumerate(corpus_records(n_docs=2))]
    ds = add_documents(Datastore.open(ds.root), [str(write_jsonl(tmp_path / "new" / "n.jsonl", extra))],
                       show_progress=False)
    assert ds.manifest["encoder"]["backend"] == "onnx-int8" and len(ds) > n
    int8 = load_encoder(EncoderConfig(model=str(tiny_bert), backend="onnx-int8"))
    got = ds.embeddings(np.arange(n, len(ds)))
    want = int8.encode(ds.passage_input_texts(range(n, len(ds))))
    np.testing.assert_allclose(got, want, atol=2e-3)  # float16 storage
