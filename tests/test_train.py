"""Training on CPU with tiny U-Nets: loss, tiled validation, exact resume, divergence, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

import unetflow.train as train_module
from unetflow.cli import main
from unetflow.config import stage_settings
from unetflow.model import load_model
from unetflow.store import ATTRS_KEY, WEIGHTS, atomic_output, open_store, split_names, write_dataset
from unetflow.tiling import read_window
from unetflow.train import Trainer, TrainingDiverged, train_model, weighted_cross_entropy

TINY_MODEL = {"depth": 2, "base_channels": 4}


def _blobs(rng: np.random.Generator, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy (1, size, size) image of bright discs and its instance labels."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), np.int32)
    for i in range(1, count + 1):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 9)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    image = (label > 0).astype(np.float32) + rng.normal(0, 0.4, label.shape).astype(np.float32)
    return image[None], label


def _write_ones_weights(path: Path, labels: dict[str, np.ndarray]) -> None:
    """A weights store of all-ones maps, laid out as the weights stage writes it."""
    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group = root.create_group(WEIGHTS)
        for name, label in labels.items():
            group.create_array(name, data=np.ones(label.shape, np.float32))
        root.attrs[ATTRS_KEY] = {"kind": "weights", "class_weights": [1.0, 1.0], "w0": 0.0, "sigma": 5.0}


def _stores(tmp_path: Path, n_images: int = 6, size: int = 64, weights: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for i in range(n_images):
        images[f"im{i}"], labels[f"im{i}"] = _blobs(rng, size, 6)
    names = list(images)
    split = {"train": names[:-2], "val": names[-2:]}
    data = write_dataset(tmp_path / "data.zarr", images, labels, split=split, chunk=64)
    if weights:
        _write_ones_weights(tmp_path / "weights.zarr", labels)
    return data, tmp_path / "weights.zarr"


def _train_settings(**overrides: Any) -> dict[str, Any]:
    base = {"device": "cpu", "tile": 20, "batch_size": 2, "num_threads": 1, "lr": 0.01, "optimizer": "adam"}
    return stage_settings("train", json.dumps({**base, **overrides}))


def _model_settings(**overrides: Any) -> dict[str, Any]:
    return stage_settings("model", json.dumps({**TINY_MODEL, **overrides}))


def test_weighted_cross_entropy_matches_hand_computation() -> None:
    # pixel a: p(class 1) = 3/4, target 1, weight 2; pixel b: p(class 1) = 1/4, target 1, weight 0.5;
    # pixel c: p(class 0) = 1/2, target 0, weight 1
    log3 = float(np.log(3.0))
    logits = torch.tensor([[[[0.0, log3, 0.0]], [[log3, 0.0, 0.0]]]])  # (N=1, C=2, Y=1, X=3)
    target = torch.tensor([[[1, 1, 0]]])
    weight = torch.tensor([[[2.0, 0.5, 1.0]]])
    expected = (2 * -np.log(3 / 4) + 0.5 * -np.log(1 / 4) + 1 * -np.log(1 / 2)) / 3
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_validation_over_tiles_equals_whole_image_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    trainer = Trainer(data, weights, tmp_path / "w", _model_settings(depth=3), _train_settings(steps=1))
    trainer.model.eval()
    model, margin = trainer.model, trainer.model.margin
    losses, inter, union = [], 0, 0
    for image, label, weight in trainer.val_arrays:
        out = model.valid_output_size(40)
        window = read_window(image, -margin, -margin, out + 2 * margin, out + 2 * margin)
        with torch.no_grad():
            logits = model(torch.from_numpy(window)[None])[:, :, :40, :40]
        target = torch.from_numpy(label > 0)
        losses.append(weighted_cross_entropy(logits, target[None].long(), torch.from_numpy(weight)[None]).item())
        pred = logits[0].argmax(0) > 0
        inter, union = inter + int((pred & target).sum()), union + int((pred | target).sum())
    monkeypatch.setattr(train_module, "VAL_TILE", 8)  # many tiles ...
    monkeypatch.setattr(train_module, "VAL_CHUNK", 24)  # ... in several regions per image
    loss, iou = trainer.validate()
    assert loss == pytest.approx(np.mean(losses), rel=1e-4)
    assert iou == pytest.approx(inter / union)
    assert trainer.model.training


def test_sampler_is_deterministic_and_mirrors_at_borders(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    # zscore: the contrast threshold below is in units of the images' standard deviation
    model = _model_settings(normalization={"method": "zscore"})
    train = _train_settings(steps=2, augment={"elastic": False, "rotate_degrees": 0})
    first = Trainer(data, weights, tmp_path / "a", model, train)
    second = Trainer(data, weights, tmp_path / "b", model, train)
    batch_a, batch_b = first.sampler.sample(8), second.sampler.sample(8)
    assert all(torch.equal(x, y) for x, y in zip(batch_a, batch_b))
    image, label, weight = batch_a
    margin = first.model.margin
    assert image.shape == (8, 1, first.in_size, first.in_size) and label.shape == (8, first.out_size, first.out_size)
    assert set(label.unique().tolist()) <= {0, 1} and torch.equal(weight, torch.ones_like(weight))
    # the label window is the image window's centre: the discs are bright in the image
    inner = image[:, 0, margin:-margin, margin:-margin]
    assert inner[label == 1].mean() > inner[label == 0].mean() + 0.5


def test_normalisation_uses_train_pixels_only_and_each_images_own_percentiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pairs = {f"im{i}": _blobs(rng, 40, 4) for i in range(3)}
    labels = {name: label for name, (_, label) in pairs.items()}
    split = {"train": ["im0", "im1"], "val": ["im2"]}
    _write_ones_weights(tmp_path / "weights.zarr", labels)
    recipes, val_images = {}, {}
    for case, val_gain in (("plain", 1.0), ("huge", 1e6)):  # a validation image of huge values ...
        images = {name: image * (val_gain if name == "im2" else 1.0) for name, (image, _) in pairs.items()}
        data = write_dataset(tmp_path / f"{case}.zarr", images, labels, split=split, chunk=64)
        for method in ("zscore", "percentile"):
            trainer = Trainer(data, tmp_path / "weights.zarr", tmp_path / "w", _model_settings(
                normalization={"method": method}), _train_settings())
            recipes[case, method] = trainer.normalization
            val_images[case, method] = trainer.val_arrays[0][0]
    assert recipes["plain", "zscore"] == recipes["huge", "zscore"]  # ... does not move the zscore statistics
    train_pixels = np.concatenate([pairs[n][0].ravel() for n in split["train"]])
    assert recipes["plain", "zscore"].mean == pytest.approx((train_pixels.mean(),), rel=1e-5)
    # percentile: every image is scaled by its own percentiles, so the gain makes no difference
    np.testing.assert_allclose(val_images["huge", "percentile"], val_images["plain", "percentile"], atol=1e-5)
    low, high = np.percentile(pairs["im2"][0].astype(np.float64), [1.0, 99.8])
    np.testing.assert_allclose(val_images["plain", "percentile"], (pairs["im2"][0] - low) / (high - low), atol=1e-5)


RESUME_TRAIN = {"steps": 6, "val_every": 2, "checkpoint_every": 3, "optimizer": "sgd"}


def test_resume_gives_the_same_trajectory(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=4, size=48)
    model, train = _model_settings(dropout=0.5), _train_settings(**RESUME_TRAIN)
    straight = Trainer(data, weights, tmp_path / "straight", model, train)
    straight.run(progress=False)
    # a run killed after its step-3 checkpoint, then resumed the way the rule does it
    Trainer(data, weights, tmp_path / "model.partial", model, train).run(stop_at=3, progress=False)
    final = train_model(data, weights, tmp_path / "model", model, train, resume=True, progress=False)
    assert not (tmp_path / "model.partial").exists()
    resumed = torch.load(final / "last.pt", weights_only=True)
    assert resumed["step"] == 6
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in straight.history]
    assert [r["val_iou"] for r in resumed["history"]] == [r["val_iou"] for r in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed["model"][key]), key
    momentum = straight.optimizer.state_dict()["state"]
    assert all(torch.equal(momentum[k]["momentum_buffer"], resumed["optimizer"]["state"][k]["momentum_buffer"])
               for k in momentum)
    assert len(pd.read_csv(final / "metrics.csv")) == 6


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    trainer = Trainer(data, weights, tmp_path / "work", _model_settings(), _train_settings(steps=5, checkpoint_every=2))
    trainer.run(stop_at=2, progress=False)
    for _, _, weight in trainer.sampler.arrays:
        weight[...] = np.nan
    with pytest.raises(TrainingDiverged, match=r"became nan at step 3; the last good checkpoint .*last.pt is kept"):
        trainer.run(progress=False)
    kept = torch.load(tmp_path / "work" / "last.pt", weights_only=True)
    assert kept["step"] == 2 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_resume_with_other_settings_starts_afresh(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(steps=2)).run(progress=False)
    other = Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(steps=2, lr=0.02))
    assert not other.resume() and other.step == 0


def test_settings_errors_exit_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    model_dir = tmp_path / "model"
    assert main(["train", str(data), str(weights), str(model_dir), "--settings", '{"predict": {}}']) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert main(["train", str(data), str(weights), str(model_dir), "--settings", '{"train": {"lr": -1}}']) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["train", str(data), str(tmp_path / "nope.zarr"), str(model_dir)]) == 2
    assert "nope.zarr" in capsys.readouterr().err and not model_dir.exists()


def test_short_training_beats_an_untrained_net(tmp_path: Path) -> None:
    data, _ = _stores(tmp_path, weights=False)
    weights = tmp_path / "weights.zarr"
    assert main(["weights", str(data), str(weights)]) == 0
    # zscore: the IoU bar below was set for it (per-image percentiles squeeze these noisy blobs'
    # contrast ~3x, which 60 steps do not fully make up for)
    settings = {"model": TINY_MODEL | {"base_channels": 8, "normalization": {"method": "zscore"}},
                "train": {"device": "cpu", "tile": 24, "batch_size": 4, "steps": 60, "val_every": 20,
                          "num_threads": 1, "optimizer": "adam", "lr": 0.01}}
    untrained = Trainer(data, weights, tmp_path / "untrained", _model_settings(**settings["model"]),
                        stage_settings("train", json.dumps(settings["train"])))
    _, untrained_iou = untrained.validate()
    model_dir, curves = tmp_path / "run" / "model", tmp_path / "run" / "plots" / "curves.png"
    argv = ["train", str(data), str(weights), str(model_dir), "--settings", json.dumps(settings)]
    assert main([*argv, "--curves", str(curves)]) == 0
    assert not model_dir.with_name("model.partial").exists()
    metrics = pd.read_csv(model_dir / "metrics.csv")
    assert len(metrics) == 60 and metrics["val_iou"].notna().sum() == 3
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["in_channels"] == 1 and meta["normalization"]["method"] == "zscore"
    group = open_store(data)  # zscore statistics are the train split's, not the validation images'
    train_pixels = np.concatenate([group[f"images/{n}"][:].ravel() for n in split_names(group, "train")])
    assert meta["normalization"]["mean"] == pytest.approx([train_pixels.mean()], rel=1e-5)
    assert meta["normalization"]["std"] == pytest.approx([train_pixels.std()], rel=1e-4)
    best = torch.load(model_dir / "best.pt", weights_only=True)
    assert best["val_iou"] == pytest.approx(metrics["val_iou"].max())
    assert untrained_iou < 0.5 < 0.8 < best["val_iou"]
    model = load_model(model_dir)
    assert model.config["base_channels"] == 8 and not model.training
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
