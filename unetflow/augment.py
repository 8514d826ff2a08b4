"""Batched data augmentation as torch ops on the training device.

The paper's key augmentation is a smooth elastic deformation: random displacements on a coarse
3x3 grid (Gaussian, 10 px standard deviation) interpolated bicubically to a per-pixel field. Here
that field, random flips / 90-degree rotations, a small rotation, a zoom and a shift are composed
into ONE sampling grid per sample, so image, label and weight map are resampled exactly once and
stay aligned: the image bilinearly, label and weight with nearest neighbour (so every output
pixel keeps a label and the weight computed for that same source pixel).

The grid is only evaluated on the pixels that are kept (the input tile for the image, the valid
output window for label and weight), while the source windows the sampler reads extend
``Augmenter.border`` pixels further on every side, so deformed tiles pull real image content (or
the store's mirror padding) rather than padding made up at the tile edge. Gray-value changes
(intensity inversion, gamma, contrast, Gaussian noise) follow on the image only.

The zoom (``scale``) draws a factor log-uniformly from [1/(1+scale), 1+scale]: nnU-Net's scaling
(0.7-1.4), for data whose objects come in several sizes (the DSB 2018 nuclei span 10-60 px across
modalities), so that the net sees each kind of object at more than its one acquired size.

Inversion (``invert``, a probability) mirrors intensities about the normalisation's mid-grey
(``1 - x`` after percentile normalisation, ``-x`` after z-scoring). It is for datasets that mix
polarities -- fluorescence (bright objects on dark) with brightfield or histology (dark objects on
bright) -- where the rarer polarity has few training images: the net then learns shapes that do
not depend on which side of the background an object lies. Off by default: for one modality it
only removes a cue.

All random numbers come from one ``torch.Generator`` living on the device, drawn in a fixed order
with fixed shapes, so a run is reproducible and resumable from the generator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """The ``train.augment`` config section (see the schema for meanings and defaults)."""

    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    flip: bool = True
    rot90: bool = True
    rotate_degrees: float = 15.0
    scale: float = 0.0
    shift: float = 0.0
    gamma: float = 0.2
    contrast: float = 0.1
    noise: float = 0.03
    invert: float = 0.0

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> AugmentSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in known})

    @property
    def geometric(self) -> bool:
        """Whether any transform moves pixels (else the tiles are just cropped)."""
        return (
            (self.elastic and self.elastic_sigma > 0)
            or self.flip
            or self.rot90
            or self.rotate_degrees > 0
            or self.scale > 0
            or self.shift > 0
        )


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _centred_coords(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x) of a size x size tile relative to its centre."""
    axis = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    return torch.meshgrid(axis, axis, indexing="ij")


def elastic_field(
    n: int, size: int, grid: int, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Per-pixel displacements (N, 2, size, size) in pixels: N(0, sigma) on a grid x grid lattice
    spanning the tile, upsampled bicubically (the paper's smooth deformation)."""
    coarse = torch.randn(n, 2, grid, grid, generator=generator, device=generator.device) * sigma
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def _sample(source: torch.Tensor, src_y: torch.Tensor, src_x: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample ``source`` (N, C, S, S) at centred pixel coordinates (N, H, W)."""
    half = (source.shape[-1] - 1) / 2
    grid = torch.stack([src_x / half, src_y / half], dim=-1)
    return F.grid_sample(source, grid, mode=mode, padding_mode="reflection", align_corners=True)


def _crop(x: torch.Tensor, size: int) -> torch.Tensor:
    start = (x.shape[-1] - size) // 2
    return x[..., start : start + size, start : start + size]


class Augmenter:
    """Random geometric + gray-value augmentation of (image, label, weight) batches.

    ``in_size`` and ``out_size`` are the network's input tile and valid output edges; the
    sampler must supply images of edge ``in_size + 2 * border`` and labels/weights of edge
    ``out_size + 2 * border``, all centred on the same point.
    """

    def __init__(
        self,
        settings: AugmentSettings,
        in_size: int,
        out_size: int,
        generator: torch.Generator,
        mid_grey: float = 0.5,
    ) -> None:
        if (in_size - out_size) % 2:
            raise ValueError("input and output tile edges must differ by an even number")
        self.settings = settings
        self.mid_grey = mid_grey
        self.in_size = in_size
        self.out_size = out_size
        self.generator = generator
        self.border = self._border()

    def _border(self) -> int:
        """Pixels beyond the tile that the transform can reach; farther samples get mirrored."""
        s = self.settings
        if not s.geometric:
            return 0
        corner = (self.in_size - 1) / 2 * math.sqrt(2)  # flips and 90-degree turns keep the square
        zoom = 1 + s.scale  # the largest factor: a zoom out reads farther than the tile
        rotation = 2 * zoom * corner * math.sin(math.radians(s.rotate_degrees) / 2)
        elastic = 3 * s.elastic_sigma if s.elastic else 0.0
        return math.ceil(corner * (zoom - 1) + rotation + s.shift * math.sqrt(2) + elastic)

    def _source_coords(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source coordinates (N, in, in) relative to the tile centre for every kept input pixel."""
        s, g = self.settings, self.generator
        device = g.device
        angle = torch.zeros(n, device=device)
        flip = torch.ones(n, device=device)
        if s.flip:
            flip = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
        if s.rot90:
            angle = angle + torch.randint(0, 4, (n,), generator=g, device=device) * (math.pi / 2)
        if s.rotate_degrees > 0:
            angle = angle + torch.deg2rad(_uniform(n, -s.rotate_degrees, s.rotate_degrees, g))
        zoom = torch.ones(n, 1, 1, device=device)
        if s.scale > 0:
            reach = math.log1p(s.scale)
            zoom = torch.exp(_uniform(n, -reach, reach, g)).view(n, 1, 1)
        shift = torch.zeros(n, 2, device=device)
        if s.shift > 0:
            shift = (torch.rand(n, 2, generator=g, device=device) * 2 - 1) * s.shift
        y, x = _centred_coords(self.in_size, device)
        cos = torch.cos(angle).view(n, 1, 1)
        sin = torch.sin(angle).view(n, 1, 1)
        src_x = zoom * (cos * x - sin * y) * flip.view(n, 1, 1) + shift[:, 1].view(n, 1, 1)
        src_y = zoom * (sin * x + cos * y) + shift[:, 0].view(n, 1, 1)
        if s.elastic and s.elastic_sigma > 0:
            field = elastic_field(n, self.in_size, s.elastic_grid, s.elastic_sigma, g)
            src_y = src_y + field[:, 0]
            src_x = src_x + field[:, 1]
        return src_y, src_x

    def _gray_values(self, image: torch.Tensor) -> torch.Tensor:
        """Inversion about mid-grey, gamma (on the per-sample min-max range), contrast about the
        mean, additive noise."""
        s, g = self.settings, self.generator
        n = image.shape[0]
        if s.invert > 0:
            flip = (torch.rand(n, generator=g, device=image.device) < s.invert).view(n, 1, 1, 1)
            image = torch.where(flip, 2 * self.mid_grey - image, image)
        if s.gamma > 0:
            gamma = torch.exp(_uniform(n, -s.gamma, s.gamma, g)).view(n, 1, 1, 1)
            low = image.amin(dim=(1, 2, 3), keepdim=True)
            span = (image.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
            image = low + span * ((image - low) / span).clamp(0, 1) ** gamma
        if s.contrast > 0:
            factor = _uniform(n, 1 - s.contrast, 1 + s.contrast, g).view(n, 1, 1, 1)
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            image = mean + factor * (image - mean)
        if s.noise > 0:
            image = image + s.noise * torch.randn(image.shape, generator=g, device=image.device)
        return image

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment a batch: image (N, C, in+2b, in+2b) float, label (N, out+2b, out+2b) integer,
        weight (N, out+2b, out+2b) float -> image (N, C, in, in), label (N, out, out), weight."""
        expect_in, expect_out = self.in_size + 2 * self.border, self.out_size + 2 * self.border
        if image.shape[-1] != expect_in or label.shape[-1] != expect_out or weight.shape[-1] != expect_out:
            raise ValueError(
                f"expected source edges {expect_in} (image) and {expect_out} (label, weight), "
                f"got {image.shape[-1]}, {label.shape[-1]}, {weight.shape[-1]}"
            )
        if self.settings.geometric:
            src_y, src_x = self._source_coords(image.shape[0])
            image = _sample(image.float(), src_y, src_x, "bilinear")
            pair = torch.stack([label.float(), weight.float()], dim=1)
            pair = _sample(pair, _crop(src_y, self.out_size), _crop(src_x, self.out_size), "nearest")
            label, weight = pair[:, 0].round().to(label.dtype), pair[:, 1]
        else:
            image, label, weight = _crop(image, self.in_size), _crop(label, self.out_size), _crop(weight, self.out_size)
        return self._gray_values(image), label, weight
