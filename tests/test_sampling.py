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
    images, _, _ = sampler.sample(draws)
    return float((images[:, 0, 0, 0] == 1.0).float().mean())


def test_image_sampling_draws_every_image_equally_often() -> None:
    assert _share_of_small("image") == pytest.approx(0.5, abs=0.04)


def test_area_sampling_draws_images_in_proportion_to_their_area() -> None:
    assert _share_of_small("area") == pytest.approx(1 / 17, abs=0.02)


def test_unknown_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        TileSampler(_images(), out_size=8, margin=2, border=0, generator=torch.Generator(), sampling="pixels")


def test_at_zoom_resamples_in_memory_arrays_at_once_and_lazy_ones_as_read() -> None:
    """train.rescale: the same pixels whether a split was preloaded or stays lazy (zarr)."""
    import zarr

    from unetflow.sampling import at_zoom

    rng = np.random.default_rng(0)
    arrays = (rng.normal(size=(1, 30, 40)).astype(np.float32), rng.integers(0, 3, (30, 40)).astype(np.uint8), rng.random((30, 40)).astype(np.float32))
    loaded = at_zoom(arrays, 1.5)
    assert all(isinstance(a, np.ndarray) for a in loaded) and loaded[0].shape == (1, 45, 60) and loaded[1].shape == (45, 60)
    lazy = at_zoom(tuple(zarr.array(a) for a in arrays), 1.5)
    for eager, view in zip(loaded, lazy):
        np.testing.assert_array_equal(eager[..., 5:20, 7:33], view[..., 5:20, 7:33])
    assert set(np.unique(loaded[1])) <= {0, 1, 2}  # classes stay classes
    assert at_zoom(arrays, 1.0) is arrays
