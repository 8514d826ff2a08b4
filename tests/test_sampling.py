"""Which training image a tile comes from (``train.sampling``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetflow.sampling import TileSampler


def _images() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A small image of value 1 and one 16x larger of value 2, so a tile tells where it came from."""
    small, large = (32, 32), (128, 128)
    return [
        (np.full((1, *shape), value, np.float32), np.zeros(shape, np.uint8), np.ones(shape, np.float32))
        for shape, value in ((small, 1.0), (large, 2.0))
    ]


def _share_of_small(sampling: str, draws: int = 2000) -> float:
    generator = torch.Generator().manual_seed(0)
    sampler = TileSampler(_images(), out_size=8, margin=2, border=0, generator=generator, sampling=sampling)
    images = sampler.sample(draws)[0]
    return float((images[:, 0, 0, 0] == 1.0).float().mean())


def test_image_sampling_draws_every_image_equally_often() -> None:
    assert _share_of_small("image") == pytest.approx(0.5, abs=0.04)


def test_area_sampling_draws_images_in_proportion_to_their_area() -> None:
    assert _share_of_small("area") == pytest.approx(1 / 17, abs=0.02)


def test_unknown_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        TileSampler(_images(), out_size=8, margin=2, border=0, generator=torch.Generator(), sampling="pixels")
