"""Written chunks kept in memory (``unetflow.io.chunk_memo``): the same values as the store, bounded,
never outliving the run, and predictions identical with and without it."""

from __future__ import annotations

import collections
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

import unetflow.io.chunk_memo as chunk_memo
from unetflow.instances import InstanceRule
import unetflow.io.chunked_instances as chunked_instances
from unetflow.io.chunk_memo import KEPT_SHARE, keep, read_region, remembering, take, write_chunk
from unetflow.io.chunked_instances import instance_labels
from unetflow.io.ome_zarr import INSTANCES, SEMANTIC, create_prediction, level_path, open_ome_image, pyramid
from unetflow.model import UNet, save_checkpoint
from unetflow.normalize import Normalization
from unetflow.predict import PredictOptions, predict_image
from unetflow.store import write_dataset
from unetflow.tiling import Box, ChunkGrid

CHUNK = 16


def _array(tmp_path: Path, dtype: str = "float32") -> str:
    root = tmp_path / "a.zarr"
    zarr.open_group(str(root), mode="w").create_array("x", shape=(2, 40, 37), chunks=(2, CHUNK, CHUNK), dtype=dtype)
    return str(root)


def _stored(root: str) -> np.ndarray:
    return zarr.open_array(store=root, path="x", mode="r")[:]


def _fill(root: str, seed: int = 0) -> np.ndarray:
    """Every chunk written through ``write_chunk`` (float64 data, cast by the writer); what was meant."""
    data = np.random.default_rng(seed).normal(size=(2, 40, 37))
    for _, box in ChunkGrid(40, 37, CHUNK):
        write_chunk(root, "x", box, data[(..., *box.slices)])
    return data


def test_kept_chunks_are_the_stored_values_and_regions_assemble_across_chunks(tmp_path: Path) -> None:
    root = _array(tmp_path)
    with remembering(root) as memo:
        _fill(root)
        assert len(memo._chunks) == 9 and memo.nbytes == _stored(root).nbytes  # all 3 x 3 chunks kept
        stored = _stored(root)  # float32: the cast values, as zarr returns them
        one = read_region(root, "x", Box(16, 32, 16, 5))  # an (clipped) edge chunk: the kept array itself
        assert not one.flags.writeable
        np.testing.assert_array_equal(one, stored[:, 16:32, 32:37])
        for box in (Box(3, 5, 30, 31), Box(0, 0, 40, 37), Box(15, 15, 2, 2)):
            np.testing.assert_array_equal(read_region(root, "x", box), stored[(..., *box.slices)])
        write_chunk(root, "x", Box(0, 0, CHUNK, CHUNK), np.zeros((2, CHUNK, CHUNK)))  # rewritten: the new values
        np.testing.assert_array_equal(read_region(root, "x", Box(0, 0, 20, 20)), _stored(root)[:, :20, :20])
        assert not _stored(root)[:, :CHUNK, :CHUNK].any()
    assert read_region(root, "x", Box(0, 0, CHUNK, CHUNK)).flags.writeable  # outside the block: the store


def test_memo_stays_within_its_budget_and_misses_read_the_store(tmp_path: Path) -> None:
    root = _array(tmp_path)
    chunk_bytes = 2 * CHUNK * CHUNK * 4
    with remembering(root, budget=2 * chunk_bytes) as memo:
        _fill(root)
        assert 0 < memo.nbytes <= 2 * chunk_bytes and len(memo._chunks) < 9
        assert ("x", Box(32, 32, 8, 5)) in memo._chunks and ("x", Box(0, 0, CHUNK, CHUNK)) not in memo._chunks  # last in, first out
        np.testing.assert_array_equal(read_region(root, "x", Box(0, 0, 40, 37)), _stored(root))


def test_a_write_that_is_not_one_stored_chunk_is_not_kept_and_drops_what_it_covers(tmp_path: Path) -> None:
    root = _array(tmp_path)
    with remembering(root) as memo:
        _fill(root)
        write_chunk(root, "x", Box(8, 8, 16, 16), np.full((2, 16, 16), 7.0))  # straddles 4 chunks
        assert len(memo._chunks) == 5
        np.testing.assert_array_equal(read_region(root, "x", Box(0, 0, 40, 37)), _stored(root))
        assert read_region(root, "x", Box(8, 8, 16, 16)).min() == 7.0


def test_a_recreated_store_never_sees_chunks_of_an_earlier_run(tmp_path: Path) -> None:
    root = _array(tmp_path)
    with remembering(root):
        _fill(root, seed=1)
    root = _array(tmp_path)  # the same path, written again by a later run
    with remembering(root):
        np.testing.assert_array_equal(read_region(root, "x", Box(0, 0, 40, 37)), 0)
        expected = _fill(root, seed=2).astype(np.float32)
        np.testing.assert_array_equal(read_region(root, "x", Box(0, 0, 40, 37)), expected)


def test_kept_results_are_taken_once_and_stay_within_their_share(tmp_path: Path) -> None:
    root = _array(tmp_path)
    data = np.arange(CHUNK * CHUNK, dtype=np.int32).reshape(CHUNK, CHUNK)
    boxes = [Box(0, 0, CHUNK, CHUNK), Box(0, CHUNK, CHUNK, CHUNK), Box(CHUNK, 0, CHUNK, CHUNK)]
    keep(root, "local", boxes[0], data)  # outside remembering: nothing is kept
    assert take(root, "local", boxes[0]) is None
    with remembering(root, budget=12000) as memo:  # the 9 chunks (11840 bytes); 3000 for kept results
        assert (12000 // KEPT_SHARE) // data.nbytes == 2
        for box in boxes:
            keep(root, "local", box, data + box.x0)
        assert memo.kept_nbytes == 2 * data.nbytes and memo.nbytes == 0  # the third had no room; chunks untouched
        _fill(root)
        assert memo.nbytes == _stored(root).nbytes  # chunks keep their whole budget
        first = take(root, "local", boxes[1])
        assert first is not None and not first.flags.writeable
        np.testing.assert_array_equal(first, data + CHUNK)
        assert take(root, "local", boxes[1]) is None and take(root, "local", boxes[2]) is None
        assert memo.kept_nbytes == data.nbytes


def test_relabelling_reuses_the_labels_of_each_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk is labelled once when the memo has room (twice, label and relabel, when not)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(2, 70, 60)), (0, 3, 3))
    probabilities = (np.exp(12 * noise) / np.exp(12 * noise).sum(axis=0)).astype(np.float32)
    calls = []
    real = chunked_instances._local_labels
    monkeypatch.setattr(chunked_instances, "_local_labels", lambda *a: calls.append(a[1]) or real(*a))
    results = []
    for budget in (None, 0):
        calls.clear()
        root = tmp_path / f"p{budget}.ome.zarr"
        create_prediction(root, n_classes=2, height=70, width=60, chunk=CHUNK, levels=1, dtype="float32", attrs={})
        with remembering(root, budget) as memo:
            for _, box in ChunkGrid(70, 60, CHUNK):
                write_chunk(str(root), level_path("", 0), box, probabilities[(..., *box.slices)])
            counted, _ = instance_labels(root, {})
            n = dask.compute(counted, scheduler="threads", num_workers=2)[0]
            assert memo.kept_nbytes == 0  # every kept result was taken
        labelled = collections.Counter(calls)
        assert set(labelled) == {box for _, box in ChunkGrid(70, 60, CHUNK)}
        assert set(labelled.values()) == {1 if budget is None else 2}
        results.append((n, open_ome_image(root).label("instances").levels[0][:]))
    assert results[0][0] == results[1][0] > 3
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_chunked_objects_and_pyramids_are_the_same_with_any_budget(tmp_path: Path) -> None:
    """Instance labels (grown, widened, size-filtered) and pyramids computed with every chunk kept,
    with a memo too small for a pyramid chunk's four parents, and with none: identical stores."""
    noise = ndimage.gaussian_filter(np.random.default_rng(7).normal(size=(3, 100, 90)), (0, 3, 3))
    probabilities = (np.exp(12 * noise) / np.exp(12 * noise).sum(axis=0)).astype(np.float32)
    rule = InstanceRule(grow=4, expand=1, seed_threshold=0.6, foreground_threshold=0.4, min_size=30)
    results = []
    for budget in (None, 3 * CHUNK * CHUNK * 4, 0):
        root = tmp_path / f"p{budget}.ome.zarr"
        create_prediction(root, n_classes=3, height=100, width=90, chunk=CHUNK, levels=3, dtype="float32", attrs={}, seeds=True)
        with remembering(root, budget) as memo:
            for _, box in ChunkGrid(100, 90, CHUNK):  # as predict_chunk writes them
                write_chunk(str(root), level_path("", 0), box, probabilities[(..., *box.slices)])
                write_chunk(str(root), level_path(SEMANTIC, 0), box, probabilities[(..., *box.slices)].argmax(axis=0))
            counted, relabelled = instance_labels(root, {}, rule)
            tasks = [counted, *pyramid(root, "", {}), *pyramid(root, SEMANTIC, {}), *pyramid(root, INSTANCES, relabelled)]
            n, *_ = dask.compute(*tasks, scheduler="threads", num_workers=2)
            assert (budget == 0) == (memo.nbytes == 0)
        image = open_ome_image(root)
        arrays = [*image.levels, *image.label("semantic").levels, *image.label("instances").levels]
        results.append((n, [a[:] for a in arrays]))
    (n, reference), *others = results
    assert n > 5 and np.unique(reference[6]).size == n + 1 and reference[-1].any()
    for n_other, arrays in others:
        assert n_other == n
        for a, b in zip(reference, arrays):
            np.testing.assert_array_equal(a, b)


def test_prediction_is_the_same_when_nothing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=3, depth=2, base_channels=4).eval()
    norm = Normalization("zscore", mean=(0.0,), std=(1.0,)).to_json()  # pixels as stored
    save_checkpoint(tmp_path / "m.pt", net, normalization=norm, recipe={"instances": {"grow": 3, "expand": 1}})
    image = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(1, 150, 100)), (0, 2, 2))
    image = (image / image.std()).astype(np.float32)
    store = write_dataset(tmp_path / "d.zarr", {"a": image}, split={"train": ["a"], "val": []}, chunk=64)
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "precision": "fp32", "pyramid_levels": 3})
    outputs = []
    for budget in (chunk_memo.MEMO_BYTES, 0):
        monkeypatch.setattr(chunk_memo, "MEMO_BYTES", budget)
        out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / f"a{budget}.ome.zarr", options, tuned={
            "seed_threshold": 0.32, "foreground_threshold": 0.5, "min_size": 10
        })
        result = open_ome_image(out)
        outputs.append([a[:] for a in (*result.levels, *result.label("semantic").levels, *result.label("instances").levels)])
    assert outputs[0][6].max() > 100  # many objects (and more before min_size removed some)
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)
