"""Regression tests of issue 12: input and stores that once gave silent garbage or a run that
looked finished (stray label values, leftovers of killed runs, non-finite pixels, damaged
chunks). The workflow-level probes (odd results paths, an unactivated venv) are in
test_workflow.py, undefined metrics in test_metrics.py and test_evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from unetflow.cli import main
from unetflow.ingest import ingest_slide
from unetflow.io.errors import InputError
from unetflow.io.labels import to_instances


def five_cells() -> np.ndarray:
    """A 0/255 mask of five separate square cells."""
    mask = np.zeros((40, 60), np.uint8)
    for x in (2, 14, 26, 38, 50):
        mask[5:15, x : x + 8] = 255
    return mask


def test_auto_labels_refuse_a_binary_mask_with_stray_values(tmp_path):
    mask = five_cells()
    mask[30:33, :] = 128  # a stray band
    mask[38, 58] = 1  # and one stray pixel
    with pytest.raises(InputError, match=r"labels: auto cannot tell.*255 in 5 regions") as caught:
        to_instances(mask, "auto", None, tmp_path / "mask.png")
    assert str(tmp_path / "mask.png") in str(caught.value) and "128: 180 px" in str(caught.value)
    assert to_instances(mask, "binary", 255, "mask.png").max() == 5  # the explicit choice works


def test_auto_labels_rule():
    assert to_instances(five_cells(), "auto", None, "m").max() == 5  # two values: binary
    instances = np.zeros((20, 20), np.int32)
    instances[2:6, 2:6], instances[8:12, 2:6], instances[2:6, 10:19] = 3, 7, 9
    instances[5, 6] = 3  # corner-touching pixels still belong to one object
    instances[6, 7] = 3
    assert np.array_equal(to_instances(instances, "auto", None, "m"), instances)
    split = instances.copy()
    split[15:18, 15:18] = 7  # id 7 now names two separate regions
    with pytest.raises(InputError, match="7 in 2 regions"):
        to_instances(split, "auto", None, "m")
    assert np.array_equal(to_instances(split, "instance", None, "m"), split)


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "slide.zarr"
    stale = [tmp_path / "..slide.zarr.raw.zarr.tmp-0badf00d", tmp_path / ".slide.zarr.tmp-12345678"]
    for path in stale:
        (path / "c").mkdir(parents=True)
        (path / "c" / "0").write_bytes(b"\0" * 4096)
    unrelated = tmp_path / ".other.zarr.tmp-12345678"
    unrelated.mkdir()
    ingest_slide({"name": "slide", "format": "synthetic", "size": 128, "chunk": 64, "seed": 0}, 1, "luminance", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, out.name]
