import numpy as np
import pytest
import zarr
from scipy import ndimage
from scipy.spatial import cKDTree

from unetflow.synthetic import (
    CellStyle,
    _blur_weights,
    _finish,
    _grid_seeds,
    _wave_factors,
    _window_extremes,
    make_dataset,
    render_region,
    write_giant_slide,
)


def test_dataset_is_seeded_and_has_touching_cells():
    first = make_dataset(2, 128, seed=3)
    again = make_dataset(2, 128, seed=3)
    other = make_dataset(2, 128, seed=4)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not np.array_equal(first[0][1], other[0][1])
    image, labels = first[0]
    assert image.dtype == np.float32 and labels.dtype == np.int32
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))  # consecutive instance ids
    assert 15 < len(ids) < 80  # ~ (128 / 28)^2 cells of radius 14
    # Membranes: thin background between touching cells, brighter than cell interiors.
    membrane_fraction = np.mean(labels == 0)
    assert 0.1 < membrane_fraction < 0.45
    assert np.median(image[labels == 0]) > np.median(image[labels > 0]) + 0.15


def test_regions_agree_across_chunk_borders():
    """A region rendered alone has the same cells as inside a larger render: no seams."""
    style = CellStyle(noise=0.0)
    big_img, big_lab = render_region(11, 100, 200, 96, 96, style)
    small_img, small_lab = render_region(11, 132, 232, 40, 40, style)
    assert np.array_equal(big_lab[32:72, 32:72], small_lab)
    assert np.allclose(big_img[32:72, 32:72], small_img, atol=1e-6)


def test_illumination_is_uneven():
    image, labels = render_region(5, 0, 0, 1024, 1024, CellStyle(noise=0.0))
    quadrant_means = [image[:512, :512][labels[:512, :512] > 0].mean(), image[512:, 512:][labels[512:, 512:] > 0].mean()]
    row_profile = [image[i : i + 64][labels[i : i + 64] > 0].mean() for i in range(0, 1024, 64)]
    assert np.ptp(row_profile) > 0.02 or abs(quadrant_means[0] - quadrant_means[1]) > 0.02


def test_giant_slide_streams_chunks_into_zarr(tmp_path):
    path = write_giant_slide(tmp_path / "slide.zarr", size=600, chunk=256, seed=2, style=CellStyle(noise=0.0))
    array = zarr.open_array(str(path), mode="r")
    assert array.shape == (1, 600, 600) and array.chunks == (1, 256, 256)
    expected, _ = render_region(2, 256, 256, 256, 256, CellStyle(noise=0.0))
    assert np.allclose(array[0, 256:512, 256:512], expected, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing temporary left behind


def _smooth_field(seed: int, stream: int, ys: np.ndarray, xs: np.ndarray, wavelength: float) -> np.ndarray:
    """The reference of the generator's smooth fields in numpy: the waves summed in order, per pixel."""
    rows, cols = _wave_factors(seed, stream, ys, xs, wavelength)
    total = np.zeros((ys.size, xs.size))
    for k in range(rows.shape[1]):
        total = total + rows[:, k, None] * cols[None, k, :]
    return total / (rows.shape[1] // 2)


@pytest.mark.parametrize("style", [CellStyle(), CellStyle(cell_radius=6.0, membrane_width=1.0, missing_fraction=0.3)])
def test_labels_are_the_exact_voronoi_of_a_kdtree(style):
    """The compiled search of nearby grid cells finds the nearest seed exactly, as a k-d tree over
    all seeds does (the generator's reference implementation before it was compiled)."""
    seed, y0, x0, size = 7, 3000, -500, 200
    halo = int(np.ceil(style.membrane_width)) + 3
    spacing, warp = 2 * style.cell_radius, 0.5 * style.cell_radius
    ys = np.arange(y0 - halo, y0 + size + halo, dtype=np.float64)
    xs = np.arange(x0 - halo, x0 + size + halo, dtype=np.float64)
    wy = ys[:, None] + warp * _smooth_field(seed, 1, ys, xs, 3 * spacing)
    wx = xs[None, :] + warp * _smooth_field(seed, 2, ys, xs, 3 * spacing)
    rows = np.arange(y0 // spacing - 5, (y0 + size) // spacing + 6)
    cols = np.arange(x0 // spacing - 5, (x0 + size) // spacing + 6)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    pos, ids, props = _grid_seeds(seed, spacing, gy.ravel(), gx.ravel(), style.missing_fraction)
    _, nearest = cKDTree(pos).query(np.stack([wy.ravel(), wx.ravel()], axis=-1))
    cell = nearest.reshape(wy.shape)
    window = max(1, int(round(style.membrane_width))) + 1
    membrane = ndimage.maximum_filter(cell, size=window) != ndimage.minimum_filter(cell, size=window)
    expected = np.where(props[cell, 0].astype(bool) & ~membrane, ids[cell], 0)[halo:-halo, halo:-halo]
    _, labels = render_region(seed, y0, x0, size, size, style)
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("window", [2, 3, 4, 5])
def test_window_extremes_equal_scipy_size_filters(window):
    """The separable compiled min/max equals scipy's size filters, edges included (nearest mode)."""
    cell = np.random.default_rng(window).integers(0, 6, size=(37, 41)).astype(np.int32)
    low, high = _window_extremes(cell, window)
    assert np.array_equal(low, ndimage.minimum_filter(cell, size=window, mode="nearest"))
    assert np.array_equal(high, ndimage.maximum_filter(cell, size=window, mode="nearest"))


def test_finish_is_scipy_blur_illumination_and_noise_bit_for_bit():
    """The fused pass gives exactly what the generator computed before it was fused: scipy's
    ``gaussian_filter`` on the whole haloed image, times the illumination field, plus the noise,
    then the crop. Bit-identical, so the same seed still renders the same dataset."""
    rng = np.random.default_rng(0)
    halo, height, width = 5, 30, 44
    ys = np.arange(-halo, height + halo, dtype=np.float64) + 300
    xs = np.arange(-halo, width + halo, dtype=np.float64) - 70
    image = rng.random((ys.size, xs.size))
    noise = rng.normal(0.0, 0.08, size=image.shape)
    illumination = 0.75 + 0.25 * _smooth_field(4, 4, ys, xs, 1120.0)
    expected = (ndimage.gaussian_filter(image, sigma=0.8) * illumination + noise)[halo:-halo, halo:-halo]
    out = _finish(image, halo, height, width, _blur_weights(0.8), _wave_factors(4, 4, ys, xs, 1120.0), noise)
    assert out.dtype == np.float32 and np.array_equal(out, expected.astype(np.float32))
