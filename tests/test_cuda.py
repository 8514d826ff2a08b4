"""The CUDA paths: mixed-precision training steps, augmentation on the device, prediction on the GPU.

Skipped without a CUDA GPU (``benchmarks/gpu.sh`` runs them where there is one: ``pytest -m cuda``).
Tolerances allow for TF32 convolutions, which PyTorch's cuDNN uses by default on Ampere and later.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from test_train import _model_settings, _stores, _train_settings
from unetflow.augment import Augmenter, AugmentSettings
from unetflow.config import stage_settings
from unetflow.devices import resolve_precision
from unetflow.io.ome_zarr import PROBABILITIES, SEMANTIC, level_path
from unetflow.inference import TilePredictor
from unetflow.model import UNet, save_checkpoint
from unetflow.normalize import Normalization
from unetflow.predict import PredictOptions, predict_image
from unetflow.store import write_dataset
from unetflow.train import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
TOLERANCE = 2e-3  # TF32 convolutions: about 10 mantissa bits


def test_amp_training_steps_run_on_the_gpu_and_learn(tmp_path: Path) -> None:
    data, weights = _stores(tmp_path)
    trainer = Trainer(data, weights, tmp_path / "w", _model_settings(), _train_settings(device="cuda", precision="auto", steps=5))
    assert trainer.precision.dtype in (torch.bfloat16, torch.float16)
    assert trainer.scaler.is_enabled() == (trainer.precision.dtype == torch.float16)
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = trainer.next_batch()
    assert all(t.device.type == "cuda" for t in batch)
    losses = [trainer.train_step(batch) for _ in range(5)]  # the same batch: the loss must fall
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_augmentation_runs_on_the_device_and_is_seeded() -> None:
    settings = AugmentSettings.from_config(stage_settings("train", "{}")["augment"])
    in_size, out_size = 60, 20

    def augment(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        augmenter = Augmenter(settings, in_size, out_size, torch.Generator(device="cuda").manual_seed(seed))
        b = augmenter.border
        rng = np.random.default_rng(0)
        image = torch.from_numpy(rng.normal(size=(4, 1, in_size + 2 * b, in_size + 2 * b)).astype(np.float32)).cuda()
        label = torch.from_numpy(rng.integers(0, 2, (4, out_size + 2 * b, out_size + 2 * b))).cuda()
        weight = torch.from_numpy(rng.choice([1.0, 5.0], (4, out_size + 2 * b, out_size + 2 * b)).astype(np.float32)).cuda()
        return augmenter(image, label, weight)

    image, label, weight = augment(3)
    assert image.device.type == label.device.type == weight.device.type == "cuda"
    assert image.shape == (4, 1, in_size, in_size) and label.shape == weight.shape == (4, out_size, out_size)
    assert set(label.unique().tolist()) <= {0, 1} and set(weight.unique().tolist()) <= {1.0, 5.0}  # nearest sampling
    again = augment(3)
    assert all(torch.equal(a, b) for a, b in zip((image, label, weight), again))
    assert not torch.equal(image, augment(4)[0])


def test_tile_predictor_on_cuda_equals_cpu() -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, depth=3, base_channels=8)
    edge = net.input_size(net.valid_output_size(36))
    windows = np.random.default_rng(0).normal(size=(3, 1, edge, edge)).astype(np.float32)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    on_cpu = TilePredictor(net, cpu, resolve_precision("fp32", cpu))(windows)
    on_gpu = TilePredictor(net, gpu, resolve_precision("fp32", gpu))(windows)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    assert np.abs(on_gpu - on_cpu).max() < TOLERANCE


def test_predict_image_on_cuda_equals_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    identity = Normalization("zscore", mean=(0.0,), std=(1.0,))  # the model sees the stored pixels
    net = UNet(in_channels=1, n_classes=2, depth=3, base_channels=8)
    save_checkpoint(tmp_path / "model.pt", net, normalization=identity.to_json())
    image = np.random.default_rng(1).normal(size=(1, 300, 260)).astype(np.float32)
    store = write_dataset(tmp_path / "img.zarr", {"a": image}, chunk=128)
    results = {}
    for device in ("cpu", "cuda"):
        settings = {"device": device, "tile": 64, "chunk": 128, "batch_size": 4, "precision": "fp32"}
        options = PredictOptions.from_settings(settings)
        out = predict_image(tmp_path / "model.pt", store, "a", tmp_path / f"{device}.ome.zarr", options)
        root = zarr.open_group(str(out), mode="r")
        results[device] = (root[level_path(PROBABILITIES, 0)][:], root[level_path(SEMANTIC, 0)][:])
    assert np.abs(results["cuda"][0].astype(np.float32) - results["cpu"][0]).max() < TOLERANCE
    assert np.mean(results["cuda"][1] == results["cpu"][1]) > 0.999  # argmax may flip only at near-ties
