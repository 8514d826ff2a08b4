"""Precision resolution: what ``auto``, ``fp32`` and ``bf16`` mean on each kind of device."""

from __future__ import annotations

import pytest
import torch

import unetflow.devices as devices
from unetflow.config import ConfigError
from unetflow.devices import resolve_precision

CPU = torch.device("cpu")


def test_auto_on_a_cpu_with_native_bf16_is_bf16_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_bf16_supported", lambda: True)
    precision = resolve_precision("auto", CPU)
    assert (precision.name, precision.dtype, precision.channels_last) == ("bf16", torch.bfloat16, True)
    assert resolve_precision("fp32", CPU).dtype is None


def test_auto_without_native_bf16_is_fp32_and_explicit_bf16_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_bf16_supported", lambda: False)
    precision = resolve_precision("auto", CPU)
    assert (precision.name, precision.dtype, precision.channels_last) == ("fp32", None, True)
    with pytest.raises(ConfigError, match=r"precision 'bf16' requested but cpu has no native bf16"):
        resolve_precision("bf16", CPU)
    with pytest.raises(ConfigError, match=r"precision must be one of"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("bf16,expected", [(True, ("bf16", torch.bfloat16)), (False, ("fp16", torch.float16))])
def test_auto_on_cuda_keeps_amp_in_bf16_where_supported(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: tuple
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    precision = resolve_precision("auto", torch.device("cuda"))
    assert (precision.name, precision.dtype) == expected and not precision.channels_last
    assert resolve_precision("fp32", torch.device("cuda")).dtype is None


def test_mps_runs_fp32() -> None:
    precision = resolve_precision("auto", torch.device("mps"))
    assert (precision.name, precision.dtype, precision.channels_last) == ("fp32", None, False)


def test_precision_changes_layout_and_dtype_of_the_forward_only() -> None:
    net = torch.nn.Conv2d(3, 4, 3)
    precision = devices.Precision("bf16", torch.bfloat16, channels_last=True)
    precision.prepare_model(net)
    assert net.weight.dtype == torch.float32 and net.weight.is_contiguous(memory_format=torch.channels_last)
    with precision.autocast(CPU):
        out = net(precision.prepare_input(torch.randn(2, 3, 8, 8)))
    assert out.dtype == torch.bfloat16
