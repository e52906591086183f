"""One device/dtype rule for encoders, LMs and RETRO training (GPU branches checked by rule only)."""

from __future__ import annotations

import pytest
import torch

from relm import ConfigError
from relm.devices import resolve_device, resolve_dtype


def test_none_and_auto_mean_the_same_thing():
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None) == resolve_device("auto") == expect
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # taken as given


def test_dtypes():
    assert resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ConfigError, match="--dtype"):
        resolve_dtype("cpu", "fp8")


def test_a_bad_device_is_one_clear_error():
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")


def test_every_component_uses_the_rule():
    from relm.encoders.sentence_transformers import pick_device as encoder_device
    from relm.lm.hf import pick_device_dtype
    from relm.retro.train import pick_device as retro_device

    assert encoder_device(None) == retro_device("auto") == pick_device_dtype("auto", "auto")[0]
