"""Training: weighted cross-entropy on augmented tiles, validation, checkpoints, exact resume.

``Trainer`` owns every piece of state a run has — model, optimizer, AMP scaler, step, metric
history and the states of all random generators (Python, NumPy, torch CPU/CUDA, the sampler's and
the augmenter's). ``last.pt`` stores all of it, so a run killed at any point and resumed from
its last checkpoint continues with exactly the batches, augmentations and dropout masks an
uninterrupted run would have used (bit-identical on the CPU; on CUDA up to cuDNN's
non-determinism). ``best.pt`` holds the weights with the best validation foreground IoU.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from unetflow.augment import Augmenter, AugmentSettings
from unetflow.config import ConfigError
from unetflow.devices import pick_device
from unetflow.model import BEST, LAST, UNet, save_checkpoint, write_model_json
from unetflow.normalize import Normalization
from unetflow.sampling import TileSampler, open_split
from unetflow.predict import TilePredictor, predict_region, tile_layout
from unetflow.store import IMAGES, atomic_output, open_store, split_names, store_meta
from unetflow.tiling import ChunkGrid

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
METRIC_FIELDS = ("step", "train_loss", "val_loss", "val_iou", "lr")
VAL_TILE = 256  # validation output tile edge: fewer, larger tiles than training uses
VAL_CHUNK = 1024  # validation runs region by region, so a large validation image never sits whole in memory


class TrainingDiverged(ConfigError):
    """The loss became NaN/inf: a settings problem (learning rate, AMP), fixed by the user."""


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``w(x) * -log softmax(logits)(x)[target(x)]`` (the paper's eq. 1).

    Computed in float32 even under autocast so the weights of rare border pixels are not lost to
    half precision.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (weight * ce).mean()


def _numpy_state() -> dict[str, Any]:
    """NumPy's global RNG state with plain Python values (loadable with ``weights_only``)."""
    state = np.random.get_state(legacy=False)
    state["state"] = {"key": state["state"]["key"].tolist(), "pos": state["state"]["pos"]}
    return state


def _set_numpy_state(state: dict[str, Any]) -> None:
    state = dict(state)
    state["state"] = {"key": np.asarray(state["state"]["key"], dtype=np.uint32), "pos": state["state"]["pos"]}
    np.random.set_state(state)


class Trainer:
    """One training run in ``work_dir``; ``run()`` trains to ``train["steps"]``, resuming if asked."""

    def __init__(
        self,
        data_store: str | Path,
        weights_store: str | Path,
        work_dir: str | Path,
        model_settings: dict[str, Any],
        train_settings: dict[str, Any],
    ) -> None:
        self.work_dir = Path(work_dir)
        self.settings = {"model": dict(model_settings), "train": dict(train_settings)}
        cfg = train_settings
        self.cfg = cfg
        self.device = pick_device(cfg["device"])
        self.amp = bool(cfg["amp"]) and self.device.type == "cuda"
        if cfg["num_threads"] > 0:
            torch.set_num_threads(cfg["num_threads"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

        data = open_store(data_store, "dataset")
        self.meta = store_meta(data)
        # What the run trains on: re-ingested data or recomputed weight maps (new provenance or
        # settings in their attributes) must start a fresh run, never resume an old one.
        self.inputs = {"data": self.meta, "weights": store_meta(open_store(weights_store, "weights"))}
        architecture = {k: v for k, v in model_settings.items() if k != "normalization"}
        self.model = UNet(in_channels=int(self.meta["channels"]), **architecture).to(self.device)
        self.out_size = self.model.valid_output_size(cfg["tile"])
        self.in_size = self.model.input_size(self.out_size)

        self.sampler_generator = torch.Generator().manual_seed(seed + 1)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed + 2)
        self.augmenter = Augmenter(
            AugmentSettings.from_config(cfg["augment"]), self.in_size, self.out_size, self.augment_generator
        )
        train_names = split_names(data, "train")
        # zscore statistics come from the training images only: no validation/test pixel shapes the model
        self.normalization = Normalization.from_settings(model_settings.get("normalization", {})).fit(
            {name: data[IMAGES][name] for name in train_names}
        )
        train_arrays = open_split(data_store, weights_store, train_names, self.normalization)
        self.val_arrays = open_split(data_store, weights_store, split_names(data, "val"), self.normalization)
        self.sampler = TileSampler(
            train_arrays, self.out_size, self.model.margin, self.augmenter.border, self.sampler_generator
        )

        params = self.model.parameters()
        if cfg["optimizer"] == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.best_iou = -math.inf
        self.history: list[dict[str, Any]] = []

    # -- one step ----------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample windows on the CPU, move them to the device, augment them there."""
        image, label, weight = self.sampler.sample(self.cfg["batch_size"])
        pin = self.device.type == "cuda"
        image, label, weight = (
            (t.pin_memory() if pin else t).to(self.device, non_blocking=pin) for t in (image, label, weight)
        )
        return self.augmenter(image, label, weight)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
        """Forward, weighted loss, backward, optimizer step; raises TrainingDiverged on NaN/inf."""
        image, target, weight = batch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(image)
        loss = weighted_cross_entropy(logits, target, weight)
        value = loss.item()
        if not math.isfinite(value):
            self._diverged(f"training loss became {value} at step {self.step + 1}")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def validate(self) -> tuple[float, float]:
        """Weighted loss per pixel and pooled foreground IoU over the whole validation images.

        Predictions come from the predict stage's overlap-tile code (``predict_region``), so the
        validation score is the score of the model as it will be used, borders included.
        """
        predictor = TilePredictor(self.model, self.device)  # puts the model in eval mode
        loss_sum, pixels, inter, union = 0.0, 0, 0, 0
        for image, label, weight in self.val_arrays:
            height, width = label.shape
            layout = tile_layout(self.model, VAL_TILE, VAL_CHUNK, height, width)
            for _, region in ChunkGrid(height, width, VAL_CHUNK):
                probs = predict_region(predictor, image, layout, region, self.cfg["batch_size"], tta=False)
                target = np.asarray(label[region.slices]) > 0
                p_target = np.take_along_axis(probs, target[None].astype(np.intp), axis=0)[0]
                w = np.asarray(weight[region.slices], dtype=np.float64)
                loss_sum += float(-(w * np.log(np.maximum(p_target, np.finfo(np.float32).tiny))).sum())
                pixels += target.size
                pred = probs.argmax(axis=0) > 0
                inter += int(np.count_nonzero(pred & target))
                union += int(np.count_nonzero(pred | target))
        self.model.train()
        return loss_sum / pixels, (inter / union if union else 1.0)

    # -- checkpoints -------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "sampler": self.sampler_generator.get_state(),
            "augment": self.augment_generator.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        self.sampler_generator.set_state(state["sampler"])
        self.augment_generator.set_state(state["augment"])
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])

    def _diverged(self, what: str) -> None:
        last = self.work_dir / LAST
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(f"{what}; {kept}. Lower train.lr (or set train.amp: false) and run again.")

    def save_last(self) -> None:
        """Checkpoint everything needed to resume, then the metrics table it corresponds to.

        A finite loss does not guarantee finite weights (one exploding update), so the weights are
        checked before they may replace the last good checkpoint.
        """
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged(f"model weights became non-finite by step {self.step}")
        save_checkpoint(
            self.work_dir / LAST,
            self.model,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.step,
            best_iou=self.best_iou,
            history=self.history,
            rng=self._rng_state(),
            settings=self.settings,
            normalization=self.normalization.to_json(),
            inputs=json.dumps(self.inputs, sort_keys=True),
        )
        self.write_metrics()

    def save_best(self, val_loss: float | None, val_iou: float | None) -> None:
        save_checkpoint(
            self.work_dir / BEST,
            self.model,
            step=self.step,
            val_loss=val_loss,
            val_iou=val_iou,
            settings=self.settings,
            normalization=self.normalization.to_json(),
        )

    def resume(self) -> bool:
        """Load ``last.pt`` from the work dir if it was written with the same settings."""
        path = self.work_dir / LAST
        if not path.is_file():
            return False
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("settings") != self.settings:
            log.warning("%s was written with other settings; starting afresh", path)
            return False
        if checkpoint.get("inputs") != json.dumps(self.inputs, sort_keys=True):
            log.warning("%s was trained on other data or weight maps; starting afresh", path)
            return False
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.best_iou = float(checkpoint["best_iou"])
        self.history = list(checkpoint["history"])
        self._set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def write_metrics(self) -> Path:
        path = self.work_dir / METRICS_CSV
        with atomic_output(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
        return path

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train until ``train.steps`` (or ``stop_at``, for tests), validating and checkpointing.

        Returns a summary. When the run reaches ``train.steps`` the work dir also gets
        ``model.json`` (and ``best.pt`` from the final weights when there is no validation split).
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        steps = int(self.cfg["steps"])
        stop = steps if stop_at is None else min(stop_at, steps)
        log.info(
            "training on %s: tiles %d -> %d px, %d train / %d val images, steps %d..%d",
            self.device, self.in_size, self.out_size, len(self.sampler.arrays), len(self.val_arrays),
            self.step + 1, stop,
        )
        bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", file=sys.stderr, disable=not progress)
        while self.step < stop:
            loss = self.train_step(self.next_batch())
            self.step += 1
            row: dict[str, Any] = {
                "step": self.step, "train_loss": loss, "val_loss": None, "val_iou": None,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            if self.val_arrays and (self.step % self.cfg["val_every"] == 0 or self.step == steps):
                row["val_loss"], row["val_iou"] = self.validate()
                if row["val_iou"] > self.best_iou:
                    self.best_iou = row["val_iou"]
                    self.save_best(row["val_loss"], row["val_iou"])
                bar.set_postfix(loss=f"{loss:.4f}", val_iou=f"{row['val_iou']:.3f}")
            else:
                bar.set_postfix(loss=f"{loss:.4f}")
            self.history.append(row)
            if self.step % self.cfg["checkpoint_every"] == 0 or self.step == stop:
                self.save_last()
            bar.update(1)
        bar.close()
        if self.step == steps:
            self._finish()
        return {"step": self.step, "best_val_iou": self.best_iou if self.val_arrays else None}

    def _finish(self) -> None:
        if not self.val_arrays:
            log.warning("no validation images: best.pt holds the final weights")
            self.save_best(None, None)
        write_model_json(
            self.work_dir,
            self.model,
            normalization=self.normalization.to_json(),
            train=self.settings["train"],
            tile={"input": self.in_size, "output": self.out_size, "margin": self.model.margin},
            best_val_iou=self.best_iou if self.val_arrays else None,
        )


def train_model(
    data_store: str | Path,
    weights_store: str | Path,
    model_dir: str | Path,
    model_settings: dict[str, Any],
    train_settings: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train in ``<model_dir>.partial`` (kept across kills for ``resume``); rename when complete.

    Returns the finished model directory. An old work dir is discarded unless ``resume`` is set
    and its checkpoint was written with the same settings.
    """
    final = Path(model_dir)
    work = final.with_name(final.name + ".partial")
    trainer = Trainer(data_store, weights_store, work, model_settings, train_settings)
    if not (resume and trainer.resume()):
        shutil.rmtree(work, ignore_errors=True)
    trainer.run(progress=progress)
    if final.exists():
        shutil.rmtree(final)
    work.replace(final)
    return final
