"""Overlap-tile prediction: seamless against whole-image inference, resumable, distributed, NGFF."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array
import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

import unetflow
import unetflow.inference as inference_module
import unetflow.normalize as normalize_module
import unetflow.predict as predict_module
from unetflow.commands import predict as predict_command
from unetflow.config import ConfigError
from unetflow.devices import cpu_bf16_supported, resolve_precision
from unetflow.io.errors import InputError
from unetflow.io.chunked_instances import instance_labels
from unetflow.io.ome_zarr import (
    INSTANCES,
    PROBABILITIES,
    SEMANTIC,
    create_prediction,
    downsample,
    level_path,
    open_ome_image,
    pyramid,
)
from unetflow.model import UNet, save_checkpoint
from unetflow.instances import InstanceRule, grow_seeds
from unetflow.normalize import Normalization
from unetflow.chunk_cache import CachedChunks
from unetflow.inference import DIHEDRAL, TilePredictor, dihedral, predict_region, tile_layout, undihedral
from unetflow.predict import PredictOptions, predict_image
from unetflow.prediction_store import DONE_DIR, marker
from unetflow.io.pixel_size import PixelSize
from unetflow.store import write_dataset
from unetflow.tiling import Box, read_window

from ngff import assert_valid_ngff, ngff_problems

def _model(path: Path, depth: int = 2, padding: str = "valid", in_channels: int = 1, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(in_channels=in_channels, n_classes=2, depth=depth, base_channels=4, padding=padding).eval()
    # an identity recipe, so the whole-image reference sees exactly the stored pixels
    identity = Normalization("zscore", mean=(0.0,) * in_channels, std=(1.0,) * in_channels)
    save_checkpoint(path, net, normalization=identity.to_json())
    return net


def _store(path: Path, images: dict[str, np.ndarray], val: list[str] | None = None) -> Path:
    split = {"train": [n for n in images if n not in (val or [])], "val": val or []}
    return write_dataset(path, images, split=split, chunk=64)


def _image(height: int, width: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(channels, height, width)), (0, 2, 2))
    return (smooth / smooth.std()).astype(np.float32)


def _whole_image(
    net: UNet, image: np.ndarray, margin: int, tta: bool = False, precision: str = "fp32"
) -> np.ndarray:
    """Reference: the net run once on the whole image, mirror-padded by numpy, then cropped."""
    _, h, w = image.shape
    align = 2 ** (net.depth - 1)
    if net.padding == "valid":
        oh, ow = net.valid_output_size(h), net.valid_output_size(w)
    else:
        oh, ow = -(-h // align) * align, -(-w // align) * align
    padded = np.pad(image, [(0, 0), (margin, margin + oh - h), (margin, margin + ow - w)], mode="reflect")
    x = torch.from_numpy(padded[None])
    transforms = DIHEDRAL if tta else [(0, False)]
    mode = resolve_precision(precision, torch.device("cpu"))
    net = mode.prepare_model(net)
    with torch.no_grad(), mode.autocast(torch.device("cpu")):
        probs = sum(
            undihedral(torch.softmax(net(mode.prepare_input(dihedral(x, k, f))).float(), 1), k, f)
            for k, f in transforms
        ) / len(transforms)
    crop = (probs.shape[-1] - ow) // 2  # a same-padded net returns its context too
    return probs[0, :, crop : crop + h, crop : crop + w].numpy()


def _predict(tmp_path: Path, net_path: Path, store: Path, name: str = "a", **settings: object) -> np.ndarray:
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "precision": "fp32", **settings})
    out = predict_image(net_path, store, name, tmp_path / f"{name}.ome.zarr", options)
    return open_ome_image(out).levels[0][:]


def _write_probabilities(root: Path, probabilities: np.ndarray) -> None:
    """Level-0 probabilities (what instance labelling reads) and their argmax (the semantic labels)."""
    probabilities = probabilities.astype(np.float32)
    zarr.open_array(store=str(root), path=level_path("", 0), mode="r+")[:] = probabilities
    zarr.open_array(store=str(root), path=level_path(SEMANTIC, 0), mode="r+")[:] = probabilities.argmax(axis=0)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label images describe the same objects (ids may differ by a permutation)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    one_to_one = len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    return bool(((a == 0) == (b == 0)).all() and one_to_one)


# -- seamlessness ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "depth,tile,shape",
    [(2, 10, (150, 133)), (2, 64, (150, 133)), (3, 13, (97, 131)), (3, 40, (97, 131)), (2, 22, (67, 91))],
)
def test_tiled_prediction_equals_whole_image_inference(tmp_path: Path, depth: int, tile: int, shape: tuple) -> None:
    net = _model(tmp_path / "m.pt", depth=depth)
    image = _image(*shape)
    store = _store(tmp_path / "d.zarr", {"a": image})
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=tile)
    reference = _whole_image(net, image, net.margin)
    assert probs.shape == (2, *shape) and probs.dtype == np.float32
    assert reference[1].std() > 1e-3  # the comparison is not between two constant maps
    assert np.abs(probs - reference).max() <= 1e-4


@pytest.mark.parametrize("shape", [(13, 9), (6, 1), (1, 7)])
def test_image_smaller_than_one_tile_is_mirror_padded_like_numpy(tmp_path: Path, shape: tuple) -> None:
    net = _model(tmp_path / "m.pt", depth=3)  # margin 20: the context wraps the image several times
    image = _image(*shape, seed=3)
    store = _store(tmp_path / "d.zarr", {"a": image})
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=64)
    assert np.abs(probs - _whole_image(net, image, net.margin)).max() <= 1e-4


def test_same_padded_net_is_seamless_with_its_receptive_field_as_halo(tmp_path: Path) -> None:
    net = _model(tmp_path / "m.pt", depth=3, padding="same")
    image = _image(100, 75, seed=1)
    store = _store(tmp_path / "d.zarr", {"a": image})
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=16)
    margin = tile_layout(net, 16, 64, 100, 75).margin
    assert np.abs(probs - _whole_image(net, image, margin)).max() <= 1e-4


BF16_TOLERANCE = 1e-3
"""Largest |tiled - whole| probability difference allowed when both run in bf16 (fp32: 1e-4).

Measured: ~1e-7 (oneDNN sums each output pixel over the same channel blocks whatever the image
size), against ~2e-2 between bf16 and fp32. The bound leaves room for other kernel choices on
other CPUs or thread counts while still failing if tiling went wrong (a seam is >> 1e-3)."""


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("depth,tile,shape", [(2, 10, (150, 133)), (3, 40, (97, 131))])
def test_bf16_tiled_prediction_matches_whole_image_within_tolerance(
    tmp_path: Path, depth: int, tile: int, shape: tuple
) -> None:
    net = _model(tmp_path / "m.pt", depth=depth)
    image = _image(*shape, seed=2)
    store = _store(tmp_path / "d.zarr", {"a": image})
    out = predict_image(
        tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr",
        PredictOptions.from_settings({"device": "cpu", "chunk": 64, "tile": tile, "precision": "bf16"}),
    )
    assert open_ome_image(out).attrs["precision"] == "bf16"
    probs = open_ome_image(out).levels[0][:]
    labels = open_ome_image(out).label("semantic").levels[0][:]
    whole = _whole_image(net, image, net.margin, precision="bf16")
    fp32 = _whole_image(net, image, net.margin)
    assert np.abs(probs - fp32).max() > 1e-4  # bf16 did run: the fp32 bound would not hold
    assert np.abs(probs - whole).max() <= BF16_TOLERANCE
    assert (labels == whole.argmax(axis=0)).mean() >= 0.999
    assert (labels == fp32.argmax(axis=0)).mean() >= 0.99  # an untrained net: many pixels near p = 0.5


def test_precision_is_part_of_the_prediction_identity(tmp_path: Path) -> None:
    net = _model(tmp_path / "m.pt")
    image = _image(60, 50)
    store = _store(tmp_path / "d.zarr", {"a": image})
    out = tmp_path / "a.ome.zarr"
    settings = {"device": "cpu", "chunk": 64, "tile": 20}
    predict_image(tmp_path / "m.pt", store, "a", out, PredictOptions.from_settings({**settings, "precision": "fp32"}))
    first = open_ome_image(out).attrs["fingerprint"]
    auto = PredictOptions.from_settings({**settings, "precision": "auto"})
    predict_image(tmp_path / "m.pt", store, "a", out, auto)
    resolved = "bf16" if cpu_bf16_supported() else "fp32"
    assert open_ome_image(out).attrs["precision"] == resolved
    assert (open_ome_image(out).attrs["fingerprint"] == first) == (resolved == "fp32")
    reference = _whole_image(net, image, net.margin, precision=resolved)
    tolerance = 1e-4 if resolved == "fp32" else BF16_TOLERANCE
    assert np.abs(open_ome_image(out).levels[0][:] - reference).max() <= tolerance


def test_tta_tiles_equal_whole_image_tta(tmp_path: Path) -> None:
    net = _model(tmp_path / "m.pt", depth=3)
    image = _image(70, 90, seed=2)
    store = _store(tmp_path / "d.zarr", {"a": image})
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=20, tta=True)
    reference = _whole_image(net, image, net.margin, tta=True)
    assert np.abs(probs - reference).max() <= 1e-4
    assert np.abs(probs - _whole_image(net, image, net.margin)).max() > 1e-3  # TTA did change something


def test_a_region_keeps_a_serialised_model_until_all_its_batches_ran(tmp_path: Path) -> None:
    """Two chunk tasks sharing one predictor whose forwards are serialised (a GPU's): each runs
    its batches in a row, so the first chunk is done (and written) while the second one runs,
    instead of both finishing together."""
    net = _model(tmp_path / "m.pt", depth=2)
    cpu = torch.device("cpu")
    callers: list[int] = []

    class Recording(TilePredictor):
        def __call__(self, windows: np.ndarray, tta: bool = False) -> np.ndarray:
            time.sleep(0.01)  # work between batches, outside the forward: the other thread's chance
            with self.reserved():
                callers.append(threading.get_ident())
                return super().__call__(windows, tta)

    predictor = Recording(net, cpu, resolve_precision("fp32", cpu), serialised=True)
    image = _image(64, 64)
    layout = tile_layout(net, 16, 64, 64, 64)
    regions = [Box(0, 0, 64, 32), Box(0, 32, 64, 32)]
    results: dict[int, np.ndarray] = {}
    workers = [
        threading.Thread(target=lambda i=i: results.update({i: predict_region(predictor, image, layout, regions[i], 1, False)}))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    batches = len(layout.tiles(regions[0]))
    assert batches > 1 and len(callers) == 2 * batches
    assert len(set(callers[:batches])) == 1 and len(set(callers[batches:])) == 1  # one region, then the other
    whole = predict_region(predictor, image, layout, Box(0, 0, 64, 64), 1, False)
    assert np.array_equal(np.concatenate([results[0], results[1]], axis=-1), whole)


def test_cpu_forwards_run_side_by_side_each_on_its_share_of_threads(tmp_path: Path) -> None:
    """On a CPU two chunk tasks run their forwards at the same time (both reach a barrier inside
    the forward, which a lock would deadlock), each on ``threads_per_call`` torch threads of its
    own, and the calling thread's torch setting is left as it was."""
    net = _model(tmp_path / "m.pt", depth=2)
    cpu = torch.device("cpu")
    both_inside = threading.Barrier(2, timeout=20)
    threads_seen: list[int] = []

    class Meeting(TilePredictor):
        def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
            threads_seen.append(torch.get_num_threads())
            both_inside.wait()
            return super()._probabilities(x)

    before = torch.get_num_threads()
    predictor = Meeting(net, cpu, resolve_precision("fp32", cpu), threads_per_call=1)
    assert not predictor.serialised
    image = _image(64, 64)
    layout = tile_layout(net, 16, 64, 64, 64)
    regions = [Box(0, 0, 64, 32), Box(0, 32, 64, 32)]
    results: dict[int, np.ndarray] = {}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = predict_region(predictor, image, layout, regions[i], 64, False)  # one batch each
        except BaseException as exc:  # a broken barrier: the forwards did not meet
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures and threads_seen == [1, 1]
    assert torch.get_num_threads() == before
    reference = TilePredictor(net, cpu, resolve_precision("fp32", cpu))
    whole = predict_region(reference, image, layout, Box(0, 0, 64, 64), 1, False)
    assert np.abs(np.concatenate([results[0], results[1]], axis=-1) - whole).max() <= 1e-5  # other sums' order


def test_the_checkpoint_is_read_once_per_prediction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict checks the model, then its chunk tasks build the predictor from the same contents."""
    _model(tmp_path / "m.pt")
    store = _store(tmp_path / "d.zarr", {"a": _image(60, 50)})
    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    _predict(tmp_path, tmp_path / "m.pt", store)
    assert [Path(p) for p in reads] == [tmp_path / "m.pt"]


def test_a_folder_of_images_builds_the_model_once_for_its_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a U-Net costs as much as a small image's forward: predict checks the model of
    every image from one CPU copy, and the chunk tasks build their predictor once."""
    _model(tmp_path / "m.pt")
    store = write_dataset(tmp_path / "d.zarr", {n: _image(40, 40, seed=i) for i, n in enumerate("abc")}, chunk=64)
    built = []
    real = inference_module.model_from_checkpoint
    monkeypatch.setattr(inference_module, "model_from_checkpoint", lambda *a, **k: built.append(a[1:]) or real(*a, **k))
    inference_module._cpu_model.cache_clear()
    inference_module._load_predictor.cache_clear()
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "precision": "fp32"})
    predict_module.predict_store(tmp_path / "m.pt", store, tmp_path / "out", "all", options)
    assert sorted(map(tuple, built)) == [("cpu",), ("cpu",)]  # the checks' copy and the predictor's
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.zarr", "b.ome.zarr", "c.ome.zarr"]


def test_float16_output(tmp_path: Path) -> None:
    net = _model(tmp_path / "m.pt")
    image = _image(80, 70)
    store = _store(tmp_path / "d.zarr", {"a": image})
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=30, dtype="float16")
    assert probs.dtype == np.float16
    assert np.abs(probs.astype(np.float32) - _whole_image(net, image, net.margin)).max() <= 1e-3


# -- resume and completeness -------------------------------------------------------------------
def test_killed_run_resumes_without_recomputing_written_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _model(tmp_path / "m.pt")
    image = _image(150, 133)
    store = _store(tmp_path / "d.zarr", {"a": image})
    options = PredictOptions.from_settings(
        {"device": "cpu", "chunk": 64, "tile": 20, "chunks_in_flight": 1, "precision": "fp32"}
    )
    out = tmp_path / "a.ome.zarr"
    partial = tmp_path / "a.ome.zarr.partial"
    real_predict_chunk = predict_module.predict_chunk
    done: list[tuple[int, int]] = []

    def killed_after_four(job: predict_module.ChunkJob) -> None:
        if len(done) == 4:
            raise KeyboardInterrupt("simulated kill")
        real_predict_chunk(job)
        done.append(job.index)

    monkeypatch.setattr(predict_module, "predict_chunk", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        predict_image(tmp_path / "m.pt", store, "a", out, options)
    assert not out.exists() and partial.exists()
    assert all(marker(partial, index).exists() for index in done)

    recomputed: list[tuple[int, int]] = []

    def counting(job: predict_module.ChunkJob) -> None:
        recomputed.append(job.index)
        real_predict_chunk(job)

    monkeypatch.setattr(predict_module, "predict_chunk", counting)
    predict_image(tmp_path / "m.pt", store, "a", out, options)
    all_chunks = {(iy, ix) for iy in range(3) for ix in range(3)}
    assert sorted(recomputed) == sorted(all_chunks - set(done))
    assert not partial.exists()
    probs = open_ome_image(out).levels[0][:]
    assert np.abs(probs - _whole_image(net, image, net.margin)).max() <= 1e-4

    recomputed.clear()  # a complete output with the same model and settings is not redone,
    monkeypatch.setattr(  # not even its image statistics (a whole slide's are a streamed pass over it)
        Normalization, "statistics", lambda *a: pytest.fail("statistics computed for a complete prediction")
    )
    predict_image(tmp_path / "m.pt", store, "a", out, options)
    assert recomputed == []


def test_partial_output_of_another_model_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _model(tmp_path / "m.pt", seed=0)
    image = _image(100, 100)
    store = _store(tmp_path / "d.zarr", {"a": image})
    options = PredictOptions.from_settings(
        {"device": "cpu", "chunk": 64, "tile": 20, "chunks_in_flight": 1, "precision": "fp32"}
    )
    real_predict_chunk = predict_module.predict_chunk
    calls: list[int] = []

    def killed_after_one(job: predict_module.ChunkJob) -> None:
        if calls:
            raise KeyboardInterrupt("simulated kill")
        real_predict_chunk(job)
        calls.append(1)

    monkeypatch.setattr(predict_module, "predict_chunk", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    monkeypatch.setattr(predict_module, "predict_chunk", real_predict_chunk)
    other = _model(tmp_path / "m.pt", seed=1)  # retrained in place
    out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    assert np.abs(open_ome_image(out).levels[0][:] - _whole_image(other, image, other.margin)).max() <= 1e-4


def test_reingested_image_is_predicted_again(tmp_path: Path) -> None:
    net = _model(tmp_path / "m.pt")
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "tile": 20, "precision": "fp32"})
    _store(tmp_path / "d.zarr", {"a": _image(60, 50, seed=0)})
    predict_image(tmp_path / "m.pt", tmp_path / "d.zarr", "a", tmp_path / "a.ome.zarr", options)
    image = _image(60, 50, seed=1)
    _store(tmp_path / "d.zarr", {"a": image})  # same name and shape, new pixels
    out = predict_image(tmp_path / "m.pt", tmp_path / "d.zarr", "a", tmp_path / "a.ome.zarr", options)
    assert np.abs(open_ome_image(out).levels[0][:] - _whole_image(net, image, net.margin)).max() <= 1e-4


# -- scheduling and errors ---------------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_with_two_workers_equals_threaded(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt", depth=3)
    store = _store(tmp_path / "d.zarr", {"a": _image(140, 150)})
    settings = {"device": "cpu", "chunk": 64, "tile": 24}
    threaded = predict_image(
        tmp_path / "m.pt", store, "a", tmp_path / "t.ome.zarr", PredictOptions.from_settings(settings)
    )
    distributed = predict_image(
        tmp_path / "m.pt",
        store,
        "a",
        tmp_path / "d.ome.zarr",
        PredictOptions.from_settings({**settings, "scheduler": "distributed", "n_workers": 2}),
    )
    a, b = open_ome_image(threaded), open_ome_image(distributed)
    np.testing.assert_allclose(a.levels[0][:], b.levels[0][:], atol=1e-6)
    np.testing.assert_array_equal(a.label("instances").levels[0][:], b.label("instances").levels[0][:])
    np.testing.assert_allclose(a.levels[-1][:], b.levels[-1][:], atol=1e-6)


def test_channel_mismatch_is_a_clear_input_error(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt", in_channels=3)
    store = _store(tmp_path / "d.zarr", {"a": _image(40, 40)})
    with pytest.raises(InputError, match=r"1 channel\(s\) but the model .* expects 3"):
        predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({}))
    assert not (tmp_path / "a.ome.zarr").exists() and not (tmp_path / "a.ome.zarr.partial").exists()


def test_missing_model_is_a_clear_input_error(tmp_path: Path) -> None:
    store = _store(tmp_path / "d.zarr", {"a": _image(40, 40)})
    with pytest.raises(InputError, match="no model checkpoint"):
        predict_image(tmp_path / "nothing", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({}))
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot load the model"):
        predict_image(tmp_path / "torn.pt", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({}))


# -- the model's normalisation recipe ----------------------------------------------------------
def _percentile_model(path: Path, depth: int = 2) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, depth=depth, base_channels=4).eval()
    save_checkpoint(path, net, normalization=Normalization("percentile", 1.0, 99.8).to_json())
    return net


def test_unseen_image_of_other_gain_and_offset_gets_the_same_prediction(tmp_path: Path) -> None:
    _percentile_model(tmp_path / "m.pt")
    image = _image(90, 70, seed=4)
    store = _store(tmp_path / "d.zarr", {"a": image})
    other = _store(tmp_path / "other.zarr", {"a": image * 10 + 100})  # a store the model never saw
    probs = _predict(tmp_path / "1", tmp_path / "m.pt", store, tile=20)
    probs_other = _predict(tmp_path / "2", tmp_path / "m.pt", other, tile=20)
    assert probs[1].std() > 1e-3
    np.testing.assert_allclose(probs_other, probs, atol=1e-5)
    attrs = open_ome_image(tmp_path / "2" / "a.ome.zarr").attrs
    low, high = np.percentile(image[0].astype(np.float64) * 10 + 100, [1.0, 99.8])
    assert attrs["normalization"]["method"] == "percentile"
    assert attrs["normalization"]["offset"] == pytest.approx([low], rel=1e-5)
    assert attrs["normalization"]["scale"] == pytest.approx([high - low], rel=1e-4)


def test_slide_statistics_are_streamed_once_and_tiles_stay_seamless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _percentile_model(tmp_path / "m.pt")
    image = np.round(_image(150, 133, seed=5) * 50 + 1000)  # integer-valued, like a 16-bit slide
    store = _store(tmp_path / "d.zarr", {"a": image})
    monkeypatch.setattr(normalize_module, "EXACT_BYTES", 1024)  # treat it as a slide too big to read whole
    streamed = []
    real = normalize_module.streamed_percentiles
    monkeypatch.setattr(normalize_module, "streamed_percentiles", lambda *a: streamed.append(a) or real(*a))
    probs = _predict(tmp_path, tmp_path / "m.pt", store, tile=10)
    assert len(streamed) == 1  # once for the whole slide, before the chunk tasks: never per tile
    low, high = np.percentile(image[0].astype(np.float64), [1.0, 99.8])
    reference = _whole_image(net, ((image - low) / (high - low)).astype(np.float32), net.margin)
    assert reference[1].std() > 1e-3
    assert np.abs(probs - reference).max() <= 1e-4


def test_model_without_a_recipe_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "old.pt", UNet(in_channels=1, depth=2, base_channels=2))
    store = _store(tmp_path / "d.zarr", {"a": _image(40, 40)})
    with pytest.raises(InputError, match="no normalisation recipe.*re-run train"):
        predict_image(tmp_path / "old.pt", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({}))
    assert not (tmp_path / "a.ome.zarr").exists() and not (tmp_path / "a.ome.zarr.partial").exists()


# -- the OME-Zarr output -----------------------------------------------------------------------
def test_output_is_ngff_with_pyramids_and_labels(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt")
    store = _store(tmp_path / "d.zarr", {"a": _image(150, 133)})
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "tile": 20, "pyramid_levels": 3})
    out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    image = open_ome_image(out)
    probs = image.levels[0][:]
    assert [level.shape for level in image.levels] == [(2, 150, 133), (2, 75, 67), (2, 38, 34)]
    assert image.axes == ["c", "y", "x"] and image.scales[2] == [1.0, 4.0, 4.0]
    level1 = image.group.attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    assert level1[1] == {"type": "translation", "translation": [0.0, 0.5, 0.5]}  # a 2x2 mean sits mid-cell
    np.testing.assert_allclose(image.levels[1][:], downsample(probs, "mean"), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    semantic = image.label("semantic").levels[0][:]
    np.testing.assert_array_equal(semantic, probs.argmax(axis=0))
    instances = image.label("instances")
    assert _same_partition(instances.levels[0][:], ndimage.label(semantic > 0)[0])
    np.testing.assert_array_equal(instances.levels[1][:], instances.levels[0][::2, ::2])
    assert image.attrs["kind"] == "prediction" and image.attrs["complete"] is True
    assert not (out / DONE_DIR).exists()

    ome_zarr = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(ome_zarr.Reader(parse_url(str(out)))())
    assert [n.data[0].shape for n in nodes if n.data] == [(2, 150, 133), (150, 133), (150, 133)]
    assert sum(any(type(s).__name__ == "Label" for s in n.specs) for n in nodes) == 2
    assert_valid_ngff(out)
    channels = image.group.attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["background", "object"]
    assert all(c["window"] == {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0} for c in channels)
    assert image.pixel_size is None and "unit" not in image.group.attrs["ome"]["multiscales"][0]["axes"][1]


def test_prediction_carries_the_input_pixel_size_into_every_scale(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt")
    size = PixelSize(0.5, 0.25, "micrometer")
    store = write_dataset(tmp_path / "d.zarr", {"a": _image(150, 133)}, chunk=64, pixel_sizes={"a": size.to_json()})
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "tile": 20, "pyramid_levels": 3})
    out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    assert_valid_ngff(out)
    image = open_ome_image(out)
    assert image.pixel_size == size and image.attrs["pixel_size"] == size.to_json()
    assert image.scales == [[1.0, 0.5, 0.25], [1.0, 1.0, 0.5], [1.0, 2.0, 1.0]]
    level2 = image.group.attrs["ome"]["multiscales"][0]["datasets"][2]["coordinateTransformations"]
    assert level2[1] == {"type": "translation", "translation": [0.0, 0.75, 0.375]}  # 1.5 pixels, physical
    for name in ("semantic", "instances"):
        label = image.label(name)
        assert label.pixel_size == size and label.scales[1] == [1.0, 0.5]


def test_validator_rejects_what_ngff_05_forbids(tmp_path: Path) -> None:
    """The NGFF check the tests rely on fails on the mistakes it is there for."""
    out = tmp_path / "p.ome.zarr"
    create_prediction(out, n_classes=3, height=70, width=70, chunk=64, levels=2, dtype="float32", attrs={},
                      pixel_size=PixelSize(1.0, 1.0, "nanometer"))
    assert ngff_problems(out) == []
    root = zarr.open_group(str(out), mode="r+")
    ome = root.attrs["ome"]
    ome["omero"]["channels"][2]["color"] = 255  # a hex string
    ome["multiscales"][0]["axes"][2]["unit"] = "nm"  # a UDUNITS-2 name
    root.attrs["ome"] = ome
    label = zarr.open_group(str(out / "labels" / "semantic"), mode="r+")
    label.attrs["ome"] = {**label.attrs["ome"], "image-label": {**label.attrs["ome"]["image-label"], "version": "0.5"}}
    problems = "\n".join(ngff_problems(out))
    assert "omero/channels/2/color" in problems and "'nm'" in problems and "ome/image-label" in problems


def test_cached_chunks_reads_equal_plain_reads_and_stay_bounded(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((2, 300, 257)).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=(2, 64, 64), dtype="float32")
    array[:] = image
    cached = CachedChunks(array, capacity=5)
    for y0, x0, h, w in [(-10, -10, 100, 80), (250, 200, 80, 90), (0, 0, 300, 257), (17, 33, 5, 5), (-50, 100, 400, 20)]:
        np.testing.assert_array_equal(read_window(cached, y0, x0, h, w), read_window(image, y0, x0, h, w))
        assert len(cached._decoded) <= 5


@pytest.mark.parametrize("chunk", [64, 65])
def test_pyramid_levels_equal_downsampling_the_whole_level_below(tmp_path: Path, chunk: int) -> None:
    """Even chunks are downsampled one by one (no block assembled), odd ones as one block (2x2
    cells would straddle them): both give what downsampling the whole level gives."""
    path = tmp_path / "p.ome.zarr"
    root = create_prediction(path, n_classes=2, height=150, width=133, chunk=chunk, levels=3, dtype="float32", attrs={})
    rng = np.random.default_rng(0)
    probs = rng.random((2, 150, 133)).astype(np.float32)
    semantic = rng.integers(0, 3, (150, 133)).astype(np.uint8)
    root[level_path(PROBABILITIES, 0)][...] = probs
    root[level_path(SEMANTIC, 0)][...] = semantic
    dask.compute(*pyramid(path, PROBABILITIES, {}), *pyramid(path, SEMANTIC, {}), scheduler="sync")
    level1 = downsample(probs, "mean")
    np.testing.assert_allclose(root[level_path(PROBABILITIES, 1)][...], level1, atol=1e-6)
    np.testing.assert_allclose(root[level_path(PROBABILITIES, 2)][...], downsample(level1, "mean"), atol=1e-6)
    np.testing.assert_array_equal(root[level_path(SEMANTIC, 2)][...], semantic[::4, ::4])


def test_downsample_mean_averages_the_pixels_of_odd_edges() -> None:
    block = np.arange(15, dtype=np.float32).reshape(1, 3, 5)
    down = downsample(block, "mean")
    assert down.shape == (1, 2, 3)
    assert down[0, 0, 0] == np.mean([0, 1, 5, 6]) and down[0, 1, 2] == 14 and down[0, 0, 2] == np.mean([4, 9])


@pytest.mark.parametrize("pattern", ["blobs", "speckle", "empty", "full"])
def test_chunked_instance_labels_merge_objects_across_chunk_borders(tmp_path: Path, pattern: str) -> None:
    noise = np.random.default_rng(5).normal(size=(100, 90))
    foreground = {
        "blobs": ndimage.gaussian_filter(noise, 2) > 0.05,  # objects spanning several chunks
        "speckle": noise > 0.3,
        "empty": np.zeros_like(noise, dtype=bool),
        "full": np.ones_like(noise, dtype=bool),
    }[pattern]
    root = tmp_path / "p.ome.zarr"
    create_prediction(root, n_classes=2, height=100, width=90, chunk=16, levels=1, dtype="float32", attrs={})
    _write_probabilities(root, np.stack([~foreground, foreground]))
    expected, n_expected = ndimage.label(foreground)
    (n,) = dask.compute(instance_labels(root, {})[0], scheduler="sync")
    labels = zarr.open_array(store=str(root), path=level_path(INSTANCES, 0))[:]
    assert n == n_expected
    assert set(np.unique(labels)) == set(range(n + 1)) - ({0} if foreground.all() else set())  # ids 1..n, no gaps
    assert _same_partition(labels, expected)


def test_chunked_seed_growth_equals_whole_image_growth(tmp_path: Path) -> None:
    """3-class predictions: interior seeds grown through the foreground and into the gaps chunk
    by chunk give the same objects as ``grow_seeds`` on the whole image."""
    noise = ndimage.gaussian_filter(np.random.default_rng(6).normal(size=(100, 90)), 3)
    semantic = np.digitize(noise, [-0.02, 0.04]).astype(np.uint8)  # 0 bg, 1 interior, 2 boundary
    root = tmp_path / "p.ome.zarr"
    create_prediction(root, n_classes=3, height=100, width=90, chunk=16, levels=1, dtype="float32", attrs={}, seeds=True)
    _write_probabilities(root, np.stack([semantic == k for k in range(3)]))
    seeds, n_expected = ndimage.label(semantic == 1)
    expected = grow_seeds(seeds, semantic > 0, 4, 1)
    (n,) = dask.compute(instance_labels(root, {}, InstanceRule(grow=4, expand=1))[0], scheduler="sync")
    labels = zarr.open_array(store=str(root), path=level_path(INSTANCES, 0))[:]
    assert n == n_expected and np.count_nonzero(expected) > np.count_nonzero(grow_seeds(seeds, semantic > 0, 4))  # gaps claimed
    assert _same_partition(labels, expected)


@pytest.mark.parametrize(
    "rule,filtered",
    [
        (InstanceRule(grow=4, expand=1, seed_threshold=0.6, foreground_threshold=0.4), True),
        (InstanceRule(grow=3, seed_threshold=0.3, foreground_threshold=0.7), False),
        (InstanceRule(seed_threshold=0.45, foreground_threshold=0.45), True),  # a 2-class rule
    ],
    ids=["grown-and-filtered", "grown", "filtered"],
)
def test_chunked_thresholded_objects_equal_whole_image_objects(tmp_path: Path, rule: InstanceRule, filtered: bool) -> None:
    """Thresholds, growth and min_size chunk by chunk (objects cut by chunk borders counted whole)
    give the objects of ``InstanceRule.objects`` on the whole probability map."""
    noise = ndimage.gaussian_filter(np.random.default_rng(7).normal(size=(3, 100, 90)), (0, 3, 3))
    probabilities = (np.exp(12 * noise) / np.exp(12 * noise).sum(axis=0)).astype(np.float32)
    chunk = 16
    if filtered:  # the median object size: half the objects go, and some kept ones are smaller than it in every chunk
        unfiltered = rule.objects(probabilities)
        sizes = np.bincount(unfiltered.ravel())[1:]
        rule = dataclasses.replace(rule, min_size=int(np.median(sizes)))
        pieces = np.bincount((unfiltered * 64 + np.add.outer(np.arange(100) // chunk * 8, np.arange(90) // chunk)).ravel())
        largest_piece = np.zeros(unfiltered.max() + 1, dtype=np.int64)
        np.maximum.at(largest_piece, np.nonzero(pieces)[0] // 64, pieces[np.nonzero(pieces)[0]])
        assert np.any((sizes >= rule.min_size) & (largest_piece[1:] < rule.min_size))
    root = tmp_path / "p.ome.zarr"
    create_prediction(root, n_classes=3, height=100, width=90, chunk=chunk, levels=1, dtype="float32", attrs={}, seeds=True)
    _write_probabilities(root, probabilities)
    expected = rule.objects(probabilities)
    (n,) = dask.compute(instance_labels(root, {}, rule)[0], scheduler="sync")
    labels = zarr.open_array(store=str(root), path=level_path(INSTANCES, 0))[:]
    assert n == expected.max() > 5 and set(np.unique(labels)) == set(range(n + 1))
    assert _same_partition(labels, expected)


def test_three_class_model_objects_follow_its_recipe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, depth=2, base_channels=4).eval()
    norm = Normalization("percentile", 1.0, 99.8).to_json()
    save_checkpoint(tmp_path / "m.pt", net, normalization=norm, recipe={"instances": {"grow": 3, "expand": 1}})
    store = _store(tmp_path / "d.zarr", {"a": _image(150, 100)})
    out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({"device": "cpu", "chunk": 64}))
    image = open_ome_image(out)
    assert image.attrs["instances"] == {
        "seeds": "class 1", "grow": 3, "expand": 1, "seed_threshold": 0.5, "foreground_threshold": 0.5, "min_size": 0
    }
    assert not (out / "seeds").exists()  # the scratch array is gone once complete
    probabilities = image.levels[0][:]
    assert _same_partition(image.label("instances").levels[0][:], InstanceRule(grow=3, expand=1).objects(probabilities))
    tuned = {"seed_threshold": 0.6, "foreground_threshold": 0.4, "min_size": 20}
    out = predict_image(
        tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", PredictOptions.from_settings({"device": "cpu", "chunk": 64}), tuned=tuned
    )  # complete with other thresholds: labelled again
    image = open_ome_image(out)
    assert image.attrs["instances"]["seed_threshold"] == 0.6
    assert _same_partition(image.label("instances").levels[0][:], InstanceRule(3, 1, 0.6, 0.4, 20).objects(probabilities))
    save_checkpoint(tmp_path / "old.pt", net, normalization=norm)  # 3 classes, no instance rule: refused
    with pytest.raises(InputError, match="instance recipe"):
        predict_image(tmp_path / "old.pt", store, "a", tmp_path / "b.ome.zarr", PredictOptions.from_settings({"device": "cpu"}))


# -- the command line --------------------------------------------------------------------------
def test_cli_writes_one_ome_zarr_per_validation_image(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt")
    store = _store(tmp_path / "d.zarr", {"a": _image(50, 60), "b": _image(70, 40, seed=1)}, val=["b"])
    parser = argparse.ArgumentParser()
    predict_command.register(parser.add_subparsers())
    out = tmp_path / "predictions" / "val"
    args = parser.parse_args(
        ["predict", str(tmp_path / "m.pt"), str(store), str(out), "--split", "val", "--settings", '{"tile": 20}']
    )
    args.func(args)
    assert sorted(p.name for p in out.iterdir()) == ["b.ome.zarr"]
    assert open_ome_image(out / "b.ome.zarr").levels[0].shape == (2, 70, 40)
    assert_valid_ngff(out / "b.ome.zarr")
    assert not out.with_name("val.partial").exists()


def test_cli_log_of_a_2048_slide_is_short_and_ends_at_100_percent(tmp_path: Path) -> None:
    """A predict job's log (stderr a file, not a terminal) stays readable: no bar redraws."""
    _model(tmp_path / "m.pt")
    tile = _image(256, 256)
    slide = dask.array.tile(dask.array.from_array(tile, chunks=(1, 256, 256)), (1, 8, 8))
    store = write_dataset(tmp_path / "slide.zarr", {"giant": slide}, chunk=512)
    out = tmp_path / "predictions"
    settings = {"device": "cpu", "chunk": 512, "precision": "fp32"}  # 16 chunks, progress lines every 30 s
    done = subprocess.run(
        [sys.executable, "-m", "unetflow", "predict", str(tmp_path / "m.pt"), str(store), str(out), "--settings", json.dumps(settings)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(Path(unetflow.__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert 0 < len(lines) < 30, done.stderr
    assert "\r" not in done.stderr  # no redrawn bar
    final = [line for line in lines if "predict giant: " in line and "tasks (100%)" in line]
    assert final, done.stderr
    assert open_ome_image(out / "giant.ome.zarr").attrs["complete"] is True


def test_killed_store_prediction_keeps_finished_images_for_the_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model(tmp_path / "m.pt")
    store = _store(tmp_path / "d.zarr", {"a": _image(50, 60), "b": _image(70, 40, seed=1)})
    options = PredictOptions.from_settings({"device": "cpu", "tile": 20})
    real_predict_chunk = predict_module.predict_chunk
    seen: list[str] = []

    def killed_in_b(job: predict_module.ChunkJob) -> None:
        seen.append(Path(job.out_store).name)
        if job.out_store.endswith("b.ome.zarr.partial"):
            raise KeyboardInterrupt("simulated kill")
        real_predict_chunk(job)

    monkeypatch.setattr(predict_module, "predict_chunk", killed_in_b)
    out = tmp_path / "predictions"
    with pytest.raises(KeyboardInterrupt):
        predict_module.predict_store(tmp_path / "m.pt", store, out, "all", options)
    assert not out.exists() and (tmp_path / "predictions.partial" / "a.ome.zarr").is_dir()
    seen.clear()
    monkeypatch.setattr(predict_module, "predict_chunk", lambda job: (seen.append(job.out_store), real_predict_chunk(job)))
    predict_module.predict_store(tmp_path / "m.pt", store, out, "all", options)
    assert all(s.endswith("b.ome.zarr.partial") for s in seen) and seen  # a was not predicted again
    assert sorted(p.name for p in out.iterdir()) == ["a.ome.zarr", "b.ome.zarr"]
    assert not (tmp_path / "predictions.partial").exists()


def test_options_fill_schema_defaults_and_reject_unknown_keys() -> None:
    options = PredictOptions.from_settings({"tile": 100})
    assert options.tile == 100 and options.scheduler == "threads"
    with pytest.raises(ConfigError, match="tile_size"):
        PredictOptions.from_settings({"tile_size": 100})
    assert dataclasses.replace(options, tta=True).tta
