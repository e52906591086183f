"""OpenVINO backends of a sentence-transformers encoder: `openvino` (fp32) and `openvino-bf16`.

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
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from ..errors import ConfigError
from .onnx import CHECK_TEXTS, EXPORT_ATOL, EXPORT_JSON, _input_names, _publish, onnx_dir

log = logging.getLogger(__name__)

IR_FILE = "model.xml"
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


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


def ensure_ir(st_model, name: str, fingerprint: str) -> Path:
    """The directory of this model's OpenVINO IR, converted on first use (shared by both backends)."""
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
    max_diff = _check_against_torch(st_model, tmp / IR_FILE, names)
    if max_diff > EXPORT_ATOL:
        raise ConfigError(f"the OpenVINO conversion of this encoder differs from torch by {max_diff:.2g} "
                          f"(> {EXPORT_ATOL}); use --encoder-backend torch")
    return {"backend": "openvino", "converter": f"openvino.convert_model {ov.__version__}", "inputs": names,
            "outputs": [o.get_any_name() for o in ir.outputs], "max_abs_diff_vs_torch": max_diff}


def _check_against_torch(st_model, path: Path, names: list[str]) -> float:
    features = st_model.tokenizer(list(CHECK_TEXTS), padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        ref = st_model[0].auto_model(**{k: features[k] for k in names}).last_hidden_state.float().numpy()
    got = OvTransformer(compile_ir(path, "f32", threads=1), names, None).hidden({k: features[k] for k in names})
    mask = features["attention_mask"].numpy().astype(bool)  # padded positions are pooled away: not compared
    return float(np.abs(got - ref)[mask].max())


def compile_ir(path: Path, precision: str, threads: int):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                      "INFERENCE_NUM_THREADS": int(threads),
                                                      "PERFORMANCE_HINT": "LATENCY"})


def use_openvino(st_model, directory: Path, backend: str, threads: int) -> dict[str, Any]:
    """Swap the torch transformer inside `st_model` for the compiled IR in `directory`; returns what was
    compiled (the conversion's record, and the precision OpenVINO reports it computes in)."""
    from ..artifacts import read_json

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
