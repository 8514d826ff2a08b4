"""Training on CPU with tiny U-Nets: loss, tiled validation, exact resume, divergence, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import zarr
from scipy import ndimage

import unetflow.validation as validation_module
from skimage.draw import disk
from unetflow.rescale import image_zoom
from unetflow.weighting import object_sizes
from unetflow.instances import remove_small
from unetflow.cli import main
from unetflow.config import stage_settings
from unetflow.ingest import make_split
from unetflow.devices import cpu_bf16_supported
from unetflow.metrics import evaluate_segmentation
from unetflow.model import load_model
from unetflow.schedule import lr_factor
from unetflow.store import ATTRS_KEY, TARGETS, WEIGHTS, StoreError, atomic_output, open_store, split_names, write_dataset
from unetflow.tiling import read_window
from unetflow.losses import soft_dice_loss, weighted_cross_entropy
from unetflow.train import Trainer, TrainingDiverged, checkpoints_dir, train_model

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


def _write_ones_weights(path: Path, labels: dict[str, np.ndarray], object_size: dict[str, Any] | None = None) -> None:
    """A weights store of all-ones maps and 2-class targets (label > 0, no gaps), laid out as the
    weights stage writes it."""
    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group, targets = root.create_group(WEIGHTS), root.create_group(TARGETS)
        for name, label in labels.items():
            group.create_array(name, data=np.ones(label.shape, np.float32))
            targets.create_array(name, data=(label > 0).astype(np.uint8))
        root.attrs[ATTRS_KEY] = {
            "kind": "weights", "class_weights": [1.0, 1.0], "w0": 0.0, "sigma": 5.0, "n_classes": 2,
            "target": {"mode": "binary", "gap": 0, "boundary_width": 1}, "object_size": object_size or {"median_area": 100.0},
            "instances": {"grow": 0, "expand": 0},
        }


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
    base = {
        "device": "cpu", "tile": 20, "batch_size": 2, "num_threads": 1, "lr": 0.01, "optimizer": "adam",
        "precision": "fp32",
    }
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


def test_soft_dice_counts_each_foreground_class_by_overlap_not_area() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, :4] = 1  # 32 pixels of class 1
    target[1, 0, 0] = 2  # 1 pixel of class 2
    sure = 30.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(sure, target).item() == pytest.approx(0.0, abs=1e-4)
    # missing the one class-2 pixel costs as much as missing all 32 class-1 pixels
    no_class2 = sure.clone()
    no_class2[1, :, 0, 0] = torch.tensor([30.0, 0.0, 0.0])
    no_class1 = sure.clone()
    no_class1[0, 0, :4], no_class1[0, 1, :4] = 30.0, 0.0
    assert soft_dice_loss(no_class2, target).item() == pytest.approx(0.5, abs=1e-3)
    assert soft_dice_loss(no_class1, target).item() == pytest.approx(0.5, abs=1e-3)
    # whereas the cross-entropy of the first is 32 times smaller
    ones = torch.ones(2, 8, 8)
    ratio = weighted_cross_entropy(no_class1, target, ones) / weighted_cross_entropy(no_class2, target, ones)
    assert ratio.item() == pytest.approx(32.0, rel=1e-3)


def test_validation_over_tiles_equals_whole_image_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    trainer = Trainer(data, weights, tmp_path / "w", _model_settings(depth=3), _train_settings(steps=1))
    trainer.model.eval()
    model, margin = trainer.model, trainer.model.margin
    losses, inter, union = [], 0, 0
    thresholds = np.round(np.arange(0.5, 0.951, 0.05), 2)
    area = trainer.recipe["object_size"]["median_area"]
    sizes = sorted({0, round(0.1 * area), round(0.2 * area)})
    f1s = np.zeros((3, len(sizes)))  # the select grid: foreground > 0.3, 0.5, 0.7 x min_size
    for (image, label, weight), truth in zip(trainer.val_arrays, trainer.val_truths):
        out = model.valid_output_size(40)
        window = read_window(image, -margin, -margin, out + 2 * margin, out + 2 * margin)
        with torch.no_grad():
            logits = model(torch.from_numpy(window)[None])[:, :, :40, :40]
        target = torch.from_numpy(label > 0)
        losses.append(weighted_cross_entropy(logits, target[None].long(), torch.from_numpy(weight)[None]).item())
        pred = logits[0].argmax(0) > 0
        inter, union = inter + int((pred & target).sum()), union + int((pred | target).sum())
        # the default select score: a 2-class model's objects are the 4-connected regions of
        # p(1) > t, small ones removed, at the best t and min_size of the grid
        for i, t in enumerate((0.3, 0.5, 0.7)):
            objects, _ = ndimage.label(torch.softmax(logits[0], 0)[1].numpy() > t)
            for j, size in enumerate(sizes):
                row = evaluate_segmentation(truth, remove_small(objects, size), thresholds)
                f1s[i, j] += np.mean([row[f"f1@{t:g}"] for t in thresholds]) / len(trainer.val_truths)
    monkeypatch.setattr(validation_module, "VAL_TILE", 8)  # many tiles ...
    monkeypatch.setattr(validation_module, "VAL_CHUNK", 24)  # ... in several regions per image
    scores = trainer.validate()
    assert scores.loss == pytest.approx(np.mean(losses), rel=1e-4)
    assert scores.fg_iou == pytest.approx(inter / union)
    assert trainer.selection.score == "f1_mean" and scores.objects == pytest.approx(f1s.max(), abs=1e-9)
    assert len(trainer.selection.candidates) == 3 and trainer.selection.sizes == tuple(sizes)
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


RESUME_TRAIN = {"steps": 6, "val_every": 2, "checkpoint_every": 3, "optimizer": "sgd", "schedule": {"warmup_steps": 2}}


needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_resume_gives_the_same_trajectory(tmp_path: Path, precision: str) -> None:
    data, weights = _stores(tmp_path, n_images=4, size=48)
    model, train = _model_settings(dropout=0.5), _train_settings(**RESUME_TRAIN, precision=precision)
    straight = Trainer(data, weights, tmp_path / "straight", model, train)
    straight.run(progress=False)
    # a run killed after its step-3 checkpoint, then resumed the way the rule does it
    Trainer(data, weights, checkpoints_dir(tmp_path / "model"), model, train).run(stop_at=3, progress=False)
    final = train_model(data, weights, tmp_path / "model", model, train, resume=True, progress=False)
    resumed = torch.load(final / "last.pt", weights_only=True)
    assert resumed["step"] == 6
    # the scheduled learning rates (warm-up, then poly decay) resume exactly too
    lrs = [r["lr"] for r in straight.history]
    assert len(set(lrs)) == 6 and [r["lr"] for r in resumed["history"]] == lrs
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


@needs_bf16
def test_bf16_training_keeps_fp32_weights_and_resumes_only_in_bf16(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    bf16 = Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(steps=2, precision="bf16"))
    assert bf16.precision.dtype == torch.bfloat16 and bf16.precision.channels_last
    fp32_start = {k: v.clone() for k, v in bf16.model.state_dict().items()}
    bf16.run(progress=False)
    checkpoint = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    assert checkpoint["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in checkpoint["model"].values())
    assert any(not torch.equal(v, fp32_start[k]) for k, v in checkpoint["model"].items())  # it did train
    fp32 = Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(steps=2, precision="fp32"))
    assert not fp32.resume() and fp32.step == 0
    again = Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(steps=2, precision="bf16"))
    assert again.resume() and again.step == 2


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
    untrained_iou = untrained.validate().fg_iou
    model_dir, curves = tmp_path / "run" / "model", tmp_path / "run" / "plots" / "curves.png"
    argv = ["train", str(data), str(weights), str(model_dir), "--settings", json.dumps(settings)]
    assert main([*argv, "--curves", str(curves)]) == 0
    assert torch.load(checkpoints_dir(model_dir) / "last.pt", weights_only=True)["step"] == 60  # kept to continue
    metrics = pd.read_csv(model_dir / "metrics.csv")
    assert len(metrics) == 60 and metrics["val_iou"].notna().sum() == 3
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["in_channels"] == 1 and meta["normalization"]["method"] == "zscore"
    group = open_store(data)  # zscore statistics are the train split's, not the validation images'
    train_pixels = np.concatenate([group[f"images/{n}"][:].ravel() for n in split_names(group, "train")])
    assert meta["normalization"]["mean"] == pytest.approx([train_pixels.mean()], rel=1e-5)
    assert meta["normalization"]["std"] == pytest.approx([train_pixels.std()], rel=1e-4)
    best = torch.load(model_dir / "best.pt", weights_only=True)
    assert best["select"] == "f1_mean" and best["val_score"] == pytest.approx(metrics["val_score"].max())
    assert untrained_iou < 0.5 < 0.8 < metrics["val_iou"].max()
    model = load_model(model_dir)
    assert model.config["base_channels"] == 8 and not model.training
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("select", ["f1_mean", "rand", "fg_iou"])
def test_best_checkpoint_is_the_best_select_score(tmp_path: Path, select: str) -> None:
    data, weights = _stores(tmp_path, n_images=4, size=48)
    settings = _train_settings(steps=9, val_every=3, select=select)
    final = train_model(data, weights, tmp_path / "model", _model_settings(), settings, progress=False)
    val = pd.read_csv(final / "metrics.csv").dropna(subset=["val_score"])
    assert len(val) == 3
    scores = val["val_score"].to_numpy()
    chosen = int(val["step"].iloc[int(np.argmin(scores) if select == "rand" else np.argmax(scores))])
    best = torch.load(final / "best.pt", weights_only=True)
    assert best["step"] == chosen and best["select"] == select
    meta = json.loads((final / "model.json").read_text())
    assert meta["select"] == select and meta["best_val_score"] == pytest.approx(scores.min() if select == "rand" else scores.max())
    if select == "fg_iou":
        assert np.array_equal(scores, val["val_iou"].to_numpy())
    else:
        assert ((0 <= scores) & (scores <= 1)).all()


def test_raising_steps_on_a_finished_run_continues_from_last_checkpoint(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    model, short = _model_settings(), _train_settings(steps=4, val_every=2, checkpoint_every=2)
    first = train_model(data, weights, tmp_path / "model", model, short, resume=True, progress=False)
    history = torch.load(first / "last.pt", weights_only=True)["history"]
    shutil.rmtree(first)  # what Snakemake does to a rule's output before rerunning it
    longer = _train_settings(steps=7, val_every=2, checkpoint_every=2)
    final = train_model(data, weights, tmp_path / "model", model, longer, resume=True, progress=False)
    resumed = torch.load(final / "last.pt", weights_only=True)
    assert resumed["step"] == 7 and resumed["history"][:4] == history
    assert resumed["schedule"]["total_steps"] == 7
    assert json.loads((final / "model.json").read_text())["trained_steps"] == 7
    assert len(pd.read_csv(final / "metrics.csv")) == 7
    # fewer steps than the checkpoint holds cannot continue it: a fresh run
    shorter = Trainer(data, weights, checkpoints_dir(final), model, _train_settings(steps=5))
    assert not shorter.resume() and shorter.step == 0


def test_minutes_budget_finishes_the_run_and_more_minutes_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, weights = _stores(tmp_path, n_images=3, size=40)
    now = [0.0]
    step = Trainer.train_step

    def thirty_second_step(self: Trainer, batch: Any) -> float:
        now[0] += 30.0
        return step(self, batch)

    monkeypatch.setattr(Trainer, "clock", staticmethod(lambda: now[0]))
    monkeypatch.setattr(Trainer, "train_step", thirty_second_step)
    model = _model_settings()
    budget = _train_settings(steps=20, minutes=1.0, val_every=10, checkpoint_every=10)
    final = train_model(data, weights, tmp_path / "model", model, budget, resume=True, progress=False)
    last = torch.load(final / "last.pt", weights_only=True)
    assert last["step"] == 2 and last["elapsed_s"] == 60.0
    assert last["history"][-1]["val_iou"] is not None  # validated where it stopped
    assert (final / "best.pt").is_file() and json.loads((final / "model.json").read_text())["trained_steps"] == 2
    # the lr schedule runs over steps, not minutes: still warming up (20 capped at steps - 1) when stopped
    assert last["history"][-1]["lr"] == pytest.approx(0.01 * 2 / 20)

    shutil.rmtree(final)
    more = _train_settings(steps=20, minutes=2.0, val_every=10, checkpoint_every=10)
    final = train_model(data, weights, tmp_path / "model", model, more, resume=True, progress=False)
    resumed = torch.load(final / "last.pt", weights_only=True)
    assert resumed["step"] == 4 and resumed["history"][:2] == last["history"]


@pytest.mark.parametrize("name", ["poly", "cosine", "constant"])
def test_schedule_warms_up_then_decays_towards_zero(name: str) -> None:
    settings = {"name": name, "warmup_steps": 3}
    factors = [lr_factor(step, 10, settings) for step in range(1, 11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    if name == "constant":
        assert factors[3:] == [1.0] * 7
    else:
        assert all(a > b for a, b in zip(factors[3:], factors[4:])) and 0 < factors[-1] < 0.2
    assert lr_factor(1, 10, {"name": name, "warmup_steps": 0}) == 1.0


def test_training_sees_only_train_images(tmp_path: Path) -> None:
    """Every sampled tile comes from a train image; val images only validate; test images never load."""
    rng = np.random.default_rng(0)
    names = [f"im{i}" for i in range(6)]
    # image i sits at intensity 10 i, so a tile's mean tells which image it came from
    images = {nm: (10.0 * i + rng.normal(0, 0.1, (1, 40, 40))).astype(np.float32) for i, nm in enumerate(names)}
    labels = {nm: (rng.random((40, 40)) > 0.5).astype(np.int32) for nm in names}
    split = make_split(names, {"val_fraction": 0.2, "test_fraction": 0.4, "seed": 0, "val_indices": None,
                               "test_indices": None})
    data = write_dataset(tmp_path / "data.zarr", images, labels, split=split, chunk=64)
    _write_ones_weights(tmp_path / "weights.zarr", labels)
    model = _model_settings(normalization={"method": "zscore"})  # one scale for all: intensities stay comparable
    trainer = Trainer(data, tmp_path / "weights.zarr", tmp_path / "w", model, _train_settings(steps=1))
    std, mean = trainer.normalization.std[0], trainer.normalization.mean[0]
    seen = set()
    for _ in range(30):
        tiles = trainer.sampler.sample(4)[0].numpy() * std + mean
        seen |= {names[round(m / 10.0)] for m in tiles.mean(axis=(1, 2, 3))}
    assert seen == set(split["train"]) and len(split["train"]) == 3
    val_means = sorted(round(float(np.mean(im)) * std + mean) for im, _, _ in trainer.val_arrays)
    assert val_means == sorted(10 * names.index(nm) for nm in split["val"])


def test_evaluate_only_dataset_is_refused_by_training(tmp_path: Path) -> None:
    images = {"a": np.ones((1, 40, 40), np.float32)}
    labels = {"a": np.ones((40, 40), np.int32)}
    split = make_split(["a"], {"val_fraction": 0.2, "test_fraction": 1.0, "seed": 0})
    data = write_dataset(tmp_path / "data.zarr", images, labels, split=split, chunk=64)
    _write_ones_weights(tmp_path / "weights.zarr", labels)
    with pytest.raises(StoreError, match="no training images.*evaluate-only"):
        Trainer(data, tmp_path / "weights.zarr", tmp_path / "w", _model_settings(), _train_settings(steps=1))


def test_rescale_trains_each_image_at_the_typical_object_size(tmp_path: Path) -> None:
    """train.rescale: images of small and of large discs are resampled towards the typical
    diameter the weights stage recorded, validation predicts at the val images' zooms, and the
    recipe travels with the checkpoint; weight maps without that size are refused by name."""
    rng = np.random.default_rng(1)
    images, labels = {}, {}
    for i, radius in enumerate((3, 3, 12, 12, 3, 12)):
        label = np.zeros((96, 96), np.int32)
        for j, (cy, cx) in enumerate(((24, 24), (24, 72), (72, 24), (72, 72))):
            label[disk((cy, cx), radius, shape=label.shape)] = j + 1
        images[f"im{i}"] = ((label > 0) + rng.normal(0, 0.2, label.shape)).astype(np.float32)[None]
        labels[f"im{i}"] = label
    names = list(images)
    data = write_dataset(tmp_path / "data.zarr", images, labels, split={"train": names[:4], "val": names[4:]}, chunk=64)
    train = _train_settings(steps=2, val_every=2, rescale=True)
    _write_ones_weights(tmp_path / "old.zarr", labels)
    with pytest.raises(StoreError, match="run the weights stage again"):
        Trainer(data, tmp_path / "old.zarr", tmp_path / "x", _model_settings(depth=2), train)
    sizes = object_sizes(labels, names[:4])
    _write_ones_weights(tmp_path / "weights.zarr", labels, sizes)
    trainer = Trainer(data, tmp_path / "weights.zarr", tmp_path / "w", _model_settings(depth=2), train)
    diameter = sizes["typical_diameter"]
    expected = [image_zoom(labels[name], diameter) for name in names[:4]]
    assert expected[0] > 1 > expected[2]  # small discs are enlarged, large ones shrunk
    # the sampler draws from the resampled images (out of the training images' own 96 px)
    assert [image.shape[-1] for image, _, _ in trainer.sampler.arrays] == [round(96 * z) for z in expected]
    assert trainer.val_zooms == [image_zoom(labels[name], diameter) for name in names[4:]]
    trainer.run()
    best = torch.load(tmp_path / "w" / "best.pt", weights_only=True)
    assert best["recipe"]["rescale"] == {"diameter": diameter}
