"""Choosing the torch device and dtype: one rule for encoders, LMs and RETRO training.

`device`: None or "auto" means CUDA when it is available, else the CPU; anything else ("cpu",
"cuda", "cuda:1", "mps") is taken as given after a check that torch knows it. `dtype`: "auto" means
bfloat16 on a GPU that has it, float16 on other GPUs, float32 on the CPU. (The GPU branches are not
exercised on a CPU-only machine; the tests check the CPU choices and the rules.)
"""

from __future__ import annotations

from .errors import ConfigError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str | None) -> str:
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, auto): {e}") from e
    return device


def resolve_dtype(device: str, dtype: str):
    """The torch dtype for `dtype` on `device` ("auto": bf16/fp16 on a GPU, fp32 on the CPU)."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose from {list(DTYPES)}")
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    return getattr(torch, dtype)
