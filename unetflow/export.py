"""Export a trained model as a bioimage.io model package (rdf.yaml, spec 0.5), for other tools.

Fiji (deepImageJ), ilastik, QuPath and napari open models in the bioimage.io format. The package
holds what those tools need to run our net without unetflow:

* TorchScript and ONNX weights of the net *with the softmax folded in*: the output is the class
  probabilities unetflow's predictor writes, and no post-processing op is needed;
* the input shape as ``min + n * step`` (the smallest valid input edge, and the pooling stride:
  only those edges pass every 2x2 pooling) and the output size as the input's minus twice the
  context margin (valid convolutions crop it inside the net, which the spec states with a
  negative ``offset`` rather than a halo);
* the normalisation recipe as the spec's preprocessing: per-image percentiles are ``scale_range``
  over each channel, a fitted zscore is ``fixed_zero_mean_unit_variance`` per channel;
* test tensors: a crop of a real image of the data store and the probabilities *our* predictor
  (``unetflow.inference.TilePredictor``) computes for it after normalising it by the recipe, so
  bioimage.io's ``test_model`` checks that its runtime reproduces unetflow;
* a cover image (the evaluation overlays when given, else the test crop beside its prediction)
  and documentation: the preprocessing, how instances are formed from the classes (no bioimage.io
  op does that), and the measured test metrics.

The package is built in a temporary sibling folder and renamed to ``out`` only when bioimage.io's
own validator accepted it (and, with ``check``, its ``test_model`` reproduced the test output), so
a folder at ``out`` is always a valid package.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unetflow.config import ConfigError
from unetflow.devices import resolve_precision
from unetflow.export_readme import CLASS_NAMES, documentation, input_sizes
from unetflow.io.errors import InputError
from unetflow.model import UNet, load_checkpoint
from unetflow.normalize import Normalization, apply
from unetflow.plots.common import display_image
from unetflow.plots.evaluation import save_rgb
from unetflow.inference import TilePredictor, load_trained_model
from unetflow.store import IMAGES, atomic_output, file_digest, open_store, split_names
from unetflow.tiling import read_window

log = logging.getLogger(__name__)

RDF = "rdf.yaml"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
ONNX_OPSET = 17
TEST_SPLITS = ("test", "val", "all")  # where the test crop comes from, first non-empty
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
    "doi": "10.1007/978-3-319-24574-4_28",
}


@dataclass(frozen=True)
class ExportSettings:
    """The ``export`` config section (see the schema for each key's meaning)."""

    name: str
    description: str
    authors: list[dict[str, str]]
    license: str
    cite: list[dict[str, str]]
    tags: list[str]
    test_size: int
    check: bool

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ExportSettings:
        return cls(**{key: settings[key] for key in cls.__dataclass_fields__})


class Probabilities(torch.nn.Module):
    """The net with its softmax: what unetflow's predictor computes per tile, as one module."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def crop_edge(model: UNet, wanted: int) -> int:
    """The largest valid input edge <= ``wanted`` (the smallest valid one when ``wanted`` is below it)."""
    smallest, step = input_sizes(model)
    return smallest + step * max(0, (wanted - smallest) // step)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, as the rdf records it for every file (bioimage.io checks them)."""
    return file_digest(path).hexdigest()


# -- pieces of the package -------------------------------------------------------------------------
def sample_crop(data_store: Path, edge: int) -> tuple[str, np.ndarray]:
    """A centred ``edge``-square (C, edge, edge) crop, as float32, of the first image of the first
    non-empty split of ``TEST_SPLITS`` (mirrored where the image is smaller)."""
    store = open_store(data_store, "dataset")
    names = next((names for split in TEST_SPLITS if (names := split_names(store, split))), [])
    if not names:
        raise InputError(data_store, "the store holds no images", "a dataset store written by `unetflow ingest`")
    image = store[f"{IMAGES}/{names[0]}"]
    y0 = (image.shape[-2] - edge) // 2
    x0 = (image.shape[-1] - edge) // 2
    return names[0], read_window(image, y0, x0, edge, edge).astype(np.float32)


def preprocessing(recipe: Normalization) -> list[dict[str, Any]]:
    """The recipe as bioimage.io preprocessing steps on a (batch, channel, y, x) tensor."""
    if recipe.method == "percentile":
        kwargs = {"axes": ["y", "x"], "min_percentile": recipe.low, "max_percentile": recipe.high}
        return [{"id": "scale_range", "kwargs": kwargs}]
    assert recipe.mean is not None and recipe.std is not None
    kwargs = {"mean": list(recipe.mean), "std": list(recipe.std), "axis": "channel"}
    return [{"id": "fixed_zero_mean_unit_variance", "kwargs": kwargs}]


def write_weights(model: UNet, example: torch.Tensor, folder: Path) -> dict[str, Any]:
    """TorchScript (traced: sizes stay symbolic, so any valid edge runs) and ONNX weights."""
    module = Probabilities(model).eval()
    # bioimage.io's formats are TorchScript and ONNX; torch deprecates torch.jit and the
    # TorchScript-based ONNX exporter (its successor needs onnxscript) but both work, and
    # test_model checks the result, so their warnings are noise in the rule's log.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example)
        traced.save(str(folder / "weights.torchscript.pt"))
        dynamic = {0: "batch", 2: "y", 3: "x"}
        torch.onnx.export(
            module, (example,), str(folder / "weights.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_ID], output_names=[OUTPUT_ID], dynamic_axes={INPUT_ID: dynamic, OUTPUT_ID: dynamic},
        )  # fmt: skip
    import onnx

    onnx.checker.check_model(str(folder / "weights.onnx"), full_check=True)  # shapes and opset agree
    return {
        "torchscript": {
            "source": "weights.torchscript.pt",
            "sha256": sha256(folder / "weights.torchscript.pt"),
            "pytorch_version": torch.__version__.split("+")[0],
        },
        "onnx": {
            "source": "weights.onnx",
            "sha256": sha256(folder / "weights.onnx"),
            "opset_version": ONNX_OPSET,
            "parent": "torchscript",
        },
    }


def tensor_descriptions(model: UNet, recipe: Normalization, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output tensor descriptions (rdf ``inputs[0]``, ``outputs[0]``); the test
    tensors are already in ``folder``."""
    smallest, step = input_sizes(model)
    n_in, n_classes = model.config["in_channels"], model.config["n_classes"]
    space_in = [{"type": "space", "id": axis, "size": {"min": smallest, "step": step}} for axis in ("y", "x")]
    offset = -2 * model.margin  # the context the valid convolutions crop
    space_out = [
        {"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis, "offset": offset}}
        for axis in ("y", "x")
    ]
    classes = CLASS_NAMES.get(n_classes, [f"class{k}" for k in range(n_classes)])
    inputs = {
        "id": INPUT_ID,
        "description": "image as acquired (any intensity range); the preprocessing normalises it",
        "axes": [
            {"type": "batch"},
            {"type": "channel", "channel_names": [f"channel{c}" for c in range(n_in)]},
            *space_in,
        ],
        "test_tensor": {"source": "test_input.npy", "sha256": sha256(folder / "test_input.npy")},
        "data": {"type": "float32"},
        "preprocessing": preprocessing(recipe),
    }
    outputs = {
        "id": OUTPUT_ID,
        "description": "class probabilities (softmax over the channel axis)",
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": classes}, *space_out],
        "test_tensor": {"source": "test_output.npy", "sha256": sha256(folder / "test_output.npy")},
        "data": {"type": "float32", "range": [0.0, 1.0]},
    }
    return inputs, outputs


def write_cover(folder: Path, crop: np.ndarray, probs: np.ndarray, overlays: Path | None) -> str:
    """``cover.png``: the evaluation overlays when given, else the crop beside its probabilities."""
    if overlays is not None:
        shutil.copyfile(overlays, folder / "cover.png")
        return "cover.png"
    margin = (crop.shape[-1] - probs.shape[-1]) // 2
    centre = crop[:, margin : margin + probs.shape[-2], margin : margin + probs.shape[-1]]
    shown = probs[1:4] if probs.shape[0] >= 4 else probs[1:]  # foreground classes as colours
    rgb = np.zeros((*probs.shape[1:], 3), dtype=np.float32)
    rgb[..., : shown.shape[0]] = np.moveaxis(shown, 0, -1)
    if shown.shape[0] == 1:
        rgb[...] = shown[0][..., None]
    pair = np.concatenate([display_image(centre), rgb], axis=1)
    save_rgb((np.clip(pair, 0, 1) * 255).astype(np.uint8), folder / "cover.png")
    return "cover.png"


# -- the package ------------------------------------------------------------------------------------
def export_bioimageio(
    model_dir: str | Path,
    data_store: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    *,
    evaluation: str | Path | None = None,
    overlays: str | Path | None = None,
    zip_path: str | Path | None = None,
) -> Path:
    """Write the bioimage.io package of ``model_dir`` to the folder ``out`` (atomically).

    ``evaluation`` is an evaluation folder whose summary.json gives the documented test metrics;
    ``overlays`` a PNG used as the cover; ``zip_path`` also writes the package as one zip file
    (what deepImageJ installs and bioimage.io uploads take).
    """
    options = ExportSettings.from_settings(settings)
    _require_export_extra()
    model_dir, data_store, out = Path(model_dir), Path(data_store), Path(out)
    model, recipe, rule = load_trained_model(model_dir)
    checkpoint = load_checkpoint(model_dir)
    summary = None
    if evaluation is not None:
        summary_path = Path(evaluation) / "summary.json"
        if not summary_path.is_file():
            raise InputError(evaluation, "no summary.json", "an evaluation folder written by `unetflow evaluate`")
        summary = json.loads(summary_path.read_text())
    if overlays is not None and not Path(overlays).is_file():
        raise InputError(overlays, "no such file", "the evaluation overlays PNG")

    source, crop = sample_crop(data_store, crop_edge(model, options.test_size))
    if crop.shape[0] != model.config["in_channels"]:
        raise InputError(data_store, f"image {source!r} has {crop.shape[0]} channel(s)", f"{model.config['in_channels']}, as the model")
    normalised = apply(crop, recipe.statistics(crop))
    # fp32 as the exported weights (bf16 would be another net); a copy, since the predictor may
    # change the model's memory layout and the weights are exported in the standard one
    cpu = torch.device("cpu")
    probs = TilePredictor(copy.deepcopy(model), cpu, resolve_precision("fp32", cpu))(normalised[None])

    with atomic_output(out) as tmp:
        tmp.mkdir()
        np.save(tmp / "test_input.npy", crop[None])
        np.save(tmp / "test_output.npy", probs)
        weights = write_weights(model, torch.from_numpy(normalised[None]), tmp)
        inputs, outputs = tensor_descriptions(model, recipe, tmp)
        cover = write_cover(tmp, crop, probs[0], None if overlays is None else Path(overlays))
        (tmp / "README.md").write_text(documentation(options.name, options.description, model, recipe, checkpoint, rule, summary, source))
        rdf = {
            "type": "model",
            "format_version": spec_version(),
            "name": options.name,
            "description": options.description,
            "authors": options.authors,
            "cite": [UNET_CITATION, *options.cite],
            "license": options.license,
            "tags": list(options.tags),
            "documentation": {"source": "README.md", "sha256": sha256(tmp / "README.md")},
            "covers": [{"source": cover, "sha256": sha256(tmp / cover)}],
            "inputs": [inputs],
            "outputs": [outputs],
            "weights": weights,
        }
        (tmp / RDF).write_text(yaml.safe_dump(rdf, sort_keys=False))
        validate_package(tmp / RDF, test=options.check)
    log.info("bioimage.io package written to %s", out)
    if zip_path is not None:
        write_zip(out, Path(zip_path))
    return out


def write_zip(folder: Path, path: Path) -> None:
    """The package folder as a zip with rdf.yaml and its files at the top level (atomically)."""
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    log.info("bioimage.io package zipped to %s", path)


def _require_export_extra() -> None:
    """Fail before any work when the packages of the ``export`` extra are missing."""
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            return False

    missing = [name for name in ("bioimageio.core", "onnx", "onnxruntime") if not installed(name)]
    if missing:
        raise ConfigError(
            f"export: the bioimage.io package needs {missing}: pip install 'unetflow[export]' "
            "(or set export.bioimageio: false to leave the package out of the workflow)"
        )


def spec_version() -> str:
    """The newest model spec version the installed bioimageio.spec implements (what it validates)."""
    from bioimageio.spec import ModelDescr

    return ModelDescr.implemented_format_version


def validate_package(rdf: str | Path, *, test: bool) -> None:
    """bioimage.io's own validation of a package; with ``test`` also its ``test_model``, which runs
    every weight format on the test input and compares with the test output. A failure raises an
    InputError carrying bioimage.io's report."""
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(rdf, perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        raise InputError(rdf, f"bioimage.io rejects the description:\n{descr.validation_summary.format()}")
    if test:
        summary = test_model(descr)
        if summary.status != "passed":
            raise InputError(rdf, f"bioimage.io test_model failed:\n{summary.format()}")
