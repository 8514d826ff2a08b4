"""The life of one prediction's output store: identify it, resume or create ``<out>.partial``,
mark chunks done, finalise it by renaming.

Work happens in ``<out>.partial``. A chunk task marks its chunk done (an empty file under
``DONE_DIR``) only after its writes returned, so a killed run, rerun with the same model, image
and settings (the same ``fingerprint``), skips the chunks already written. ``finalise`` marks
the store complete and renames it to ``<out>``, so ``<out>`` only ever holds a complete
prediction. Kept apart from ``unetflow.predict`` (which computes the chunks) because none of
this depends on what is computed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr

from unetflow.devices import Precision
from unetflow.instances import CONNECTIVITY, InstanceRule
from unetflow.io.ome_zarr import SEEDS, create_prediction, open_ome_image
from unetflow.io.pixel_size import PixelSize
from unetflow.model import UNet
from unetflow.store import ATTRS_KEY, file_digest, store_meta
from unetflow.tiling import TileLayout

if TYPE_CHECKING:
    from unetflow.predict import PredictOptions

DONE_DIR = ".chunks-done"  # chunk completion markers inside a partial prediction
PARTIAL = ".partial"


def partial_path(out: Path) -> Path:
    """Where the prediction ``out`` is assembled until it is complete."""
    return out.with_name(out.name + PARTIAL)


def marker(out_store: str | Path, index: tuple[int, int]) -> Path:
    """The completion marker of output chunk ``index``."""
    return Path(out_store) / DONE_DIR / f"{index[0]}.{index[1]}"


def chunks_done(partial: Path, n_chunks: int) -> tuple[int, int]:
    """(chunks written, chunks of the image): the progress a log line reports, read from the markers."""
    with os.scandir(partial / DONE_DIR) as markers:
        return sum(1 for _ in markers), n_chunks


def fingerprint(
    checkpoint: Path, image_store: Path, image_array: zarr.Array, options: PredictOptions, precision: Precision
) -> str:
    """Identity of a prediction: model bytes, input image and the settings that change outputs.

    A partial output is resumed, and a complete one kept, only if this matches, so chunks from
    another model, image or tiling are never mixed into a result. The image is identified by its
    store's metadata and the time its array was written (a re-ingested store is a new folder),
    not by hashing pixels. Its normalisation statistics are not part of it: they are a function
    of the image and the model's recipe, both identified already, and leaving them out lets a
    complete prediction be recognised without streaming a whole slide for them.

    The precision is the resolved one (``auto`` means bf16 on one machine and fp32 on another,
    whose outputs differ slightly), so a resumed prediction never mixes chunks of both.
    """
    digest = file_digest(checkpoint)
    written = (image_store / image_array.path / "zarr.json").stat().st_mtime_ns
    relevant = {k: getattr(options, k) for k in ("tile", "chunk", "dtype", "tta", "pyramid_levels")}
    if options.diameter is not None:  # (absent before rescaling existed: those predictions stay valid)
        relevant["diameter"] = options.diameter
    relevant["precision"] = precision.name
    identity = [str(image_store.resolve()), image_array.path, list(image_array.shape), written, relevant]
    digest.update(json.dumps(identity, sort_keys=True).encode())
    digest.update(json.dumps(store_meta(zarr.open_group(str(image_store), mode="r")), sort_keys=True).encode())
    return digest.hexdigest()


def instances_attrs(rule: InstanceRule) -> dict[str, Any]:
    """How the objects of a prediction were formed, as its attributes record it."""
    return {"seeds": "class 1", **rule.to_json()}


def is_complete(out: Path, fingerprint_: str, rule: InstanceRule) -> bool:
    """Whether ``out`` already holds this prediction, objects formed by ``rule`` included."""
    if not out.exists():
        return False
    done = open_ome_image(out).attrs
    return done.get("fingerprint") == fingerprint_ and done.get("instances") == instances_attrs(rule)


def prediction_attrs(
    model: UNet,
    model_path: Path,
    image_store: Path,
    name: str,
    layout: TileLayout,
    options: PredictOptions,
    normalization: dict[str, Any],
    precision: Precision,
    fingerprint_: str,
    rule: InstanceRule,
    pixel_size: dict[str, Any] | None,
) -> dict[str, Any]:
    """The unetflow attributes of a new prediction: provenance, geometry and the resume fingerprint.

    ``complete`` stays False until ``finalise`` sets it with the instance count.
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
        "instances": instances_attrs(rule),
        "pixel_size": pixel_size,  # the input's (``PixelSize.to_json``), in the NGFF scales too
        "fingerprint": fingerprint_,
        "complete": False,
    }


def _resumable(partial: Path, fingerprint_: str) -> bool:
    """Whether ``partial`` is an unfinished prediction of exactly this model, image and settings."""
    if not (partial / DONE_DIR).is_dir():
        return False
    try:
        return open_ome_image(partial).attrs.get("fingerprint") == fingerprint_
    except Exception:  # a store torn by a kill during creation is simply started again
        return False


@dataclass(frozen=True)
class PartialLayout:
    """What the arrays of a new partial prediction are made of (``create_prediction``)."""

    n_classes: int
    height: int
    width: int
    seeds: bool
    pixel_size: PixelSize | None


def start_partial(partial: Path, fingerprint_: str, layout: PartialLayout, options: PredictOptions) -> bool:
    """Keep ``partial`` when it resumes this very prediction (True), else create it empty (False):
    its arrays and NGFF metadata, but no unetflow attributes and no marker folder yet, so until
    ``open_partial`` it counts as torn. Needs nothing the image's statistics decide, so
    ``predict_image`` runs it while they are computed.

    Anything else at that path (another model, image or settings, or a store torn during its
    creation) is deleted, so chunks of different predictions are never mixed.
    """
    if _resumable(partial, fingerprint_):
        return True
    shutil.rmtree(partial, ignore_errors=True)
    create_prediction(
        partial,
        n_classes=layout.n_classes,
        height=layout.height,
        width=layout.width,
        chunk=options.chunk,
        levels=options.pyramid_levels,
        dtype=options.dtype,
        attrs={},
        seeds=layout.seeds,
        pixel_size=layout.pixel_size,
    )
    return False


def open_partial(partial: Path, attrs: dict[str, Any], resumed: bool) -> None:
    """Finish ``start_partial``: a new store gets ``attrs`` and then the marker folder, whose
    presence is what ``_resumable`` takes for a fully created store; a resumed one keeps its
    attributes but for the objects' rule (same probabilities, objects maybe by other tuned values)."""
    root = zarr.open_group(str(partial), mode="r+")
    if resumed:
        root.attrs[ATTRS_KEY] = {**root.attrs[ATTRS_KEY], "instances": attrs["instances"]}
        return
    root.attrs[ATTRS_KEY] = attrs
    (partial / DONE_DIR).mkdir()


def finalise(partial: Path, out: Path, n_objects: int) -> None:
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
