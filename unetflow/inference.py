"""A trained U-Net on tiles: load it with its recipe, run it on batches of windows (with TTA), and
stitch the windows of one region by overlap-tile cropping.

The one job here is "model in, probabilities of a region out", with no zarr output, dask or
resume involved, so training's validation (``unetflow.train``), the bioimage.io export and the
predict stage's chunk tasks (``unetflow.predict``) all compute probabilities with this very code.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetflow.devices import Precision
from unetflow.instances import InstanceRule
from unetflow.io.errors import InputError
from unetflow.model import BEST, UNet, load_checkpoint, model_from_checkpoint
from unetflow.normalize import Normalization
from unetflow.rescale import AxisMap, ZoomedView, model_diameter, zoomed_chunk, zoomed_region
from unetflow.tiling import Box, TileLayout, align_up, read_window


# -- geometry of a model -------------------------------------------------------------------------
def tile_layout(model: UNet, tile: int, chunk: int, height: int, width: int) -> TileLayout:
    """The overlap-tile layout of ``model`` for an image: tile edge, context margin, alignment.

    The tile is the smallest valid output edge >= the requested one, but never larger than needed
    for the chunk or the image. A same-padded net has no margin of its own; it gets the context
    of its valid twin (rounded to the pooling stride), which is its receptive-field radius, so
    zero padding at tile edges cannot reach the kept centre and tiling stays seamless too.
    """
    align = 2 ** (model.depth - 1)
    wanted = max(align, min(tile, chunk, max(height, width)))
    out = model.valid_output_size(wanted)
    if model.padding == "valid":
        margin = model.margin
    else:
        twin = UNet(in_channels=1, n_classes=2, depth=model.depth, base_channels=1, padding="valid")
        margin = align_up(twin.margin + align, align)
    return TileLayout(tile=out, margin=margin, align=align)


# -- the model on a device, shared by the threads of a process -----------------------------------
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]
"""The 8 symmetries of a square: ``k`` quarter turns after an optional horizontal flip."""


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Apply one of ``DIHEDRAL`` to the last two axes."""
    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))


def undihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo ``dihedral(x, k, flip)``."""
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


_THREAD_TORCH = threading.local()


def use_torch_threads(n: int) -> None:
    """Run this thread's torch CPU work on ``n`` threads (0: leave it). torch's setting is the
    calling thread's own (its OpenMP team); set once per thread, as setting it is not free."""
    if n > 0 and getattr(_THREAD_TORCH, "threads", None) != n:
        torch.set_num_threads(n)
        _THREAD_TORCH.threads = n


class TilePredictor:
    """Class probabilities for batches of input windows.

    One instance per process and device is shared by all dask threads. On a GPU, forwards are
    serialised by a lock: the model uses the whole device for one batch while the other threads
    read and write chunks, and peak activation memory is one batch's. A caller with several
    batches holds the model for all of them (``reserved``), so the chunk that started first
    finishes first and is written while the next one runs.

    On a CPU the calling threads run their forwards side by side, each on ``threads_per_call``
    torch threads (0: the thread's setting), typically one core per chunk in flight. One forward
    on all cores instead loses more than the other threads' reading and writing costs: its
    OpenMP team waits at every barrier for a thread the OS gave to that work, and a 2-core bf16
    forward ran 2.8x slower beside one busy numpy thread. Side by side, bf16 prediction keeps
    0.84-0.99 of the bare forward's speed (``benchmarks/predict.py``), 0.64-0.66 before.

    The network runs in ``precision`` (autocast and memory layout); softmax and the returned
    probabilities are fp32.
    """

    def __init__(
        self, model: UNet, device: torch.device, precision: Precision, threads_per_call: int = 0, serialised: bool | None = None
    ) -> None:
        self.model = precision.prepare_model(model.to(device)).eval()
        self.device = device
        self.precision = precision
        self.n_classes = int(model.config["n_classes"])
        self.threads_per_call = threads_per_call
        self.serialised = device.type != "cpu" if serialised is None else serialised
        self._lock = threading.RLock()

    def reserved(self) -> contextlib.AbstractContextManager[Any]:
        """The model for this thread alone until the ``with`` block ends, where forwards are
        serialised (calls inside it do not wait); nothing to wait for where they run side by side."""
        return self._lock if self.serialised else contextlib.nullcontext()

    def __call__(self, windows: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, C, s, s) float32 windows -> (N, n_classes, t, t) float32 probabilities.

        With ``tta`` the probabilities are averaged over the 8 flips/90-degree rotations. A tile
        on the pooling grid stays on it under these maps (valid input edges differ by multiples
        of the stride), so tiled TTA still equals whole-image TTA.
        """
        with self.reserved(), torch.inference_mode():
            use_torch_threads(self.threads_per_call)
            x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device, non_blocking=True)
            if not tta:
                probs = self._probabilities(x)
            else:
                probs = sum(
                    undihedral(self._probabilities(dihedral(x, k, flip)), k, flip) for k, flip in DIHEDRAL
                ) / len(DIHEDRAL)
            return probs.cpu().contiguous().numpy()

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast(self.device):
            logits = self.model(self.precision.prepare_input(x))
        return torch.softmax(logits.float(), dim=1)


def checkpoint_file(model_path: str | Path) -> Path:
    """The checkpoint a model path means: the file itself, or a model directory's best.pt."""
    path = Path(model_path)
    return path / BEST if path.is_dir() else path


@functools.lru_cache(maxsize=1)
def _checkpoint_state(checkpoint: str, mtime_ns: int) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read once per process while the file is unchanged:
    predict checks the model (``load_trained_model``) and then builds its predictor from the
    same contents instead of reading the file again (callers must not change the dict)."""
    return load_checkpoint(checkpoint, "cpu")


@functools.lru_cache(maxsize=1)
def _cpu_model(checkpoint: str, mtime_ns: int) -> UNet:
    """The model of a checkpoint on the CPU, built once per process while the file is unchanged:
    predict checks it for every image of a folder (building a U-Net costs ~25 ms, as much as a
    small image's forward). Shared: callers must not change it."""
    return model_from_checkpoint(_checkpoint_state(checkpoint, mtime_ns), "cpu")


_PREDICTOR_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load_predictor(
    checkpoint: str, mtime_ns: int, device: str, threads_per_call: int, precision: Precision
) -> TilePredictor:
    model = model_from_checkpoint(_checkpoint_state(checkpoint, mtime_ns), device)
    return TilePredictor(model, torch.device(device), precision, threads_per_call)


def shared_predictor(model_path: str, device: str, precision: Precision, threads_per_call: int = 0) -> TilePredictor:
    """The process-wide predictor of a checkpoint: loaded once per process (per dask worker);
    ``threads_per_call`` as ``TilePredictor``'s."""
    checkpoint = checkpoint_file(model_path)
    with _PREDICTOR_LOCK:
        return _load_predictor(str(checkpoint), checkpoint.stat().st_mtime_ns, device, threads_per_call, precision)


def load_trained_model(model_path: Path) -> tuple[UNet, Normalization, InstanceRule]:
    """The model on the CPU, its normalisation recipe and its instance rule, or an InputError
    naming the checkpoint and what is wrong with it: what predict and export check before they
    write anything."""
    checkpoint = checkpoint_file(model_path)
    if not checkpoint.is_file():
        raise InputError(model_path, "no model checkpoint", f"a model directory with {BEST} or a .pt file")
    try:
        written = checkpoint.stat().st_mtime_ns
        state = _checkpoint_state(str(checkpoint), written)
        model = _cpu_model(str(checkpoint), written)
    except Exception as exc:  # torch.load raises many types for a torn, foreign or mismatched file
        raise InputError(checkpoint, f"cannot load the model ({exc})", "a checkpoint written by unetflow") from exc
    if "normalization" not in state:
        raise InputError(
            checkpoint,
            "the model carries no normalisation recipe (trained by an older unetflow)",
            "a model trained by this version: re-run train",
        )
    normalization = Normalization.from_settings(state["normalization"], f"{checkpoint}: normalization")
    return model, normalization, instance_rule(model, state, model_path)


def instance_rule(model: UNet, checkpoint: dict[str, Any], model_path: Path) -> InstanceRule:
    """How a model's classes become objects: class-1 regions grown and widened by the recipe's
    ``instances`` rule (``TargetSettings.instance_rule``), recorded with the model at training,
    at the default thresholds (``predict_image`` applies tuned ones).

    A checkpoint without one is a 2-class model whose objects are its class-1 regions as they are.
    """
    rule = checkpoint.get("recipe", {}).get("instances")
    if rule is None and model.config["n_classes"] != 2:
        raise InputError(model_path, "3-class model without an instance recipe", "a checkpoint written by `unetflow train`")
    return InstanceRule.from_recipe(rule)


# -- one region ----------------------------------------------------------------------------------
def predict_region(
    predictor: TilePredictor, image: Any, layout: TileLayout, region: Box, batch_size: int, tta: bool
) -> np.ndarray:
    """Probabilities (n_classes, h, w) of ``region`` of a (C, Y, X) image, by overlap-tile.

    Reads one input block (region plus halo, mirrored outside the image), runs its tiles in
    batches and keeps of each tile only the part inside the region (tiles overlap by less than
    the pooling stride and agree there, so cropping is all the stitching there is).
    """
    block_box = layout.block(region)
    block = read_window(image, block_box.y0, block_box.x0, block_box.height, block_box.width)
    block = block.astype(np.float32, copy=False)
    tiles = layout.tiles(region)
    out = np.empty((predictor.n_classes, region.height, region.width), dtype=np.float32)
    with predictor.reserved():  # all batches of this region in a row (see TilePredictor)
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start : start + batch_size]
            windows = np.stack([block[(..., *layout.window(t).relative_to(block_box).slices)] for t in batch])
            probs = predictor(windows, tta)
            crop = (probs.shape[-1] - layout.tile) // 2  # a same-padded net also returns the context
            for tile, tile_probs in zip(batch, probs[..., crop : crop + layout.tile, crop : crop + layout.tile]):
                part = tile.intersection(region)
                if part is not None:
                    out[(..., *part.relative_to(region).slices)] = tile_probs[(..., *part.relative_to(tile).slices)]
    return out


def zoomed_layout(model: UNet, tile: int, chunk: int, height: int, width: int, zoom: float) -> TileLayout:
    """The tile layout of an image as the network sees it at ``zoom``: of the zoomed image, whose
    chunks are the native chunks zoomed."""
    rows, cols = AxisMap.of(height, zoom), AxisMap.of(width, zoom)
    return tile_layout(model, tile, zoomed_chunk(chunk, zoom), rows.zoomed, cols.zoomed)


def predict_region_at(
    predictor: TilePredictor, image: Any, layout: TileLayout, region: Box, batch_size: int, tta: bool, zoom: float
) -> np.ndarray:
    """Probabilities of ``region`` (native pixels) with the image seen at ``zoom``
    (``unetflow.rescale``): the tiles run on the zoomed image, whose layout ``layout`` is, and the
    result is interpolated back onto the region's pixels. At zoom 1 this is ``predict_region``."""
    if zoom == 1.0:
        return predict_region(predictor, image, layout, region, batch_size, tta)
    view = ZoomedView(image, zoom)
    box, rows, cols = zoomed_region(view, region)
    probs = predict_region(predictor, view, layout, box, batch_size, tta)
    return cols.apply(rows.apply(probs, -2, box.y0), -1, box.x0)


def _model_state(model_path: Path) -> dict[str, Any]:
    """The checkpoint of ``model_path``, read once per process (``_checkpoint_state``)."""
    checkpoint = checkpoint_file(model_path)
    return _checkpoint_state(str(checkpoint), checkpoint.stat().st_mtime_ns)


def trained_rescaled(model_path: Path) -> bool:
    """Whether a model was trained with every image at one object size (``train.rescale``)."""
    return "rescale" in _model_state(model_path).get("recipe", {})


def training_object_diameter(model_path: Path) -> float | None:
    """The object diameter a model was trained at (``unetflow.rescale.model_diameter``; None: not recorded)."""
    return model_diameter(_model_state(model_path))


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=0)`` as uint8 (ties to the lower class), class by class: several times
    faster than numpy's argmax over the first axis of a large (K, Y, X) array."""
    best = probs[0].copy()
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        np.copyto(labels, k, where=better)
        np.maximum(best, probs[k], out=best)
    return labels
