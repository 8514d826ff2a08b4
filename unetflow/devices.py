"""Choice of torch device shared by training and prediction."""

from __future__ import annotations

import torch

from unetflow.config import ConfigError


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
