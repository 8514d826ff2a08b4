"""Choice of torch device and numeric precision, shared by training and prediction."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

from unetflow.config import ConfigError

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """Return the requested device; ``auto`` prefers CUDA, then Apple MPS, then the CPU.

    An explicit request for an unavailable accelerator is an error rather than a silent CPU
    fallback: a user who asked for ``cuda`` on a node without a GPU wants to know.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU (use device: auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available (use device: auto or cpu)")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """How a device runs the network: the autocast dtype (None = plain fp32) and the memory layout.

    Only the network's convolutions change: weights, checkpoints, the loss, softmax, weight maps
    and metrics stay fp32 (callers cast logits with ``.float()``). ``channels_last`` is set
    where it was measured to help (``benchmarks/train.py``, ``benchmarks/predict.py``): on the
    CPU oneDNN's convolutions run NHWC natively, so it speeds up fp32 as well as bf16 there; on
    CUDA and MPS the layout is left as it was (not measured).
    """

    name: str
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of a forward pass (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put ``model``'s weights in this layout (in place; values and dtype unchanged)."""
        return model.to(memory_format=self.memory_format)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 is a speed-up.

    oneDNN also emulates bf16 on older AVX512 CPUs, but slower than fp32 there; hence the
    instruction-set checks rather than only ``torch.ops.mkldnn._is_mkldnn_bf16_supported``.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _supports_bf16(device: torch.device) -> bool:
    if device.type == "cpu":
        return cpu_bf16_supported()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """The precision a ``precision`` setting means on ``device``; logs the decision once per process.

    ``auto``: bf16 autocast on CPUs with native bf16 and on CUDA GPUs that support it, fp16
    autocast (with a gradient scaler in training) on older CUDA GPUs, fp32 elsewhere. An explicit
    ``bf16`` where the device lacks it is an error, not a silent fallback or a slow emulation.
    """
    if setting not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {setting!r}")
    bf16 = _supports_bf16(device)
    if setting == "bf16" and not bf16:
        raise ConfigError(
            f"precision 'bf16' requested but {device.type} has no native bf16 support"
            " (use precision: auto or fp32)"
        )
    if setting == "fp32" or (setting == "auto" and not bf16 and device.type != "cuda"):
        name, dtype = "fp32", None
    elif bf16:
        name, dtype = "bf16", torch.bfloat16
    else:
        name, dtype = "fp16", torch.float16
    precision = Precision(name=name, dtype=dtype, channels_last=device.type == "cpu")
    _log_once(setting, device.type, precision)
    return precision


def explicit_precisions(device: torch.device) -> list[tuple[str, Precision]]:
    """``(setting, precision)`` for each explicit setting ``device`` runs (fp32, and bf16 where
    supported): what the benchmarks compare in one run."""
    found = [("fp32", resolve_precision("fp32", device))]
    if _supports_bf16(device):
        found.append(("bf16", resolve_precision("bf16", device)))
    return found


@functools.lru_cache(maxsize=None)
def _log_once(setting: str, device_type: str, precision: Precision) -> None:
    why = f"native bf16: {_supports_bf16(torch.device(device_type))}" if setting == "auto" else "as configured"
    log.info(
        "precision %s on %s: %s%s (%s)",
        setting, device_type, precision.name, ", channels_last" if precision.channels_last else "", why,
    )
