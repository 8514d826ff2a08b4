"""The predict stage: overlap-tile inference of a trained U-Net over zarr images of any size,
one dask task per output chunk, into resumable OME-Zarr predictions.

The output is cut into chunks (``ChunkGrid``); one dask task per chunk reads the chunk's input
block with its context halo through a shared decoded-chunk cache (``unetflow.chunk_cache``),
runs its tiles through the model (``unetflow.inference``) and writes exactly one zarr chunk of
probabilities and of argmax labels, then marks the chunk done. Every block is normalised as it
is read, by the model's recipe (``unetflow.normalize``) with the statistics of the whole image
or slide, computed (streamed) before the chunk tasks start. Because the network uses valid
convolutions and tiles sit on its pooling grid, the result equals whole-image inference; because
each task holds one chunk, memory is bounded by the chunk size and the number of chunks in
flight, never by the slide.

This module orchestrates one image and one store; the output store's life (fingerprint, resume,
finalise) is ``unetflow.prediction_store``, where the tasks run is ``unetflow.scheduling``.
Instance labels and pyramid levels are derived chunk-wise from level 0 in the same graph.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import torch
import zarr

from unetflow.chunk_cache import cache_capacity, hold_decoded, release_shared_image, shared_image
from unetflow.config import stage_settings
from unetflow.devices import Precision, pick_device, resolve_precision
from unetflow.inference import (
    argmax_classes,
    checkpoint_file,
    load_trained_model,
    predict_region_at,
    shared_predictor,
    trained_rescaled,
    training_object_diameter,
    zoomed_layout,
)
from unetflow.instances import InstanceRule
from unetflow.io.chunk_memo import remembering, write_chunk
from unetflow.io.errors import InputError
from unetflow.io.chunked_instances import instance_labels
from unetflow.io.ome_zarr import (
    INSTANCES,
    PROBABILITIES,
    SEMANTIC,
    level_path,
    ome_tiff_path,
    pyramid,
)
from unetflow.io.pixel_size import PixelSize
from unetflow.model import UNet
from unetflow.normalize import NormalizedArray, Stats, read_whole
from unetflow.prediction_store import (
    PartialLayout,
    chunks_done,
    finalise,
    fingerprint,
    is_complete,
    marker,
    open_partial,
    partial_path,
    prediction_attrs,
    start_partial,
)
from unetflow.rescale import ZOOM_RANGE, ZoomEstimate, estimate_zoom, native_cache_layout, sample_regions
from unetflow.scheduling import DaskRunner, own_runner
from unetflow.store import IMAGES, image_pixel_size, open_store, split_names, store_meta
from unetflow.tiling import Box, ChunkGrid, TileLayout

log = logging.getLogger(__name__)

#: writes the OME-TIFF export of a finished OME-Zarr prediction (``unetflow.io.ome_tiff.write_ome_tiff``,
#: passed in by the predict command, so that this module needs no tifffile)
Exporter = Callable[[Path], Path]


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
    diameter: float | str | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None = None) -> PredictOptions:
        """Validate a (partial) ``predict`` section and fill the schema defaults."""
        filled = stage_settings("predict", settings_json=json.dumps(settings or {}))
        return cls(**{f.name: filled[f.name] for f in dataclasses.fields(cls)})


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
    forward_threads: int
    layout: TileLayout
    index: tuple[int, int]
    region: Box
    stats: Stats
    batch_size: int
    tta: bool
    cached_chunks: int
    zoom: float = 1.0


def predict_chunk(job: ChunkJob) -> None:
    """Predict one output chunk, write its probabilities and argmax, then mark it done."""
    predictor = shared_predictor(job.model_path, job.device, job.precision, job.forward_threads)
    cached = shared_image(job.image_store, job.image_array, job.cached_chunks)
    image = NormalizedArray(cached, job.stats)  # whole-image statistics, never per tile
    probs = predict_region_at(predictor, image, job.layout, job.region, job.batch_size, job.tta, job.zoom)
    write_chunk(job.out_store, level_path(PROBABILITIES, 0), job.region, probs)
    write_chunk(job.out_store, level_path(SEMANTIC, 0), job.region, argmax_classes(probs))
    marker(job.out_store, job.index).touch()


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
    forward_threads: int,
    zoom: float,
) -> list[ChunkJob]:
    """One job per output chunk of ``grid`` that has no completion marker yet in ``partial``.

    Skipping marked chunks is the whole of resuming: a marker is written only after its chunk.
    """
    cached_chunks = cache_capacity(image.chunks, native_cache_layout(layout, zoom), options.chunk)
    return [
        ChunkJob(
            image_store=str(image_store),
            image_array=image.path,
            out_store=str(partial),
            model_path=str(model_path),
            device=device,
            precision=precision,
            forward_threads=forward_threads,
            layout=layout,
            index=index,
            region=box,
            stats=stats,
            batch_size=options.batch_size,
            tta=options.tta,
            cached_chunks=cached_chunks,
            zoom=zoom,
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
    try:
        with remembering(partial):  # chunks written here are read back from memory (chunk_memo)
            predicted = {job.index: dask.delayed(predict_chunk, pure=False)(job) for job in jobs}
            counted, relabelled = instance_labels(partial, predicted, rule)
            downsampled = [
                *pyramid(partial, PROBABILITIES, predicted),
                *pyramid(partial, SEMANTIC, predicted),
                *pyramid(partial, INSTANCES, relabelled),
            ]
            progress = functools.partial(chunks_done, partial, n_chunks)  # what a distributed run reports
            n_objects, *_ = run([counted, *downsampled], f"predict {name}", progress, width=len(jobs))
    finally:
        release_shared_image()  # this image's decoded input chunks
    return n_objects


def _rescale(
    model: UNet, model_path: Path, image: NormalizedArray, rule: InstanceRule, options: PredictOptions, precision: Precision
) -> ZoomEstimate | None:
    """The zoom ``predict.diameter`` asks for (``unetflow.rescale``), or None for no resampling.

    ``auto`` predicts sample chunks in this process (no TTA) to size the objects; a number is the
    objects' diameter in pixels, which must give a zoom within ``ZOOM_RANGE``.
    """
    if options.diameter is None:
        if trained_rescaled(model_path):
            log.warning(
                "%s was trained at one object size (train.rescale) but predict.diameter is null: images are "
                "predicted at their own size, which the model may never have seen; set predict.diameter: auto",
                model_path,
            )
        return None
    target = training_object_diameter(model_path)
    if target is None:
        raise InputError(
            model_path,
            "the model records no size of its training objects, so predict.diameter has nothing to rescale to",
            "a model trained on labelled objects by this version, or predict.diameter: null",
        )
    if options.diameter != "auto":
        zoom = target / float(options.diameter)
        if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
            raise InputError(
                model_path,
                f"predict.diameter {options.diameter} px against the model's {target:.1f} px is a zoom of {zoom:.3g}",
                f"a diameter giving a zoom within {ZOOM_RANGE[0]}..{ZOOM_RANGE[1]}",
            )
        return ZoomEstimate(zoom, [], target)
    predictor = shared_predictor(str(model_path), str(pick_device(options.device)), precision)
    _, height, width = image.shape

    def objects(region: Box, zoom: float) -> Any:
        layout = zoomed_layout(model, options.tile, options.chunk, height, width, zoom)
        return rule.objects(predict_region_at(predictor, image, layout, region, options.batch_size, False, zoom))

    estimate = estimate_zoom(objects, sample_regions(height, width, options.chunk), target)
    log.info("object size: %s -> zoom %g", estimate.to_json()["passes"], estimate.zoom)
    return estimate


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
    model, recipe, rule = load_trained_model(model_path)
    if tuned is not None:
        rule = rule.with_tuned(tuned)
    _check_compatible(model, model_path, image, image_store, name)
    precision = resolve_precision(options.precision, pick_device(options.device))
    identity = fingerprint(checkpoint_file(model_path), image_store, image, options, precision)
    if is_complete(out, identity, rule):  # checked first: a finished prediction costs no statistics
        log.info("%s: already complete, skipped", out)
        if export is not None and not ome_tiff_path(out).exists():
            export(out)
        return out
    ome_tiff_path(out).unlink(missing_ok=True)  # an export of an earlier prediction
    partial = partial_path(out)
    _, height, width = image.shape
    pixel_size = image_pixel_size(open_store(image_store), name)
    arrays = PartialLayout(
        model.config["n_classes"], height, width, rule.grow + rule.expand > 0, PixelSize.from_json(pixel_size)
    )
    with ThreadPoolExecutor(1) as creator:  # the output's arrays are made while the statistics are computed
        started = creator.submit(start_partial, partial, identity, arrays, options)
        try:
            pixels = image[...] if read_whole(image.shape) else None  # decoded once, for statistics and chunks
            source = image if pixels is None else pixels
            stats = recipe.statistics(source)  # of the whole image or slide (streamed), before any chunk job
            rescale = _rescale(model, model_path, NormalizedArray(source, stats), rule, options, precision)
        except BaseException:  # e.g. a diameter the model cannot be zoomed to: leave nothing behind
            if not started.result():  # made by this run, empty
                shutil.rmtree(partial, ignore_errors=True)
            raise
        resumed = started.result()
    zoom = rescale.zoom if rescale is not None else 1.0
    layout = zoomed_layout(model, options.tile, options.chunk, height, width, zoom)
    normalization = {**recipe.to_json(), **stats.to_json()}
    attrs = prediction_attrs(
        model, model_path, image_store, name, layout, options, normalization, precision, identity, rule, pixel_size
    )
    attrs["rescale"] = None if rescale is None else rescale.to_json()
    open_partial(partial, attrs, resumed)
    grid = ChunkGrid(height, width, options.chunk)
    threads = torch.get_num_threads()  # this thread's; the chunk tasks' threads share them out
    with own_runner(options, runner) as run:
        device = run.prepare([image_store, partial, checkpoint_file(model_path)], options.device)
        forward_threads = run.forward_threads(threads)
        jobs = _chunk_jobs(
            grid, image, image_store, partial, model_path, layout, stats, options, str(device), precision,
            forward_threads, zoom,
        )
        log.info(
            "%s: %d of %d chunks to predict (tile %d, margin %d, zoom %g, %d torch thread(s) per forward)",
            name, len(jobs), len(grid), layout.tile, layout.margin, zoom, forward_threads,
        )
        if pixels is not None:
            hold_decoded(str(image_store), image.path, pixels)  # released with the shared cache by _run_jobs
        try:
            n_objects = _run_jobs(run, partial, jobs, name, rule, len(grid))
        finally:
            torch.set_num_threads(threads)  # torch's default for new threads, which a task's share changed
    finalise(partial, out, n_objects)
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
    load_trained_model(Path(model_path))  # a missing or unreadable model fails before anything is written
    staging = partial_path(out_dir)
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
