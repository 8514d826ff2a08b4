"""Device-side augmentation: alignment of image/label/weight, exactness, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from unetflow.augment import Augmenter, AugmentSettings, elastic_field

OFF = AugmentSettings(
    elastic=False, flip=False, rot90=False, rotate_degrees=0.0, shift=0.0, gamma=0.0, contrast=0.0, noise=0.0
)
GEOMETRY_ONLY = AugmentSettings(gamma=0.0, contrast=0.0, noise=0.0, shift=4.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n: int, size: int, seed: int = 0, block: int = 8) -> torch.Tensor:
    """Integer label images made of block x block regions with random ids 0..9."""
    coarse = torch.randint(0, 10, (n, 1, -(-size // block), -(-size // block)), generator=_gen(seed))
    return coarse.repeat_interleave(block, -1).repeat_interleave(block, -2)[:, 0, :size, :size]


def _sources(
    aug: Augmenter, n: int, seed: int = 0, block: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, label and weight windows of the edges the augmenter expects, all the same picture."""
    s_in, s_out = aug.in_size + 2 * aug.border, aug.out_size + 2 * aug.border
    label_in = _blobs(n, s_in, seed, block)
    crop = (s_in - s_out) // 2
    label = label_in[:, crop : crop + s_out, crop : crop + s_out]
    return label_in[:, None].float(), label, 2.0 * label + 1.0


def test_elastic_field_passes_through_coarse_gaussian_nodes() -> None:
    field = elastic_field(500, 33, 3, 10.0, _gen(1))
    nodes = field[..., ::16, ::16]  # the 3x3 lattice points of a 33-px tile
    coarse = torch.randn(500, 2, 3, 3, generator=_gen(1)) * 10.0
    assert torch.allclose(nodes, coarse, atol=1e-4)
    assert abs(coarse.std().item() - 10.0) < 0.5
    # bicubic upsampling is smooth: neighbouring pixels move by far less than sigma
    assert field.diff(dim=-1).abs().max() < 10.0 * 0.5


def test_no_augmentation_is_a_centre_crop() -> None:
    aug = Augmenter(OFF, 30, 18, _gen())
    assert aug.border == 0
    image, label, weight = _sources(aug, 2)
    out_image, out_label, out_weight = aug(image, label, weight)
    assert torch.equal(out_image, image)
    assert torch.equal(out_label, label) and torch.equal(out_weight, weight)


def test_flips_and_quarter_turns_are_exact_pixel_permutations() -> None:
    settings = AugmentSettings(**{**OFF.__dict__, "flip": True, "rot90": True})
    aug = Augmenter(settings, 20, 12, _gen(3))
    image, label, weight = _sources(aug, 16)
    out_image, out_label, _ = aug(image, label, weight)
    seen = set()
    for i in range(16):
        candidates = [torch.rot90(label[i], k, (0, 1)) for k in range(4)]
        candidates += [c.flip(-1) for c in candidates]
        match = [k for k, c in enumerate(candidates) if torch.equal(c, out_label[i])]
        assert match, "label is not a dihedral transform of the source"
        seen.add(match[0])
        assert torch.allclose(out_image[i, 0, 4:-4, 4:-4], out_label[i].float(), atol=1e-4)
    assert len(seen) >= 4  # the batch got different transforms


def test_deformation_keeps_labels_integer_and_aligned_with_image() -> None:
    aug = Augmenter(GEOMETRY_ONLY, 60, 36, _gen(5))
    assert aug.border == math.ceil(2 * 59 / 2 * math.sqrt(2) * math.sin(math.radians(15) / 2) + 4 * math.sqrt(2) + 30)
    image, label, weight = _sources(aug, 8, block=16)
    out_image, out_label, out_weight = aug(image, label, weight)
    assert out_image.shape == (8, 1, 60, 60) and out_label.shape == (8, 36, 36) == out_weight.shape
    assert out_label.dtype == torch.int64
    assert set(out_label.unique().tolist()) <= set(label.unique().tolist())
    # the weight of every pixel comes from the same source pixel as its label
    assert torch.equal(out_weight, 2.0 * out_label + 1.0)
    # the image (bilinear) equals the label (nearest) except on region edges; one pixel of
    # misalignment would break about twice as many pixels
    def agreement(label_crop: torch.Tensor) -> float:
        return ((out_image[:, 0, 12:-12, 12:-12] - label_crop.float()).abs() < 0.5).float().mean().item()

    assert agreement(out_label) > 0.9
    assert agreement(out_label.roll(1, -1)) < agreement(out_label) - 0.04
    # and it really deformed: the labels no longer equal the untouched centre crop
    assert not torch.equal(out_label, label[:, aug.border : -aug.border, aug.border : -aug.border])


def test_rigid_transforms_stay_inside_the_read_border() -> None:
    settings = AugmentSettings(**{**GEOMETRY_ONLY.__dict__, "elastic": False})
    aug = Augmenter(settings, 64, 40, _gen(2))
    src_y, src_x = aug._source_coords(64)
    half = (64 + 2 * aug.border - 1) / 2
    assert max(src_y.abs().max().item(), src_x.abs().max().item()) <= half + 1e-4


def test_zoom_scales_objects_within_its_range_and_stays_inside_the_border() -> None:
    """A centred disc of radius 10 comes out with its area scaled by 1/zoom^2, zooms spread over
    [1/1.5, 1.5] and the source coordinates stay inside the window the sampler reads."""
    settings = AugmentSettings(**{**OFF.__dict__, "scale": 0.5, "rotate_degrees": 15.0})
    aug = Augmenter(settings, 64, 64, _gen(4))
    src_y, src_x = aug._source_coords(256)
    half = (64 + 2 * aug.border - 1) / 2
    assert max(src_y.abs().max().item(), src_x.abs().max().item()) <= half + 1e-4
    edge = 64 + 2 * aug.border
    yy, xx = torch.meshgrid(torch.arange(edge) - (edge - 1) / 2, torch.arange(edge) - (edge - 1) / 2, indexing="ij")
    disc = ((yy**2 + xx**2) < 100).long()
    label = disc.expand(256, edge, edge).clone()
    image = label[:, None].float()
    _, out_label, _ = aug(image, label, label.float())
    zoom = (math.pi * 100 / out_label.flatten(1).sum(1).float()).sqrt()  # area ratio -> linear factor
    assert zoom.min() > 1 / 1.5 - 0.06 and zoom.max() < 1.5 + 0.06
    assert zoom.min() < 0.75 and zoom.max() > 1.35 and (zoom - 1).abs().median() > 0.1


def test_same_seed_same_batch_and_samples_differ() -> None:
    settings = AugmentSettings()
    a, b = Augmenter(settings, 28, 20, _gen(7)), Augmenter(settings, 28, 20, _gen(7))
    sources = _sources(a, 4)
    first, second = a(*sources), b(*sources)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    again = a(*sources)
    assert not torch.equal(first[0], again[0])
    assert not torch.equal(first[0][0], first[0][1]) or not torch.equal(first[1][0], first[1][1])


def test_gray_values_noise_and_contrast() -> None:
    image = torch.randn(64, 1, 32, 32, generator=_gen(0))
    label = torch.zeros(64, 32, 32, dtype=torch.long)
    noisy = Augmenter(AugmentSettings(**{**OFF.__dict__, "noise": 0.1}), 32, 32, _gen(1))
    assert abs((noisy(image, label, label.float())[0] - image).std().item() - 0.1) < 0.005
    contrast = Augmenter(AugmentSettings(**{**OFF.__dict__, "contrast": 0.3}), 32, 32, _gen(1))
    out = contrast(image, label, label.float())[0]
    assert torch.allclose(out.mean(dim=(1, 2, 3)), image.mean(dim=(1, 2, 3)), atol=1e-5)
    ratio = out.std(dim=(1, 2, 3)) / image.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.7 - 1e-4 and ratio.max() <= 1.3 + 1e-4 and ratio.std() > 0.05
    gamma = Augmenter(AugmentSettings(**{**OFF.__dict__, "gamma": 0.5}), 32, 32, _gen(1))
    out = gamma(image, label, label.float())[0]
    # a monotone map of each sample's range: order and extremes are kept
    flat_in, flat_out = image.flatten(1), out.flatten(1)
    assert torch.equal(flat_in.argsort(dim=1)[:, [0, -1]], flat_out.argsort(dim=1)[:, [0, -1]])
    assert torch.allclose(flat_out.amax(1), flat_in.amax(1), atol=1e-5)


def test_wrong_source_size_is_rejected() -> None:
    aug = Augmenter(AugmentSettings(), 28, 20, _gen())
    image, label, weight = _sources(aug, 1)
    with pytest.raises(ValueError, match="expected source edges"):
        aug(image[..., 1:, 1:], label, weight)


@pytest.mark.parametrize("mid_grey", [0.5, 0.0])
def test_inversion_mirrors_whole_samples_about_mid_grey(mid_grey: float) -> None:
    image = torch.rand(400, 1, 8, 8, generator=_gen(0))
    label = torch.zeros(400, 8, 8, dtype=torch.long)
    settings = AugmentSettings(**{**OFF.__dict__, "invert": 0.3})
    out = Augmenter(settings, 8, 8, _gen(1), mid_grey=mid_grey)(image, label, label.float())[0]
    kept = (out == image).flatten(1).all(1)
    mirrored = torch.isclose(out, 2 * mid_grey - image, atol=1e-6).flatten(1).all(1)
    assert bool((kept ^ mirrored).all())  # every sample is either untouched or mirrored whole
    assert abs(mirrored.float().mean().item() - 0.3) < 0.07
    # invert 0 draws nothing: the rest of the augmentation sees the same random numbers as before
    plain = Augmenter(AugmentSettings(**{**OFF.__dict__, "noise": 0.1}), 8, 8, _gen(1))
    again = Augmenter(AugmentSettings(**{**OFF.__dict__, "noise": 0.1, "invert": 0.0}), 8, 8, _gen(1))
    assert torch.equal(plain(image, label, label.float())[0], again(image, label, label.float())[0])
