"""Overlap-tile inference of a trained U-Net over zarr images of any size, scheduled by dask.

The output is cut into chunks (``ChunkGrid``); one dask task per chunk reads the chunk's input
block with its context halo (mirror-padded at the image border by ``read_window``), cuts it into
aligned tiles (``TileLayout``), runs them through the model in batches, stitches the valid
outputs by pure cropping and writes exactly one zarr chunk of probabilities and of argmax labels.
Every block is normalised as it is read, by the model's recipe (``unetflow.normalize``) with the
statistics of the whole image or slide, computed (streamed) before the chunk tasks start.
Because the network uses valid convolutions and tiles sit on its pooling grid, the result equals
whole-image inference; because each task holds one chunk, memory is bounded by the chunk size
and the number of chunks in flight, never by the slide.

Work happens in ``<out>.partial``. A task marks its chunk done (an empty file) only after its
writes returned, so a killed run, rerun with the same model, image and settings, skips the chunks
already written. Instance labels and pyramid levels are derived chunk-wise from level 0 at the
end, and only then is ``<out>.partial`` renamed to ``<out>``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import zarr

from unetflow.config import stage_settings
from unetflow.devices import Precision, pick_device, resolve_precision
from unetflow.instances import CONNECTIVITY, InstanceRule
from unetflow.io.chunk_memo import remembering, write_chunk
from unetflow.io.errors import InputError
from unetflow.io.pixel_size import PixelSize
from unetflow.io.ome_zarr import (
    INSTANCES,
    PROBABILITIES,
    SEEDS,
    SEMANTIC,
    create_prediction,
    ome_tiff_path,
    instance_labels,
    level_path,
    open_ome_image,
    pyramid,
)
from unetflow.model import BEST, UNet, load_checkpoint, load_model, model_from_checkpoint
from unetflow.normalize import Normalization, NormalizedArray, Stats
from unetflow.scheduling import DaskRunner, own_runner
from unetflow.store import ATTRS_KEY, IMAGES, image_pixel_size, open_store, split_names, store_meta
from unetflow.tiling import Box, ChunkGrid, TileLayout, align_up, read_window

log = logging.getLogger(__name__)

#: writes the OME-TIFF export of a finished OME-Zarr prediction (``unetflow.io.ome_tiff.write_ome_tiff``,
#: passed in by the predict command, so that this module, which training imports, needs no tifffile)
Exporter = Callable[[Path], Path]

DONE_DIR = ".chunks-done"  # chunk completion markers inside a partial prediction
PARTIAL = ".partial"


@dataclass(frozen=True)
class PredictOptions:
    """The ``predict`` config section (see the schema for each key's meaning)."""

    device: str
    tile: int
    chunk: int
    batch_size: int
    dtype: str
    tta: bool
    pyramid_levels: int
    ome_tiff: bool
    scheduler: str
    address: str | None
    n_workers: int
    threads_per_worker: int
    chunks_in_flight: int
    num_threads: int
    precision: str
    progress_s: float
    slurm: dict[str, Any]

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None = None) -> PredictOptions:
        """Validate a (partial) ``predict`` section and fill the schema defaults."""
        filled = stage_settings("predict", settings_json=json.dumps(settings or {}))
        return cls(**{f.name: filled[f.name] for f in dataclasses.fields(cls)})


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


class TilePredictor:
    """Class probabilities for batches of input windows.

    One instance per process and device is shared by all dask threads. Forwards are serialised
    by a lock: the model then uses every core (or the whole GPU) for one batch while the other
    threads read and write chunks, and peak activation memory is one batch's, not one per thread.
    The network runs in ``precision`` (autocast and memory layout); softmax and the returned
    probabilities are fp32.
    """

    def __init__(self, model: UNet, device: torch.device, precision: Precision) -> None:
        self.model = precision.prepare_model(model.to(device)).eval()
        self.device = device
        self.precision = precision
        self.n_classes = int(model.config["n_classes"])
        self._lock = threading.Lock()

    def __call__(self, windows: np.ndarray, tta: bool = False) -> np.ndarray:
        """(N, C, s, s) float32 windows -> (N, n_classes, t, t) float32 probabilities.

        With ``tta`` the probabilities are averaged over the 8 flips/90-degree rotations. A tile
        on the pooling grid stays on it under these maps (valid input edges differ by multiples
        of the stride), so tiled TTA still equals whole-image TTA.
        """
        with self._lock, torch.inference_mode():
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


_PREDICTOR_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load_predictor(
    checkpoint: str, mtime_ns: int, device: str, torch_threads: int, precision: Precision
) -> TilePredictor:
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    return TilePredictor(load_model(checkpoint, device), torch.device(device), precision)


def shared_predictor(model_path: str, device: str, precision: Precision, torch_threads: int = 0) -> TilePredictor:
    """The process-wide predictor of a checkpoint: loaded once per process (per dask worker)."""
    checkpoint = checkpoint_file(model_path)
    with _PREDICTOR_LOCK:
        return _load_predictor(str(checkpoint), checkpoint.stat().st_mtime_ns, device, torch_threads, precision)


# -- one chunk -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkJob:
    """Everything one chunk task needs, as plain values (it is shipped to dask workers)."""

    image_store: str
    image_array: str
    out_store: str
    model_path: str
    device: str
    precision: Precision
    torch_threads: int
    layout: TileLayout
    index: tuple[int, int]
    region: Box
    stats: Stats
    batch_size: int
    tta: bool
    cached_chunks: int


def marker(out_store: str | Path, index: tuple[int, int]) -> Path:
    """The completion marker of output chunk ``index``."""
    return Path(out_store) / DONE_DIR / f"{index[0]}.{index[1]}"


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


class CachedChunks:
    """Read-only view of a (C, Y, X) zarr array that keeps the most recently decoded chunks.

    Neighbouring output chunks read overlapping input blocks (chunk plus context halo) and zarr
    decodes whole chunks, so without a cache an interior input chunk is decoded for each of the
    nine output chunks around it; keeping the last ``capacity`` chunks lets consecutive tasks of
    a row share them. Supports the ``[..., y0:y1, x0:x1]`` reads of ``read_window``.
    """

    def __init__(self, array: zarr.Array, capacity: int) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.capacity = capacity
        self._chunk_y, self._chunk_x = array.chunks[-2:]
        self._decoded: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _chunk(self, cy: int, cx: int) -> np.ndarray:
        with self._lock:
            if (cy, cx) in self._decoded:
                self._decoded.move_to_end((cy, cx))
                return self._decoded[(cy, cx)]
        y0, x0 = cy * self._chunk_y, cx * self._chunk_x
        data = self.array[..., y0 : y0 + self._chunk_y, x0 : x0 + self._chunk_x]
        with self._lock:
            self._decoded[(cy, cx)] = data
            while len(self._decoded) > self.capacity:
                self._decoded.popitem(last=False)
        return data

    def __getitem__(self, index: tuple[Any, slice, slice]) -> np.ndarray:
        _, rows, cols = index
        wanted = Box(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        out = np.empty((*self.shape[:-2], wanted.height, wanted.width), dtype=self.dtype)
        for cy in range(wanted.y0 // self._chunk_y, (wanted.y1 - 1) // self._chunk_y + 1):
            for cx in range(wanted.x0 // self._chunk_x, (wanted.x1 - 1) // self._chunk_x + 1):
                chunk = Box(cy * self._chunk_y, cx * self._chunk_x, self._chunk_y, self._chunk_x)
                part = chunk.intersection(wanted)  # never None: only chunks under ``wanted`` are visited
                assert part is not None
                out[(..., *part.relative_to(wanted).slices)] = self._chunk(cy, cx)[(..., *part.relative_to(chunk).slices)]
        return out


@functools.lru_cache(maxsize=1)
def _cached_image(store: str, path: str, written_ns: int, capacity: int) -> CachedChunks:
    return CachedChunks(zarr.open_array(store=store, path=path, mode="r"), capacity)


def shared_image(job: ChunkJob) -> CachedChunks:
    """The input image of a job with a decoded-chunk cache shared by the threads of a process."""
    written = (Path(job.image_store) / job.image_array / "zarr.json").stat().st_mtime_ns
    return _cached_image(job.image_store, job.image_array, written, job.cached_chunks)


def cache_capacity(input_chunks: Sequence[int], layout: TileLayout, chunk: int) -> int:
    """Input chunks to keep decoded: those under two input blocks of a full output chunk.

    Enough for the next task in a row to reuse the chunks it shares with the previous one (two
    thirds of them when input and output chunks are equal), at the memory of about two blocks.
    """
    block = layout.block(Box(0, 0, chunk, chunk))
    return 2 * (block.height // input_chunks[-2] + 2) * (block.width // input_chunks[-1] + 2)


def predict_chunk(job: ChunkJob) -> None:
    """Predict one output chunk, write its probabilities and argmax, then mark it done."""
    predictor = shared_predictor(job.model_path, job.device, job.precision, job.torch_threads)
    image = NormalizedArray(shared_image(job), job.stats)  # whole-image statistics, never per tile
    probs = predict_region(predictor, image, job.layout, job.region, job.batch_size, job.tta)
    write_chunk(job.out_store, level_path(PROBABILITIES, 0), job.region, probs)
    write_chunk(job.out_store, level_path(SEMANTIC, 0), job.region, argmax_classes(probs))
    marker(job.out_store, job.index).touch()


# -- one image -----------------------------------------------------------------------------------
def _fingerprint(
    checkpoint: Path,
    image_store: Path,
    image_array: zarr.Array,
    stats: Stats,
    options: PredictOptions,
    precision: Precision,
) -> str:
    """Identity of a prediction: model bytes, input image, its normalisation statistics and the
    settings that change outputs.

    The precision is the resolved one (``auto`` means bf16 on one machine and fp32 on another,
    whose outputs differ slightly), so a resumed prediction never mixes chunks of both.

    A partial output is resumed only if this matches, so chunks from another model, image or
    tiling are never mixed into a result. The image is identified by its store's metadata and
    the time its array was written (a re-ingested store is a new folder), not by hashing pixels.
    """
    digest = hashlib.sha256()
    with checkpoint.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    written = (image_store / image_array.path / "zarr.json").stat().st_mtime_ns
    relevant = {k: getattr(options, k) for k in ("tile", "chunk", "dtype", "tta", "pyramid_levels")}
    relevant["precision"] = precision.name
    identity = [
        str(image_store.resolve()), image_array.path, list(image_array.shape), written, stats.to_json(), relevant
    ]
    digest.update(json.dumps(identity, sort_keys=True).encode())
    digest.update(json.dumps(store_meta(zarr.open_group(str(image_store), mode="r")), sort_keys=True).encode())
    return digest.hexdigest()


def _load_for_checks(model_path: Path) -> tuple[UNet, Normalization, InstanceRule]:
    """The model on the CPU, its normalisation recipe and its instance rule, or an InputError
    naming the checkpoint and what is wrong with it."""
    checkpoint = checkpoint_file(model_path)
    if not checkpoint.is_file():
        raise InputError(model_path, "no model checkpoint", f"a model directory with {BEST} or a .pt file")
    try:
        state = load_checkpoint(checkpoint, "cpu")
        model = model_from_checkpoint(state, "cpu")
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
    if rule is None:
        if model.config["n_classes"] != 2:
            raise InputError(model_path, "3-class model without an instance recipe", "a checkpoint written by `unetflow train`")
        return InstanceRule()
    return InstanceRule(grow=int(rule["grow"]), expand=int(rule["expand"]))


def _open_image(image_store: Path, name: str) -> zarr.Array:
    """Image ``name`` of a unetflow store, or an InputError listing the names the store has."""
    group = open_store(image_store)
    array_path = f"{IMAGES}/{name}"
    if array_path not in group:
        raise InputError(image_store, f"no image {name!r}", f"one of {store_meta(group).get('names')}")
    return group[array_path]


def _check_compatible(model: UNet, model_path: Path, image: zarr.Array, image_store: Path, name: str) -> None:
    """Refuse an image with other channels than the model was trained on, before anything is written.

    The network would fail on the first batch anyway, but only inside a dask task, after the
    partial output was created; this names the image, the model and the fix instead.
    """
    channels = image.shape[0]
    if channels != model.config["in_channels"]:
        raise InputError(
            image_store,
            f"image {name!r} has {channels} channel(s) but the model {model_path} expects"
            f" {model.config['in_channels']}",
            "the model to be trained on images with the same channels as the images to predict",
        )


def _resumable(partial: Path, fingerprint: str) -> bool:
    """Whether ``partial`` is an unfinished prediction of exactly this model, image and settings."""
    if not (partial / DONE_DIR).is_dir():
        return False
    try:
        return open_ome_image(partial).attrs.get("fingerprint") == fingerprint
    except Exception:  # a store torn by a kill during creation is simply started again
        return False


def _prediction_attrs(
    model: UNet,
    model_path: Path,
    image_store: Path,
    name: str,
    layout: TileLayout,
    options: PredictOptions,
    normalization: dict[str, Any],
    precision: Precision,
    fingerprint: str,
    rule: InstanceRule,
) -> dict[str, Any]:
    """The unetflow attributes of a new prediction: provenance, geometry and the resume fingerprint.

    ``complete`` stays False until ``_finalise`` sets it with the instance count.
    """
    return {
        "kind": "prediction",
        "image": name,
        "source_store": str(image_store),
        "model": str(model_path),
        "n_classes": model.config["n_classes"],
        "normalization": normalization,
        "tile": layout.tile,
        "margin": layout.margin,
        "tta": options.tta,
        "dtype": options.dtype,
        "precision": precision.name,
        "connectivity": int(CONNECTIVITY.sum() - 1),
        "instances": {"seeds": "class 1", **rule.to_json()},
        "pixel_size": image_pixel_size(open_store(image_store), name),  # the input's, in the NGFF scales too
        "fingerprint": fingerprint,
        "complete": False,
    }


def _open_or_resume_partial(
    partial: Path, attrs: dict[str, Any], height: int, width: int, options: PredictOptions
) -> None:
    """Keep ``partial`` when it resumes this very prediction, else start it empty with ``attrs``.

    Anything else at that path (another model, image or settings, or a store torn during its
    creation) is deleted, so chunks of different predictions are never mixed. The marker folder
    is made last: its presence is what ``_resumable`` takes for a fully created store.
    """
    if _resumable(partial, attrs["fingerprint"]):  # same probabilities; objects maybe by other tuned values
        root = zarr.open_group(str(partial), mode="r+")
        root.attrs[ATTRS_KEY] = {**root.attrs[ATTRS_KEY], "instances": attrs["instances"]}
        return
    shutil.rmtree(partial, ignore_errors=True)
    create_prediction(
        partial,
        n_classes=attrs["n_classes"],
        height=height,
        width=width,
        chunk=options.chunk,
        levels=options.pyramid_levels,
        dtype=options.dtype,
        attrs=attrs,
        seeds=attrs["instances"]["grow"] + attrs["instances"]["expand"] > 0,
        pixel_size=PixelSize.from_json(attrs["pixel_size"]),
    )
    (partial / DONE_DIR).mkdir()


def _chunk_jobs(
    grid: ChunkGrid,
    image: zarr.Array,
    image_store: Path,
    partial: Path,
    model_path: Path,
    layout: TileLayout,
    stats: Stats,
    options: PredictOptions,
    device: str,
    precision: Precision,
    torch_threads: int,
) -> list[ChunkJob]:
    """One job per output chunk of ``grid`` that has no completion marker yet in ``partial``.

    Skipping marked chunks is the whole of resuming: a marker is written only after its chunk.
    """
    cached_chunks = cache_capacity(image.chunks, layout, options.chunk)
    return [
        ChunkJob(
            image_store=str(image_store),
            image_array=image.path,
            out_store=str(partial),
            model_path=str(model_path),
            device=device,
            precision=precision,
            torch_threads=torch_threads,
            layout=layout,
            index=index,
            region=box,
            stats=stats,
            batch_size=options.batch_size,
            tta=options.tta,
            cached_chunks=cached_chunks,
        )
        for index, box in grid
        if not marker(partial, index).exists()
    ]


def _run_jobs(
    run: DaskRunner, partial: Path, jobs: Sequence[ChunkJob], name: str, rule: InstanceRule, n_chunks: int
) -> int:
    """Predict the chunks, label instances and build the pyramid; the number of instances.

    All of it is one graph, so labels and pyramid chunks wait only for the chunks they are
    computed from, not for the whole level 0. The decoded-input cache is released afterwards,
    also on failure, as the next image (or a rerun) reads another array.
    """
    predicted = {job.index: dask.delayed(predict_chunk, pure=False)(job) for job in jobs}
    counted, relabelled = instance_labels(partial, predicted, rule)
    downsampled = [
        *pyramid(partial, PROBABILITIES, predicted),
        *pyramid(partial, SEMANTIC, predicted),
        *pyramid(partial, INSTANCES, relabelled),
    ]
    try:
        progress = functools.partial(_chunks_done, partial, n_chunks)
        with remembering(partial):  # chunks written here are read back from memory (chunk_memo)
            n_objects, *_ = run([counted, *downsampled], f"predict {name}", progress, width=len(jobs))
    finally:
        _cached_image.cache_clear()  # release this image's decoded input chunks
    return n_objects


def _chunks_done(partial: Path, n_chunks: int) -> tuple[int, int]:
    """(chunks written, chunks of the image): the progress a log line reports, read from the markers."""
    with os.scandir(partial / DONE_DIR) as markers:
        return sum(1 for _ in markers), n_chunks


def _finalise(partial: Path, out: Path, n_objects: int) -> None:
    """Mark ``partial`` complete, drop its chunk markers and rename it to ``out``.

    The rename is the last step, so ``out`` only ever holds a complete prediction (an older
    ``out`` of other settings is replaced, not merged).
    """
    root = zarr.open_group(str(partial), mode="r+")
    root.attrs[ATTRS_KEY] = {**root.attrs[ATTRS_KEY], "n_instances": n_objects, "complete": True}
    shutil.rmtree(partial / DONE_DIR)
    shutil.rmtree(partial / SEEDS, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)


def predict_image(
    model_path: str | Path,
    image_store: str | Path,
    name: str,
    out: str | Path,
    options: PredictOptions,
    runner: DaskRunner | None = None,
    export: Exporter | None = None,
    tuned: dict[str, Any] | None = None,
) -> Path:
    """Predict image ``name`` of a unetflow image store into the OME-Zarr image ``out``.

    Objects follow the model's recipe with the thresholds and ``min_size`` of ``tuned`` (the
    ``chunked`` entry of tune's tuned.json), else the defaults. Resumes ``<out>.partial`` when it
    was started with the same model, image and settings (the objects are always labelled again,
    so other tuned values reuse the probabilities); returns at once when ``out`` is already
    complete with them. ``export`` (the OME-TIFF writer when ``predict.ome_tiff``) then writes
    ``ome_tiff_path(out)``, also for a complete ``out`` whose export is missing (a run killed in
    between).
    """
    model_path, image_store, out = Path(model_path), Path(image_store), Path(out)
    image = _open_image(image_store, name)
    model, recipe, rule = _load_for_checks(model_path)
    if tuned is not None:
        rule = rule.with_tuned(tuned)
    _check_compatible(model, model_path, image, image_store, name)
    stats = recipe.statistics(image)  # of the whole image or slide (streamed), before any chunk job
    device = pick_device(options.device)
    precision = resolve_precision(options.precision, device)
    fingerprint = _fingerprint(checkpoint_file(model_path), image_store, image, stats, options, precision)
    if out.exists():
        done = open_ome_image(out).attrs
        if done.get("fingerprint") == fingerprint and done.get("instances") == {"seeds": "class 1", **rule.to_json()}:
            log.info("%s: already complete, skipped", out)
            if export is not None and not ome_tiff_path(out).exists():
                export(out)
            return out
    ome_tiff_path(out).unlink(missing_ok=True)  # an export of an earlier prediction
    partial = out.with_name(out.name + PARTIAL)
    _, height, width = image.shape
    layout = tile_layout(model, options.tile, options.chunk, height, width)
    normalization = {**recipe.to_json(), **stats.to_json()}
    attrs = _prediction_attrs(
        model, model_path, image_store, name, layout, options, normalization, precision, fingerprint, rule
    )
    _open_or_resume_partial(partial, attrs, height, width, options)
    grid = ChunkGrid(height, width, options.chunk)
    with own_runner(options, runner) as run:
        device = run.prepare([image_store, partial, checkpoint_file(model_path)], options.device)
        jobs = _chunk_jobs(
            grid, image, image_store, partial, model_path, layout, stats, options, str(device), precision,
            run.torch_threads,
        )
        log.info(
            "%s: %d of %d chunks to predict (tile %d, margin %d)", name, len(jobs), len(grid), layout.tile, layout.margin
        )
        n_objects = _run_jobs(run, partial, jobs, name, rule, len(grid))
    _finalise(partial, out, n_objects)
    if export is not None:
        log.info("%s: writing %s", name, ome_tiff_path(out))
        export(out)
    return out


def predict_store(
    model_path: str | Path,
    image_store: str | Path,
    out_dir: str | Path,
    split: str,
    options: PredictOptions,
    export: Exporter | None = None,
    tuned: dict[str, Any] | None = None,
) -> Path:
    """Predict every image of ``split`` into ``<out_dir>/<name>.ome.zarr`` (and ``<name>.ome.tif``
    through ``export``, see ``predict_image``).

    The folder is assembled in ``<out_dir>.partial`` (which survives a killed run, so a rerun
    resumes it) and renamed to ``out_dir`` once every image is complete.
    """
    out_dir = Path(out_dir)
    names = split_names(open_store(image_store), split)
    _load_for_checks(Path(model_path))  # a missing or unreadable model fails before anything is written
    staging = out_dir.with_name(out_dir.name + PARTIAL)
    staging.mkdir(parents=True, exist_ok=True)
    with DaskRunner(options) as runner:
        for name in names:
            predict_image(model_path, image_store, name, staging / f"{name}.ome.zarr", options, runner, export, tuned)
    expected = {f"{name}.ome.zarr" for name in names} | {f"{name}.ome.tif" for name in names if export}
    for leftover in staging.iterdir():  # images of an earlier, different run of this folder
        if leftover.name not in expected:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir
