"""Every stage's command in a row on tiny synthetic data: the result must beat chance clearly.

An untrained (or broken) net labels nearly everything as one class: one giant object or none,
so object F1 at IoU 0.5 is ~0 and the adapted Rand error is high (~0.85 here). A working
pipeline separates the touching cells.
"""

from __future__ import annotations

import json

import pytest

from unetflow.cli import main


@pytest.mark.slow
def test_all_stages_beat_chance(tmp_path):
    data, weights, model = tmp_path / "data.zarr", tmp_path / "weights.zarr", tmp_path / "model"
    predictions, evaluation = tmp_path / "pred", tmp_path / "eval"
    dataset = {"synthetic": {"n_images": 4, "size": 128, "seed": 3}, "chunk": 64, "split": {"val_fraction": 0.25}}
    train = {
        "model": {"depth": 2, "base_channels": 8},
        "train": {"device": "cpu", "optimizer": "adam", "lr": 0.003, "steps": 150, "val_every": 75,
                  "checkpoint_every": 75, "batch_size": 4, "tile": 64},
    }
    assert main(["ingest", "dataset", str(data), "--settings", json.dumps(dataset)]) == 0
    assert main(["weights", str(data), str(weights), "--settings", "{}"]) == 0
    assert main(["train", str(data), str(weights), str(model), "--settings", json.dumps(train),
                 "--curves", str(tmp_path / "curves.png")]) == 0
    assert main(["predict", str(model), str(data), str(predictions), "--split", "val",
                 "--settings", json.dumps({"device": "cpu", "tile": 64, "chunk": 128})]) == 0
    assert main(["evaluate", str(data), str(predictions), str(evaluation), "--settings", "{}"]) == 0
    summary = json.loads((evaluation / "summary.json").read_text())
    print({k: summary[k] for k in ("pixel_error", "fg_iou", "rand_error", "mean_ap")}, summary["curves"]["f1"][0])
    assert summary["fg_iou"] > 0.8
    assert summary["rand_error"] < 0.4
    assert summary["curves"]["f1"][0] > 0.4  # object F1 at IoU > 0.5
