"""The U-Net of Ronneberger et al. (2015), its size arithmetic, and saving/loading.

With ``padding="valid"`` (the paper, and the default) every 3x3 convolution drops one pixel per
side, so the output is smaller than the input by a fixed context margin and only some input
sizes are admissible (each 2x2 max-pool needs an even edge). Overlap-tile inference and the
training sampler both rely on this arithmetic, so it lives here beside the network
(``margin``, ``input_size``, ``output_size``, ``valid_output_size``) instead of being re-derived.

A checkpoint (``*.pt``) is a dict holding at least ``config`` (the constructor kwargs) and
``model`` (the state dict); training adds optimizer, step and RNG states. Everything in it is a
tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetflow.store import atomic_output

BEST = "best.pt"
LAST = "last.pt"
MODEL_JSON = "model.json"
PADDINGS = ("valid", "same")


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by a ReLU (one resolution level of the paper)."""

    def __init__(self, in_channels: int, out_channels: int, pad: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=pad),
            nn.ReLU(inplace=True),
        )


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the skip connection to the up-sampled map (the paper's "cropping" of copied features)."""
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


class UNet(nn.Module):
    """U-Net: contracting path of ``depth`` levels, expanding path with cropped skips, 1x1 head.

    ``depth`` counts resolution levels (the paper has 5: four poolings); level ``i`` has
    ``base_channels * 2**i`` feature maps. Dropout sits at the end of the contracting path, as in
    the paper. Weights use He-normal initialisation, which the paper recommends for ReLU nets
    without normalisation layers.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 5,
        base_channels: int = 64,
        padding: str = "valid",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if depth < 1 or base_channels < 1 or in_channels < 1 or n_classes < 2:
            raise ValueError("need depth >= 1, base_channels >= 1, in_channels >= 1, n_classes >= 2")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "n_classes": int(n_classes),
            "depth": int(depth),
            "base_channels": int(base_channels),
            "padding": padding,
            "dropout": float(dropout),
        }
        self.depth = depth
        self.padding = padding
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(_DoubleConv(previous, width, pad))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            self.up_conv.append(_DoubleConv(width * 2, width, pad))
        self.head = nn.Conv2d(widths[0], n_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, n_classes, out, out) for input (N, in_channels, in, in)."""
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for up, conv in zip(self.up, self.up_conv):
            x = up(x)
            skip = _center_crop(skips.pop(), x.shape[-2], x.shape[-1])
            x = conv(torch.cat([skip, x], dim=1))
        return self.head(x)

    # -- size arithmetic -------------------------------------------------------------------------
    @property
    def _shrink(self) -> int:
        """Pixels one double convolution removes from an edge (4 valid, 0 same)."""
        return 4 if self.padding == "valid" else 0

    def output_size(self, input_size: int) -> int:
        """Output edge for an input edge; ValueError when a pooling would see an odd edge."""
        size = int(input_size)
        for level in range(self.depth):
            if level:
                if size % 2:
                    raise ValueError(
                        f"input edge {input_size} is not valid for depth {self.depth}: a 2x2 pooling "
                        f"would see an odd edge ({size}); use input_size(valid_output_size(n))"
                    )
                size //= 2
            size -= self._shrink
            if size < 1:
                raise ValueError(f"input edge {input_size} is too small for depth {self.depth}")
        for _ in range(self.depth - 1):
            size = 2 * size - self._shrink
            if size < 1:
                raise ValueError(f"input edge {input_size} is too small for depth {self.depth}")
        return size

    def _inverse(self, output_size: int) -> int | None:
        """Input edge giving exactly ``output_size``, or None when none does."""
        size = int(output_size)
        if size < 1:
            return None
        for _ in range(self.depth - 1):
            size += self._shrink
            if size % 2:
                return None
            size //= 2
        for level in reversed(range(self.depth)):
            size += self._shrink
            if level:
                size *= 2
        try:  # the inverse can pass through maps of edge <= 0 for tiny outputs
            return size if self.output_size(size) == output_size else None
        except ValueError:
            return None

    def input_size(self, output_size: int) -> int:
        """Input edge that yields exactly ``output_size``; ValueError if no input does."""
        size = self._inverse(output_size)
        if size is None:
            raise ValueError(
                f"output edge {output_size} is not reachable at depth {self.depth} with {self.padding} "
                f"padding; the nearest valid one above is {self.valid_output_size(output_size)}"
            )
        return size

    def valid_output_size(self, n: int) -> int:
        """Smallest output edge >= ``n`` that some input produces (valid edges repeat every 2**(depth-1))."""
        candidate = max(int(n), 1)
        while self._inverse(candidate) is None:
            candidate += 1
        return candidate

    @property
    def margin(self) -> int:
        """Context pixels each side of the output: (input - output) / 2; 92 for the paper's net."""
        out = self.valid_output_size(1)
        return (self.input_size(out) - out) // 2


# -- saving and loading --------------------------------------------------------------------------
def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling then rename, so a kill never leaves a torn file."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | Path, model: UNet, **extra: Any) -> Path:
    """Write ``{"config", "model", **extra}`` atomically; ``extra`` holds optimizer/step/RNG for training."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    _atomic_torch_save({"config": dict(model.config), "model": state, **extra}, path)
    return path


def write_model_json(directory: str | Path, model: UNet, **extra: Any) -> Path:
    """Write ``model.json``: ``{"model": kwargs, "in_channels": C, **extra}`` (normalization, train, ...)."""
    path = Path(directory) / MODEL_JSON
    payload = {"model": dict(model.config), "in_channels": model.config["in_channels"], **extra}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file; a model directory resolves to its ``best.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file (expected a .pt file or a model directory with {BEST})")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{path}: not a unetflow checkpoint (expected keys 'config' and 'model')")
    return checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> UNet:
    """Rebuild a trained UNet in eval mode from a model directory (its ``best.pt``) or a ``.pt`` file."""
    return model_from_checkpoint(load_checkpoint(path, device), device)


def model_from_checkpoint(checkpoint: dict[str, Any], device: str | torch.device = "cpu") -> UNet:
    """The UNet (eval mode) of a checkpoint dict already read by ``load_checkpoint``."""
    model = UNet(**checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
