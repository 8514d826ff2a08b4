"""Training: weighted cross-entropy on augmented tiles, validation, checkpoints, exact resume.

``Trainer`` owns every piece of state a run has — model, optimizer, fp16 gradient scaler, step, metric
history and the states of all random generators (Python, NumPy, torch CPU/CUDA, the sampler's and
the augmenter's). ``last.pt`` stores all of it, so a run killed at any point and resumed from
its last checkpoint continues with exactly the batches, augmentations and dropout masks an
uninterrupted run would have used (bit-identical on the CPU; on CUDA up to cuDNN's
non-determinism) -- within one precision: a checkpoint of another precision starts afresh. The
learning rate follows ``train.schedule`` as a pure function of the step (``unetflow.schedule``),
so it resumes exactly too. ``best.pt`` holds the weights with the best validation score
(``train.select``: by default the objects' mean F1, ``unetflow.validation``).
Weights and checkpoints are fp32 in every precision; bf16/fp16 is only the autocast of the
network's forward.

``train.steps`` and ``train.minutes`` set how long the run goes, not what it is, so they are left
out of the "same settings" check: raising either on a finished (or budget-stopped) run continues
from its ``last.pt`` instead of starting again.

Why this module is longer than the others (~450 lines): ``Trainer``'s set-up, loop and
checkpoint steps are named methods that all read and write the one run state listed above;
split across modules they would hand that state back and forth. What needs none of it lives
apart: the validation score (``unetflow.validation``), the generators' states
(``unetflow.rng_state``), tile sampling, augmentation and the learning-rate schedule.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetflow import rng_state
from unetflow.augment import Augmenter, AugmentSettings
from unetflow.config import ConfigError
from unetflow.devices import pick_device, resolve_precision
from unetflow.losses import LOSSES
from unetflow.model import BEST, LAST, UNet, save_checkpoint, write_model_json
from unetflow.normalize import Normalization
from unetflow.progress import Progress
from unetflow.sampling import TileSampler, at_zoom, open_split
from unetflow.schedule import lr_factor
from unetflow.rescale import image_zoom
from unetflow.store import IMAGES, LABELS, StoreError, atomic_output, open_store, split_names, store_meta
from unetflow.validation import Selection, ValidationScores, validation_scores

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
METRIC_FIELDS = ("step", "train_loss", "val_loss", "val_iou", "val_score", "lr")
LENGTH_KEYS = ("steps", "minutes")  # how long a run trains, not what it trains: not compared on resume


class TrainingDiverged(ConfigError):
    """The loss became NaN/inf: a settings problem (learning rate, precision), fixed by the user."""


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match for a checkpoint to be resumed: all but the run's length."""
    return {**settings, "train": {k: v for k, v in settings["train"].items() if k not in LENGTH_KEYS}}


class Trainer:
    """One training run in ``work_dir``; ``run()`` trains to ``train["steps"]``, resuming if asked."""

    clock: Callable[[], float] = staticmethod(time.monotonic)  # the wall clock of train.minutes

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
        self.cfg = train_settings
        self._set_up_device()
        rng_state.seed_everything(int(self.cfg["seed"]))
        data, weights_meta = self._read_inputs(data_store, weights_store)
        self._build_model(model_settings, int(weights_meta["n_classes"]))
        self._build_sampling(data, data_store, weights_store, model_settings)
        self._build_optimizer()
        self.step = 0
        self.best_score: float | None = None  # the train.select score of best.pt
        self.history: list[dict[str, Any]] = []
        self.elapsed_s = 0.0  # training wall-clock time of all sessions of this run, up to the last checkpoint
        self._session_start = self.clock()
        self._session_base = 0.0

    # -- set-up ------------------------------------------------------------------------------------
    def _set_up_device(self) -> None:
        """Device, precision and CPU threads of the run."""
        self.device = pick_device(self.cfg["device"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        if self.cfg["num_threads"] > 0:
            torch.set_num_threads(self.cfg["num_threads"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _read_inputs(self, data_store: str | Path, weights_store: str | Path) -> tuple[Any, dict[str, Any]]:
        """The dataset group and the weight maps' metadata; what identifies them for resume
        (``inputs``) and the recipe predict needs to form objects, which travels with the weights."""
        data = open_store(data_store, "dataset")
        self.meta = store_meta(data)
        # What the run trains on: re-ingested data or recomputed weight maps (new provenance or
        # settings in their attributes) must start a fresh run, never resume an old one.
        weights_meta = store_meta(open_store(weights_store, "weights"))
        self.inputs = {"data": self.meta, "weights": weights_meta}
        if "target" not in weights_meta:
            raise StoreError(f"{weights_store}: has no class targets (written by an older unetflow); run the weights stage again")
        self.recipe = {key: weights_meta[key] for key in ("target", "instances", "object_size")}
        return data, weights_meta

    def _build_model(self, model_settings: dict[str, Any], n_classes: int) -> None:
        """The U-Net on the device in the run's precision, and its training tile sizes."""
        architecture = {k: v for k, v in model_settings.items() if k != "normalization"}
        model = UNet(in_channels=int(self.meta["channels"]), n_classes=n_classes, **architecture).to(self.device)
        self.model = self.precision.prepare_model(model)
        self.out_size = self.model.valid_output_size(self.cfg["tile"])
        self.in_size = self.model.input_size(self.out_size)

    def _build_sampling(
        self, data: Any, data_store: str | Path, weights_store: str | Path, model_settings: dict[str, Any]
    ) -> None:
        """Normalisation fitted on the train split, the tile sampler and augmenter with their own
        seeded generators, and the validation arrays."""
        seed = int(self.cfg["seed"])
        self.sampler_generator = torch.Generator().manual_seed(seed + 1)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(seed + 2)
        train_names = split_names(data, "train")
        if not train_names:
            raise StoreError(
                f"{data_store}: no training images; its split puts every image in test (an evaluate-only "
                "dataset, dataset.split.test_fraction 1.0). Train on a dataset with a train split"
            )
        # zscore statistics come from the training images only: no validation/test pixel shapes the model
        self.normalization = Normalization.from_settings(model_settings.get("normalization", {})).fit(
            {name: data[IMAGES][name] for name in train_names}
        )
        val_names = split_names(data, "val")
        diameter = self._rescale_diameter()
        train_zooms, self.val_zooms = self._zooms(data, train_names, diameter), self._zooms(data, val_names, diameter)
        if diameter is not None:
            self.recipe["rescale"] = {"diameter": diameter}
        self.augmenter = Augmenter(
            AugmentSettings.from_config(self.cfg["augment"]),
            self.in_size,
            self.out_size,
            self.augment_generator,
            mid_grey=self.normalization.mid_grey,
        )
        train_arrays = open_split(data_store, weights_store, train_names, self.normalization)
        if train_zooms:  # train.rescale: each image seen at the typical object size
            train_arrays = [at_zoom(arrays, zoom) for arrays, zoom in zip(train_arrays, train_zooms)]
        self.val_arrays = open_split(data_store, weights_store, val_names, self.normalization)
        self.selection = Selection.for_model(self.cfg["select"], self.recipe, self.model.config["n_classes"])
        # the val images' objects, for an object score (val splits are dataset images, never slides)
        self.val_truths = [np.asarray(data[LABELS][name][...]) for name in val_names] if self.selection.needs_objects else []
        self.sampler = TileSampler(
            train_arrays,
            self.out_size,
            self.model.margin,
            self.augmenter.border,
            self.sampler_generator,
            sampling=self.cfg["sampling"],
        )

    def _rescale_diameter(self) -> float | None:
        """With ``train.rescale``, the training images' typical object diameter (the weights stage
        records it) that every image is resampled to; None without it."""
        if not self.cfg["rescale"]:
            return None
        diameter = (self.recipe.get("object_size") or {}).get("typical_diameter")
        if not diameter:
            raise StoreError(
                "train.rescale needs the typical object size of the training images, which these weight maps "
                "do not record (written by an older unetflow, or no objects): run the weights stage again"
            )
        return float(diameter)

    @staticmethod
    def _zooms(data: Any, names: list[str], diameter: float | None) -> list[float]:
        """Each image's zoom to ``diameter`` (``unetflow.rescale.image_zoom``, from its labels);
        none without ``train.rescale``."""
        if diameter is None:
            return []
        return [image_zoom(np.asarray(data[LABELS][name][...]), diameter) for name in names]

    def _build_optimizer(self) -> None:
        """SGD or Adam over the model's parameters, and the fp16 gradient scaler."""
        params = self.model.parameters()
        if self.cfg["optimizer"] == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=self.cfg["lr"], momentum=self.cfg["momentum"], weight_decay=self.cfg["weight_decay"]
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])
        # bf16 has fp32's exponent range, so only fp16 needs its gradients scaled.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.dtype == torch.float16)

    # -- one step ----------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample windows on the CPU, move them to the device, augment them there."""
        image, label, weight = self.sampler.sample(self.cfg["batch_size"])
        pin = self.device.type == "cuda"
        image, label, weight = (
            (t.pin_memory() if pin else t).to(self.device, non_blocking=pin) for t in (image, label, weight)
        )
        return self.augmenter(image, label, weight)

    def set_lr(self, step: int) -> float:
        """Set the scheduled learning rate of optimizer step ``step`` (1-based) and return it."""
        lr = float(self.cfg["lr"]) * lr_factor(step, int(self.cfg["steps"]), self.cfg["schedule"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
        """Forward, weighted loss, backward, optimizer step; raises TrainingDiverged on NaN/inf."""
        image, target, weight = batch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast(self.device):
            logits = self.model(self.precision.prepare_input(image))
        loss = LOSSES[self.cfg["loss"]](logits, target, weight)
        value = loss.item()
        if not math.isfinite(value):
            self._diverged(f"training loss became {value} at step {self.step + 1}")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def validate(self) -> ValidationScores:
        """Loss, foreground IoU and the selection's object score over the whole validation images
        (``unetflow.validation``); the model is back in training mode afterwards."""
        scores = validation_scores(
            self.model, self.device, self.precision, self.val_arrays, self.cfg["batch_size"],
            truths=self.val_truths, selection=self.selection, zooms=self.val_zooms,
        )
        self.model.train()
        return scores

    # -- checkpoints -------------------------------------------------------------------------------
    def _generators(self) -> dict[str, torch.Generator]:
        """The run's own generators, by the names their states have in ``last.pt``."""
        return {"sampler": self.sampler_generator, "augment": self.augment_generator}

    def _diverged(self, what: str) -> None:
        last = self.work_dir / LAST
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(f"{what}; {kept}. Lower train.lr (or set train.precision: fp32) and run again.")

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
            best_score=self.best_score,
            history=self.history,
            rng=rng_state.capture(self._generators(), self.device.type == "cuda"),
            schedule={**self.cfg["schedule"], "total_steps": int(self.cfg["steps"])},
            elapsed_s=self.elapsed(),
            precision=self.precision.name,
            settings=self.settings,
            normalization=self.normalization.to_json(),
            inputs=json.dumps(self.inputs, sort_keys=True),
        )
        self.write_metrics()

    def save_best(self, row: dict[str, Any] | None) -> None:
        """best.pt from the current weights, with the validation row that chose them (None: no val split)."""
        row = row or {}
        save_checkpoint(
            self.work_dir / BEST,
            self.model,
            step=self.step,
            val_loss=row.get("val_loss"),
            val_iou=row.get("val_iou"),
            val_score=row.get("val_score"),
            select=self.cfg["select"],
            settings=self.settings,
            recipe=self.recipe,
            normalization=self.normalization.to_json(),
        )

    def resume(self) -> bool:
        """Load ``last.pt`` from the work dir if it was written with the same settings.

        Only the run's length (``train.steps``, ``train.minutes``) may differ: a longer run
        continues where the checkpoint stopped. A checkpoint past the new ``train.steps`` cannot
        be shortened, so that run starts afresh.
        """
        path = self.work_dir / LAST
        if not path.is_file():
            return False
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint.get("settings")
        if not isinstance(saved, dict) or comparable_settings(saved) != comparable_settings(self.settings):
            log.warning("%s was written with other settings; starting afresh", path)
            return False
        if int(checkpoint["step"]) > int(self.cfg["steps"]):
            log.warning("%s is at step %d, past train.steps %d; starting afresh", path, checkpoint["step"], self.cfg["steps"])
            return False
        if checkpoint.get("precision", "fp32") != self.precision.name:
            log.warning(
                "%s was trained in %s, this run is %s; starting afresh",
                path, checkpoint.get("precision", "fp32"), self.precision.name,
            )
            return False
        if checkpoint.get("inputs") != json.dumps(self.inputs, sort_keys=True):
            log.warning("%s was trained on other data or weight maps; starting afresh", path)
            return False
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.best_score = checkpoint.get("best_score")
        self.history = list(checkpoint["history"])
        self.elapsed_s = float(checkpoint.get("elapsed_s", 0.0))
        rng_state.restore(checkpoint["rng"], self._generators())
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
    def elapsed(self) -> float:
        """Seconds this run has trained, over all its sessions (resumes add to it)."""
        return self._session_base + (self.clock() - self._session_start)

    def out_of_time(self) -> bool:
        """Whether the ``train.minutes`` budget (None = none) is used up."""
        minutes = self.cfg.get("minutes")
        return minutes is not None and self.elapsed() >= 60.0 * float(minutes)

    def run(self, stop_at: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train until ``train.steps`` or the ``train.minutes`` budget (or ``stop_at``, for tests).

        Validates every ``val_every`` steps and at the last step, checkpoints every
        ``checkpoint_every`` steps and at the last step. Returns a summary. When the run reaches
        ``train.steps`` or its time budget, the work dir also gets ``model.json`` (and ``best.pt``
        from the final weights when there is no validation split); a budget-stopped run resumes
        from its ``last.pt`` when given more minutes or steps.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        steps = int(self.cfg["steps"])
        stop = steps if stop_at is None else min(stop_at, steps)
        self._session_start, self._session_base = self.clock(), self.elapsed_s
        log.info(
            "training on %s (%s): tiles %d -> %d px, %d train / %d val images, steps %d..%d, %s schedule",
            self.device, self.precision.name, self.in_size, self.out_size, len(self.sampler.arrays),
            len(self.val_arrays), self.step + 1, stop, self.cfg["schedule"]["name"],
        )
        timed_out = self.out_of_time()
        with Progress("train", stop, "steps", initial=self.step, enabled=progress) as bar:
            while self.step < stop and not timed_out:
                row, timed_out = self._one_step(steps)
                self.history.append(row)
                if self.step % self.cfg["checkpoint_every"] == 0 or self.step in (stop, steps) or timed_out:
                    self.save_last()
                shown = f", val {self.cfg['select']} {row['val_score']:.3f}" if row["val_score"] is not None else ""
                bar.set(self.step, note=f"loss {row['train_loss']:.4f}{shown}")
        if timed_out and self.step < steps:
            log.warning(
                "train.minutes budget (%s) used up at step %d of %d; the run is finished with these weights "
                "(raise train.minutes or train.steps to continue from last.pt)", self.cfg["minutes"], self.step, steps,
            )
        if self.step == steps or timed_out:
            self._finish()
        self.elapsed_s = self.elapsed()
        return {"step": self.step, "best_val_score": self.best_score, "timed_out": timed_out}

    def _one_step(self, steps: int) -> tuple[dict[str, Any], bool]:
        """Train one step and validate when due (every ``val_every`` steps and at the run's last);
        the step's metrics row and whether the time budget is used up."""
        lr = self.set_lr(self.step + 1)
        loss = self.train_step(self.next_batch())
        self.step += 1
        timed_out = self.out_of_time()
        row: dict[str, Any] = {"step": self.step, "train_loss": loss, "val_loss": None, "val_iou": None, "val_score": None, "lr": lr}
        if self.val_arrays and (self.step % self.cfg["val_every"] == 0 or self.step == steps or timed_out):
            self._validate_into(row)
        return row, timed_out

    def _validate_into(self, row: dict[str, Any]) -> None:
        """Validate, record the scores in ``row`` and keep the weights as best.pt if their
        ``train.select`` score is the best yet (the first of equals)."""
        scores = self.validate()
        row["val_loss"], row["val_iou"], row["val_score"] = scores.loss, scores.fg_iou, scores.selected(self.selection)
        if self.selection.better(row["val_score"], self.best_score):
            self.best_score = row["val_score"]
            self.save_best(row)

    def _finish(self) -> None:
        if not self.val_arrays:
            log.warning("no validation images: best.pt holds the final weights")
            self.save_best(None)
        write_model_json(
            self.work_dir,
            self.model,
            normalization=self.normalization.to_json(),
            recipe=self.recipe,
            train=self.settings["train"],
            trained_steps=self.step,
            precision=self.precision.name,
            tile={"input": self.in_size, "output": self.out_size, "margin": self.model.margin},
            select=self.cfg["select"],
            best_val_score=self.best_score,
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
    """Train in ``<model_dir>.checkpoints`` and publish its files as ``model_dir`` when finished.

    The checkpoints folder outlives the job: after a kill it holds the last checkpoint, and after
    a finished run too, so that raising ``train.steps``/``train.minutes`` (which Snakemake answers
    by deleting ``model_dir`` and rerunning) continues from ``last.pt``. It is discarded unless
    ``resume`` is set and its checkpoint was written with the same settings. ``model_dir`` is
    written atomically; checkpoints are hard-linked into it (they are only ever replaced by
    rename, never rewritten in place), other files copied.
    """
    final = Path(model_dir)
    work = checkpoints_dir(final)
    trainer = Trainer(data_store, weights_store, work, model_settings, train_settings)
    if not (resume and trainer.resume()):
        shutil.rmtree(work, ignore_errors=True)
    trainer.run(progress=progress)
    with atomic_output(final) as tmp:
        tmp.mkdir()
        for path in sorted(work.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                _link_or_copy(path, tmp / path.name)
    return final


def checkpoints_dir(model_dir: str | Path) -> Path:
    """The folder a run of ``model_dir`` trains in and keeps its resumable state."""
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + ".checkpoints")


def _link_or_copy(source: Path, target: Path) -> None:
    if source.suffix == ".pt":
        try:
            os.link(source, target)
            return
        except OSError:  # a file system without hard links
            pass
    shutil.copy2(source, target)
