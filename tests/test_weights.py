"""Tests of the weight map: the truncated per-object method against the naive per-object oracle,
edge cases, chunked == whole, class balance, and the ``unetflow weights`` command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

from unetflow import cli
from unetflow.store import open_store, store_meta, write_dataset
from unetflow.weights import (
    InvalidLabels,
    WeightSettings,
    block_slices,
    border_term,
    class_counts,
    inverse_frequency_weights,
    naive_border_term,
    weight_block,
    weight_map,
)

EPS = 1e-6


def settings(w0: float = 10.0, sigma: float = 5.0, border: str = "background", class_weights=(1.0, 1.0)):
    return WeightSettings(w0=w0, sigma=sigma, eps=EPS, border=border, class_weights=class_weights)


def random_labels(rng: np.random.Generator, shape: tuple[int, int], n_objects: int, ids=None) -> np.ndarray:
    """Overlapping random discs: later discs cut earlier ones, so objects touch, some are split in
    two pieces, and discs centred near or beyond the edge touch the image border."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape)
    ids = np.arange(1, n_objects + 1) if ids is None else ids
    for obj_id in ids:
        cy, cx = rng.uniform(-4, shape[0] + 4), rng.uniform(-4, shape[1] + 4)
        radius = rng.uniform(1.0, 9.0)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = obj_id
    return labels


def assemble(labels, s: WeightSettings, chunks: tuple[int, int]) -> np.ndarray:
    out = np.full(labels.shape, np.nan, np.float32)
    for ys, xs in block_slices(labels.shape, chunks):
        out[ys, xs] = weight_block(labels, s, ys, xs)
    return out


def test_truncation_is_where_the_term_reaches_eps():
    s = settings()
    assert s.truncation == pytest.approx(5.0 * math.sqrt(2 * math.log(10.0 / EPS)))
    assert 28 < s.truncation < 29 and s.halo == 29
    assert s.w0 * math.exp(-(s.truncation**2) / (2 * s.sigma**2)) == pytest.approx(EPS)
    assert settings(w0=EPS / 2).truncation == 0.0


def test_hand_computed_value_between_two_pixels_and_a_far_third():
    labels = np.zeros((11, 30), np.int32)
    labels[5, 2], labels[5, 8], labels[5, 28] = 1, 2, 3  # pixel (5, 5): d1 = d2 = 3, third at 23
    term = border_term(labels, settings(sigma=2.0))
    assert term[5, 5] == pytest.approx(10.0 * math.exp(-36.0 / 8.0))
    assert term[5, 2] == pytest.approx(10.0 * math.exp(-36.0 / 8.0))  # on object 1: d1 = 0, d2 = 6


@pytest.mark.parametrize("seed", range(12))
def test_equals_naive_oracle_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(24, 80)), int(rng.integers(24, 80)))
    labels = random_labels(rng, shape, int(rng.integers(2, 30)))
    w0, sigma = float(rng.uniform(1.0, 20.0)), float(rng.uniform(1.0, 6.0))
    ours = border_term(labels, settings(w0=w0, sigma=sigma))
    oracle = naive_border_term(labels, w0, sigma)
    relevant = oracle > EPS
    assert relevant.sum() > 50  # the comparison is not vacuous
    np.testing.assert_allclose(ours[relevant], oracle[relevant], rtol=0, atol=1e-5)
    assert np.abs(ours - oracle).max() <= EPS  # elsewhere truncation loses less than eps
    assert np.all(ours[~relevant] == 0)


def test_no_objects_gives_class_weight_only():
    w = weight_map(np.zeros((20, 30), np.int32), settings(class_weights=(0.6, 3.0)))
    assert w.dtype == np.float32 and np.all(w == np.float32(0.6))


def test_one_object_has_no_border_term_and_is_finite():
    labels = np.zeros((25, 25), np.int32)
    labels[5:12, 0:9] = 4  # touches the image border
    for border in ("background", "everywhere"):
        w = weight_map(labels, settings(border=border, class_weights=(1.0, 2.0)))
        assert np.all(np.isfinite(w))
        np.testing.assert_array_equal(w, np.where(labels > 0, 2.0, 1.0).astype(np.float32))
    assert np.all(np.isfinite(naive_border_term(labels, 10.0, 5.0)))


def test_objects_touching_the_border_and_each_other_match_oracle():
    labels = np.zeros((40, 40), np.int32)
    labels[0:15, 0:18] = 1
    labels[0:15, 19:40] = 2  # one-pixel gap at column 18, both on the top edge
    labels[16:40, 0:40] = 3
    ours = border_term(labels, settings())
    oracle = naive_border_term(labels, 10.0, 5.0)
    np.testing.assert_allclose(ours, oracle, rtol=0, atol=1e-5)
    assert ours[5, 18] == pytest.approx(10.0 * math.exp(-4.0 / 50.0))  # gap pixel: d1 = d2 = 1


def test_non_contiguous_and_huge_ids_equal_compact_ids():
    rng = np.random.default_rng(7)
    compact = random_labels(rng, (60, 50), 12)
    present = np.unique(compact[compact > 0])
    sparse_ids = np.zeros(compact.max() + 1, np.int64)
    sparse_ids[present] = rng.choice(np.arange(5, 2**31 - 1, 9973), present.size, replace=False)
    sparse_ids[present[-1]] = 2**31 - 1
    sparse = sparse_ids[compact].astype(np.int32)
    s = settings(class_weights=(0.5, 4.0))
    np.testing.assert_array_equal(weight_map(sparse, s), weight_map(compact, s))
    full = np.where(np.arange(30) < 13, 2**31 - 1, 2**30)[None].repeat(20, axis=0).astype(np.int32)  # no background
    s = settings(border="everywhere")
    np.testing.assert_array_equal(weight_map(full, s), weight_map((full == 2**30) + 1, s))


def test_object_in_two_pieces_is_one_object():
    labels = np.zeros((21, 21), np.int32)
    labels[10, 2] = labels[10, 18] = 1  # one id, two pixels: no gap between different objects
    assert np.all(border_term(labels, settings()) == 0)
    labels[10, 18] = 2
    assert border_term(labels, settings())[10, 10] > 0


def test_border_modes():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 3:14], labels[5:15, 16:27] = 1, 2
    background = weight_map(labels, settings(class_weights=(1.0, 2.0)))
    everywhere = weight_map(labels, settings(border="everywhere", class_weights=(1.0, 2.0)))
    assert np.all(background[labels > 0] == 2.0)
    assert everywhere[10, 13] > 2.0 + 1.0  # object pixel next to the gap
    np.testing.assert_array_equal(background[labels == 0], everywhere[labels == 0])
    assert background[10, 14] > background[0, 0]  # the gap outweighs open background


def test_bool_mask_is_one_object_and_negative_ids_are_refused():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = mask[6:8, 6:8] = True
    assert np.all(border_term(mask, settings()) == 0)  # a mask is one object; components are ingest's job
    with pytest.raises(InvalidLabels, match=">= 0"):
        weight_map(np.full((4, 4), -1, np.int32), settings())
    with pytest.raises(InvalidLabels, match="dtype"):
        weight_map(np.zeros((4, 4), np.float32), settings())


@pytest.mark.parametrize("n_objects", [8, 60])  # sparse: gaps near T cross blocks; dense: many objects per block
@pytest.mark.parametrize("chunks", [(16, 16), (64, 40), (150, 130)])
def test_chunked_equals_whole(chunks, n_objects):
    labels = random_labels(np.random.default_rng(3), (150, 130), n_objects)
    s = settings(border="everywhere", class_weights=(0.7, 2.3))
    np.testing.assert_array_equal(assemble(labels, s, chunks), weight_map(labels, s))


def test_chunked_is_exact_at_the_truncation_distance():
    labels = np.zeros((21, 40), np.int32)
    labels[10, 1], labels[10, 29] = 1, 2  # 28 px apart: just inside T = 28.4
    s = settings(border="everywhere")
    whole = weight_map(labels, s)
    assert whole[10, 1] == np.float32(1.0 + 10.0 * math.exp(-(28.0**2) / 50.0))  # needs object 2, 28 px away
    np.testing.assert_array_equal(assemble(labels, s, (21, 2)), whole)


class WindowOnly:
    """Label array that records every read, to prove blocks never read the whole image."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.shape, self.reads = labels, labels.shape, []

    def __getitem__(self, key):
        self.reads.append(self.labels[key].shape)
        return self.labels[key]


def test_block_reads_only_block_plus_halo():
    labels = random_labels(np.random.default_rng(4), (200, 200), 80)
    s = settings(sigma=2.0)  # halo 12
    lazy = WindowOnly(labels)
    np.testing.assert_array_equal(assemble(lazy, s, (50, 50)), weight_map(labels, s))
    assert max(h * w for h, w in lazy.reads) == (50 + 2 * s.halo) ** 2


def test_inverse_frequency_weights_have_mean_one():
    labels = np.zeros((10, 10), np.int32)
    labels[:5, :5] = 3  # 25 % foreground
    classes = (labels > 0).astype(np.uint8)
    background, foreground = class_counts([classes, zarr.array(classes, chunks=(3, 3))], n_classes=2, chunk=4)
    assert (background, foreground) == (150, 50)
    w_bg, w_fg = inverse_frequency_weights([background, foreground])
    assert (w_bg, w_fg) == pytest.approx((200 / 300, 2.0))
    assert (background * w_bg + foreground * w_fg) / (background + foreground) == pytest.approx(1.0)
    assert inverse_frequency_weights([100, 0]) == (1.0, 1.0)
    three = inverse_frequency_weights([60, 30, 10])
    assert three == pytest.approx((100 / 180, 100 / 90, 100 / 30))
    assert (60 * three[0] + 30 * three[1] + 10 * three[2]) / 100 == pytest.approx(1.0)


# ---------------------------------------------------------------- command line


@pytest.fixture
def weights_cli():
    """The command line entry point, as ``unetflow`` runs it."""
    return cli.main


def tiny_dataset(path, labelled=True):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    labels = {name: random_labels(rng, (70, 90), 15) for name in names}
    images = {name: (labels[name] > 0)[None].astype(np.float32) + rng.normal(0, 0.1, (1, 70, 90)) for name in names}
    split = {"train": ["a", "b"], "val": ["c"]}
    write_dataset(path, images, labels if labelled else None, split=split, chunk=64)
    return labels


def test_cli_writes_store_attrs_and_preview(tmp_path, weights_cli):
    """The paper's 2-class targets without gaps: the stored map is the paper's weight map."""
    labels = tiny_dataset(tmp_path / "data.zarr")
    config = {"w0": 8.0, "sigma": 3.0, "target": {"mode": "binary", "gap": 0}}
    out, png = tmp_path / "weights.zarr", tmp_path / "plots" / "weights.png"
    rc = weights_cli(["weights", str(tmp_path / "data.zarr"), str(out), "--settings", json.dumps(config), "--preview", str(png)])
    assert rc == 0
    group = open_store(out, "weights")
    meta = store_meta(group)
    train = np.concatenate([labels["a"].ravel(), labels["b"].ravel()])
    expected_cw = inverse_frequency_weights([int((train == 0).sum()), int((train > 0).sum())])
    assert meta["class_weights"] == pytest.approx(list(expected_cw))
    assert (meta["w0"], meta["sigma"], meta["border"], meta["eps"]) == (8.0, 3.0, "background", EPS)
    assert meta["source"] == str(tmp_path / "data.zarr")
    s = WeightSettings(w0=8.0, sigma=3.0, eps=EPS, border="background", class_weights=expected_cw)
    for name in ("a", "b", "c"):
        stored = group["weights"][name]
        assert stored.chunks == (64, 64)
        np.testing.assert_array_equal(stored[...], weight_map(labels[name], s))
        np.testing.assert_array_equal(group["targets"][name][...], labels[name] > 0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "plots", "weights.zarr"]


def test_cli_connected_components_and_no_balance(tmp_path, weights_cli):
    binary = np.zeros((40, 40), np.int32)
    binary[5:15, 5:15] = binary[5:15, 17:30] = 1  # two cells, same value, 2-px membrane
    write_dataset(tmp_path / "data.zarr", {"m": binary[None].astype(np.float32)}, {"m": binary})
    config = {"objects": "connected_components", "class_balance": "none", "target": {"mode": "binary", "gap": 0}}
    out = tmp_path / "weights.zarr"
    assert weights_cli(["weights", str(tmp_path / "data.zarr"), str(out), "--settings", json.dumps(config)]) == 0
    instances = binary.copy()
    instances[5:15, 17:30] = 2
    np.testing.assert_array_equal(open_store(out, "weights")["weights"]["m"][...], weight_map(instances, settings()))
    assert open_store(out, "weights")["weights"]["m"][10, 16] > 5.0  # the membrane gets the border weight


def test_cli_store_without_labels_exits_2_and_writes_nothing(tmp_path, weights_cli, capsys):
    tiny_dataset(tmp_path / "data.zarr", labelled=False)
    out = tmp_path / "weights.zarr"
    assert weights_cli(["weights", str(tmp_path / "data.zarr"), str(out)]) == 2
    assert "no labels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]


def test_cli_negative_labels_exit_2_and_leave_no_partial_store(tmp_path, weights_cli, capsys):
    tiny_dataset(tmp_path / "data.zarr")
    root = zarr.open_group(str(tmp_path / "data.zarr"), mode="r+")
    root["labels"]["c"][3, 3] = -5
    out = tmp_path / "weights.zarr"
    assert weights_cli(["weights", str(tmp_path / "data.zarr"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "labels/c" in err and ">= 0" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]
