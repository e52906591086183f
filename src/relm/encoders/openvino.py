"""OpenVINO backends of a sentence-transformers encoder: `openvino` (fp32), `openvino-bf16`, `openvino-int8`.

As with the ONNX backends (`onnx.py`), only the transformer inside the sentence-transformers model
changes: `use_openvino` puts an `OvTransformer` where the torch module was, so tokenization, batching,
pooling and normalization stay sentence-transformers' own.

Why not `SentenceTransformer(..., backend="openvino")`: that path needs optimum-intel, which moves
torch and transformers off the versions relm runs. OpenVINO's own converter reads the PyTorch module
directly (`openvino.convert_model`, no ONNX step); the IR (`model.xml` + `model.bin`, fp32 weights) is
saved once per model fingerprint under `$RELM_CACHE/encoders/<model>-<fingerprint>/openvino/`, checked
against torch like the ONNX export, and reused. Both backends compile the same IR; they differ in the
inference precision OpenVINO computes in (`INFERENCE_PRECISION_HINT`): f32, or bf16, which runs on the
CPU's AMX or AVX512-BF16 units and is refused on a CPU without them (OpenVINO would silently compute
in f32). bf16 keeps fp32's exponent range with an 8-bit mantissa; measured on MiniLM it stays within
the encoder-backend tolerance (docs/results.md).

`openvino-int8` is that IR statically quantized by NNCF (`nncf.quantize`, the transformer preset:
int8 weights per channel, int8 activations with ranges calibrated once): int8 matrix products on
VNNI / AMX-int8 units (and on any x86 CPU without them, slower). The activation ranges come from a
calibration set relm ships (`calibration.jsonl`: prose and technical text, made by
scripts/make_calibration_texts.py), so the quantized IR is a function of the model, the calibration
set and the quantization settings alone (`int8_key`): one directory per key in the cache, the same IR
for a build and for its queries on another machine. It is checked against torch by the embeddings'
cosine (`INT8_MIN_COSINE`), not by the fp32 conversion's absolute tolerance.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from ..artifacts import read_json
from ..errors import ConfigError
from .onnx import CHECK_TEXTS, EXPORT_ATOL, EXPORT_JSON, _input_names, _publish, max_diff_to_torch, onnx_dir

log = logging.getLogger(__name__)

IR_FILE = "model.xml"
# the int8 IR computes its unquantized ops in f32
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
CALIBRATION_FILE = Path(__file__).with_name("calibration.jsonl")
CALIBRATION_BATCH = 16
# nncf.quantize's settings (recorded in the manifest's quantization): the transformer model type keeps
# softmax, layer norms and GELU in floating point and quantizes the matrix products' inputs
INT8_SETTINGS = {"method": "static", "tool": "nncf.quantize", "model_type": "transformer", "preset": "mixed",
                 "weights": "int8 symmetric per channel",
                 "activations": "int8 asymmetric per tensor, ranges from the calibration set"}
# the mean cosine of the int8 encoder's embeddings to torch's on the calibration texts, at least
INT8_MIN_COSINE = 0.99


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def require_openvino(backend: str) -> None:
    if not openvino_available():
        raise ConfigError(f"--encoder-backend {backend} needs OpenVINO: pip install 'relm[openvino]', "
                          "or use --encoder-backend torch")
    if PRECISIONS[backend] == "bf16" and "BF16" not in cpu_capabilities():
        raise ConfigError(f"--encoder-backend {backend}: this CPU has no bf16 units (AMX or AVX512-BF16; "
                          f"OpenVINO reports {', '.join(cpu_capabilities())}); use --encoder-backend openvino")


def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def ensure_ir(st_model, name: str, fingerprint: str, backend: str = "openvino") -> Path:
    """The directory of `backend`'s OpenVINO IR, made on first use: the fp32 conversion (which
    `openvino` and `openvino-bf16` both compile), or its int8 quantization."""
    if backend == "openvino-int8":
        out = onnx_dir(name, fingerprint, f"openvino-int8-{int8_key()}")
        if not (out / EXPORT_JSON).exists():
            fp32 = ensure_ir(st_model, name, fingerprint)
            _publish(out, lambda tmp: _quantize(st_model, fp32, tmp))
        return out
    out = onnx_dir(name, fingerprint, "openvino")
    if (out / EXPORT_JSON).exists():
        return out
    return _publish(out, lambda tmp: _convert(st_model, tmp))


def _convert(st_model, tmp: Path) -> dict[str, Any]:
    import openvino as ov

    model = st_model[0].auto_model
    names = _input_names(st_model)
    example = st_model.tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about data-dependent Python branches
        ir = ov.convert_model(model.eval(), example_input={k: example[k] for k in names})
    ov.save_model(ir, str(tmp / IR_FILE), compress_to_fp16=False)
    checker = OvTransformer(compile_ir(tmp / IR_FILE, "f32", threads=1), names, None)
    max_diff = max_diff_to_torch(st_model, names, checker.hidden)
    if max_diff > EXPORT_ATOL:
        raise ConfigError(f"the OpenVINO conversion of this encoder differs from torch by {max_diff:.2g} "
                          f"(> {EXPORT_ATOL}); use --encoder-backend torch")
    return {"backend": "openvino", "converter": f"openvino.convert_model {ov.__version__}", "inputs": names,
            "outputs": [o.get_any_name() for o in ir.outputs], "max_abs_diff_vs_torch": max_diff}


def calibration_texts() -> list[str]:
    """relm's int8 calibration passages (the file's first line describes them and their licenses)."""
    import json

    with CALIBRATION_FILE.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in list(f)[1:]]


def int8_key() -> str:
    """What the int8 IR is a function of, besides the model: the calibration set, the settings, NNCF."""
    import hashlib
    from importlib.metadata import version

    require_nncf()
    h = hashlib.sha256(CALIBRATION_FILE.read_bytes())
    h.update(repr((sorted(INT8_SETTINGS.items()), CALIBRATION_BATCH, version("nncf"))).encode())
    return h.hexdigest()[:12]


def require_nncf() -> None:
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise ConfigError("--encoder-backend openvino-int8 quantizes the encoder with NNCF once: "
                          "pip install 'relm[openvino]', or use --encoder-backend openvino-bf16 / torch")


def _quantize(st_model, fp32_dir: Path, tmp: Path) -> dict[str, Any]:
    """Quantize the fp32 IR in `fp32_dir` to int8 with NNCF, calibrated on `calibration_texts()`."""
    require_nncf()
    import nncf
    import openvino as ov

    info = read_json(fp32_dir / EXPORT_JSON)
    names = info["inputs"]
    texts = calibration_texts()
    # tokenized once: the calibration data, then the check (which also pools with the attention mask)
    batches = [_features(st_model, texts[i:i + CALIBRATION_BATCH], [*names, "attention_mask"])
               for i in range(0, len(texts), CALIBRATION_BATCH)]
    fp32 = ov.Core().read_model(str(fp32_dir / IR_FILE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = nncf.quantize(fp32, nncf.Dataset(batches, lambda f: {k: f[k].numpy() for k in names}),
                             model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(batches))
    ov.save_model(int8, str(tmp / IR_FILE), compress_to_fp16=False)
    checker = OvTransformer(compile_ir(tmp / IR_FILE, "f32", threads=1), names, None)
    cosine = _cosine_to_torch(st_model, names, checker, batches)
    if cosine < INT8_MIN_COSINE:
        raise ConfigError(f"the int8 quantization of this encoder is too far from torch (mean cosine {cosine:.4f} "
                          f"< {INT8_MIN_COSINE} on the calibration texts); use --encoder-backend openvino-bf16 "
                          "or torch")
    return {"backend": "openvino-int8", "from": info, "quantization": {**INT8_SETTINGS, "key": int8_key()},
            "nncf": nncf.__version__, "calibration_passages": len(texts), "inputs": names,
            "mean_cosine_vs_torch_on_calibration": cosine}


def _features(st_model, texts: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """The encoder's inputs for `texts`, tokenized as sentence-transformers does (int64 tensors)."""
    f = st_model.tokenizer(texts, padding=True, truncation=True, max_length=st_model.max_seq_length,
                           return_tensors="pt")
    return {k: f[k].long() for k in names}


def _cosine_to_torch(st_model, names: list[str], runner: OvTransformer, batches: list[dict]) -> float:
    """Mean cosine of mean-pooled hidden states, `runner`'s to the torch model's, over tokenized `batches`."""
    cosines = []
    for f in batches:
        with torch.inference_mode():
            ref = st_model[0].auto_model(**{k: f[k] for k in names}).last_hidden_state.float().numpy()
        got = runner.hidden(f)
        mask = f["attention_mask"].numpy()[..., None].astype(np.float32)
        a, b = (got * mask).sum(1) / mask.sum(1), (ref * mask).sum(1) / mask.sum(1)
        cosines.append(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    return float(np.concatenate(cosines).mean())


def compile_ir(path: Path, precision: str, threads: int):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                      "INFERENCE_NUM_THREADS": int(threads),
                                                      "PERFORMANCE_HINT": "LATENCY"})


def use_openvino(st_model, directory: Path, backend: str, threads: int) -> dict[str, Any]:
    """Swap the torch transformer inside `st_model` for the compiled IR in `directory`; returns what was
    compiled (the conversion's record, and the precision OpenVINO reports it computes in)."""
    info = read_json(directory / EXPORT_JSON)
    compiled = compile_ir(directory / IR_FILE, PRECISIONS[backend], threads)
    transformer = st_model[0]
    transformer.model = OvTransformer(compiled, info["inputs"], transformer.auto_model.config)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: "f32", "bf16"
    return {**info, "backend": backend, "precision": precision.get_type_name()}


class OvTransformer(torch.nn.Module):
    """Stands where sentence-transformers calls the HF model: tensors in, `last_hidden_state` out."""

    def __init__(self, compiled, names: list[str], config):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()  # one encode at a time (the encoder's lock)
        self.names = list(names)
        self.config = config  # sentence-transformers reads the HF config off the model
        outputs = compiled.outputs
        self.output = next((o for o in outputs if "last_hidden_state" in o.get_names()), outputs[0])

    def hidden(self, given: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {k: given[k].cpu().numpy().astype(np.int64, copy=False) for k in self.names}
        out = self.request.infer(feed)
        return np.array(out[self.output], dtype=np.float32)  # (B, T, H)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_ignored):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["token_type_ids"] is None and "token_type_ids" in self.names:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        return BaseModelOutput(last_hidden_state=torch.from_numpy(self.hidden(given)))
