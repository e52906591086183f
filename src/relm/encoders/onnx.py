"""ONNX Runtime backends of a sentence-transformers encoder: `onnx` (fp32) and `onnx-int8`.

Only the transformer inside the sentence-transformers model changes: `use_onnx` swaps its torch module
for an `OrtTransformer` that runs the exported graph, so tokenization (truncation side included), the
length-sorted batching with order restored, pooling and normalization stay sentence-transformers' own,
and the embeddings differ from torch only by the runtime's arithmetic (and, for int8, the quantization).

Why not `SentenceTransformer(..., backend="onnx")`: that path needs optimum-onnx, whose only release
pins transformers<4.58 and does not import under transformers 5 (relm's LM code needs 5.x). So the graph
is exported with PyTorch's own exporter (`torch.onnx.export`), fused with ONNX Runtime's transformer
optimizer for BERT-type models (Attention, SkipLayerNorm, BiasGelu) and quantized with
`onnxruntime.quantization.quantize_dynamic` (int8 per-channel weights, activations quantized per batch
at run time): library calls, no hand-written graph.

The files are made once per model fingerprint under `$RELM_CACHE/encoders/` (written beside, then
renamed into place) and reused; each directory holds `model.onnx` and `export.json` (versions, options
and the check of the exported graph against torch on `CHECK_TEXTS`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from ..artifacts import read_json, write_json_atomic
from ..errors import ConfigError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
EXPORT_JSON = "export.json"
OPSET = 17
# dynamic quantization settings (what optimum's `AutoQuantizationConfig.avx512_vnni(is_static=False)`
# picks): signed int8 weights, one scale per output channel. Per-tensor weights lose too much on
# all-MiniLM-L6-v2: mean cosine to torch 0.974 vs 0.994 per channel on 32 corpus passages.
QUANTIZATION = {"method": "dynamic", "weight_type": "QInt8", "per_channel": True, "reduce_range": False}
# ONNX Runtime's transformer optimizer knows these model types' attention patterns
_FUSABLE = {"bert": "bert"}
# the exported fp32 graph must match torch this closely (max |difference| of token embeddings)
EXPORT_ATOL = 1e-3
CHECK_TEXTS = (
    "a",
    "Retrieval-based language models read passages from a datastore before they predict.",
    "The quick brown fox jumps over the lazy dog. " * 12,
)


def ort_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def require_ort(backend: str) -> None:
    if not ort_available():
        raise ConfigError(f"--encoder-backend {backend} needs ONNX Runtime: pip install 'relm[onnx]' "
                          "(onnxruntime and onnx), or use --encoder-backend torch")


def cache_root() -> Path:
    from ..corpus.tokenizer import cache_dir

    return cache_dir() / "encoders"


def onnx_dir(name: str, fingerprint: str, backend: str) -> Path:
    """Where `backend`'s files of the encoder with `fingerprint` live (one directory per backend)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)[:60] or "encoder"
    return cache_root() / f"{safe}-{fingerprint}" / backend


def ensure_onnx(st_model, name: str, fingerprint: str, backend: str) -> Path:
    """The directory of `backend`'s ONNX files for this model, exported (and quantized) on first use."""
    require_ort(backend)
    out = onnx_dir(name, fingerprint, backend)
    if (out / EXPORT_JSON).exists():
        return out
    if backend == "onnx":
        return _publish(out, lambda tmp: _export_fp32(st_model, tmp))
    if backend == "onnx-int8":
        fp32 = ensure_onnx(st_model, name, fingerprint, "onnx")
        return _publish(out, lambda tmp: _quantize(fp32, tmp))
    raise ConfigError(f"no ONNX files for backend {backend!r}")


def _publish(out: Path, make) -> Path:
    """Run `make(tmp_dir)` then rename tmp_dir to `out` (a concurrent maker may have won: keep theirs)."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        info = make(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed (or interrupted) export leaves nothing behind
        raise
    info["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(tmp / EXPORT_JSON, info)
    try:
        os.replace(tmp, out)
    except OSError:  # `out` appeared meanwhile (another process) and is not empty
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / EXPORT_JSON).exists():
            raise
    log.info("%s encoder files ready in %s (%.1f s)", info.get("backend", "converted"), out, info["seconds"])
    return out


def _input_names(st_model) -> list[str]:
    probe = st_model.tokenizer(["a b", "a"], padding=True, return_tensors="pt")
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in probe]


class _LastHidden(torch.nn.Module):
    """The HF model as a function of its tensor inputs, returning last_hidden_state (what is exported)."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def _export_fp32(st_model, tmp: Path) -> dict[str, Any]:
    import onnxruntime

    transformer = st_model[0]
    model = transformer.auto_model
    names = _input_names(st_model)
    # eager attention exports as plain MatMul/Softmax, which the optimizer fuses into its Attention op;
    # the SDPA path exports fine too but stays unfused
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        # two texts of different lengths: the example batch is padded, so the mask path is traced
        example = st_model.tokenizer(["an example passage of several words", "short"], padding=True,
                                     return_tensors="pt")
        args = tuple(example[k] for k in names)
        raw = tmp / "raw.onnx"
        axes = {k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            # in eval mode: the exporter restores the wrapper's mode afterwards, recursively (a wrapper left
            # in training mode turns the encoder's dropout on)
            torch.onnx.export(_LastHidden(model, names).eval(), args, str(raw), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
    finally:
        model.set_attn_implementation(previous)
    fused = _fuse(raw, tmp / ONNX_FILE, model.config)
    if fused is None:
        raw.replace(tmp / ONNX_FILE)
    else:
        raw.unlink()
    session = make_session(tmp / ONNX_FILE, threads=1)
    max_diff = max_diff_to_torch(
        st_model, names, lambda inputs: session.run(None, {k: v.numpy().astype(np.int64) for k, v in inputs.items()})[0])
    if max_diff > EXPORT_ATOL:
        raise ConfigError(f"the ONNX export of this encoder differs from torch by {max_diff:.2g} (> {EXPORT_ATOL}); "
                          "use --encoder-backend torch")
    return {"backend": "onnx", "exporter": f"torch.onnx.export (TorchScript) torch {torch.__version__}",
            "opset": OPSET, "onnxruntime": onnxruntime.__version__, "inputs": names, "fused": fused,
            "max_abs_diff_vs_torch": max_diff}


def _fuse(raw: Path, out: Path, config) -> dict[str, int] | None:
    """ONNX Runtime's transformer fusions for a known model type (None: left to the session's own)."""
    kind = _FUSABLE.get(getattr(config, "model_type", None))
    if kind is None:
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(raw), model_type=kind, num_heads=int(config.num_attention_heads),
                         hidden_size=int(config.hidden_size), opt_level=1)
    opt.save_model_to_file(str(out))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _quantize(fp32_dir: Path, tmp: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # fused ops (com.microsoft domain) have no shape inference: their outputs are float tensors
    quantize_dynamic(str(fp32_dir / ONNX_FILE), str(tmp / ONNX_FILE),
                     weight_type=getattr(QuantType, QUANTIZATION["weight_type"]),
                     per_channel=QUANTIZATION["per_channel"], reduce_range=QUANTIZATION["reduce_range"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    src = read_json(fp32_dir / EXPORT_JSON)
    return {"backend": "onnx-int8", "from": src, "quantization": QUANTIZATION,
            "onnxruntime": onnxruntime.__version__}


def max_diff_to_torch(st_model, names: list[str], run) -> float:
    """The largest |difference| of `run`'s hidden states to the torch model's on `CHECK_TEXTS`.

    `run` takes the tokenized features (input name -> int64 tensor) and returns `last_hidden_state` as
    an array: the exported graph of whichever runtime, checked once before it is published.
    """
    features = st_model.tokenizer(list(CHECK_TEXTS), padding=True, truncation=True, return_tensors="pt")
    inputs = {k: features[k] for k in names}
    with torch.inference_mode():
        ref = st_model[0].auto_model(**inputs).last_hidden_state.float().numpy()
    got = np.asarray(run(inputs))
    mask = features["attention_mask"].numpy().astype(bool)  # padded positions are pooled away: not compared
    return float(np.abs(got - ref)[mask].max())


def make_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # memory patterns are planned per input shape, and every batch has another sequence length: off, the
    # int8 encoder of 160 corpus passages peaks at 1,424 MB instead of 1,698 at the same CPU time (the arena
    # stays on: without it the peak is 1,254 MB but encoding costs 30% more CPU)
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def use_onnx(st_model, directory: Path, threads: int) -> dict[str, Any]:
    """Swap the torch transformer inside `st_model` for the ONNX graph in `directory`. Returns export.json."""
    info = read_json(directory / EXPORT_JSON)
    transformer = st_model[0]
    names = info.get("inputs") or (info.get("from") or {}).get("inputs")
    transformer.model = OrtTransformer(make_session(directory / ONNX_FILE, threads), names,
                                       transformer.auto_model.config)
    return info


class OrtTransformer(torch.nn.Module):
    """Stands where sentence-transformers calls the HF model: tensors in, `last_hidden_state` out."""

    def __init__(self, session, names: list[str], config):
        super().__init__()
        self.session = session
        self.names = list(names)
        self.config = config  # sentence-transformers reads the HF config off the model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_ignored):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["token_type_ids"] is None and "token_type_ids" in self.names:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feed = {k: given[k].cpu().numpy().astype(np.int64, copy=False) for k in self.names}
        (hidden,) = self.session.run(["last_hidden_state"], feed)  # (B, T, H) float32
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))
