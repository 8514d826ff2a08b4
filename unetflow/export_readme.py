"""The README.md of a bioimage.io package: what goes in, what comes out, how unetflow forms
objects from the probabilities (no bioimage.io op does), and the measured test metrics.

Apart from ``unetflow.export``, which writes and validates the package's files, because this is
prose about the model rather than a file format; the two facts both state about the model (its
valid input edges and its class names) live here.
"""

from __future__ import annotations

import json
from typing import Any

from unetflow.instances import InstanceRule
from unetflow.model import UNet
from unetflow.normalize import Normalization

CLASS_NAMES = {2: ["background", "object"], 3: ["background", "interior", "boundary"]}


def input_sizes(model: UNet) -> tuple[int, int]:
    """(smallest valid input edge, step between valid edges): the spec's ``ParameterizedSize``."""
    return model.input_size(model.valid_output_size(1)), 2 ** (model.depth - 1)


def documentation(
    name: str,
    description: str,
    model: UNet,
    recipe: Normalization,
    checkpoint: dict[str, Any],
    rule: InstanceRule,
    summary: dict[str, Any] | None,
    source: str,
) -> str:
    """README.md of the package: what goes in, what comes out, how objects are made, how well."""
    smallest, step = input_sizes(model)
    if recipe.method == "percentile":
        pre = (
            f"Per image and channel, `(x - p{recipe.low:g}) / (p{recipe.high:g} - p{recipe.low:g})` with the "
            f"image's own percentiles {recipe.low:g} and {recipe.high:g} (bioimage.io `scale_range` over y, x). "
            "Compute the percentiles over the whole image, not per tile, when you tile a large image yourself."
        )
    else:
        pre = f"Per channel, `(x - mean) / std` with the training images' mean {list(recipe.mean or [])} and std {list(recipe.std or [])}."
    target = checkpoint.get("recipe", {}).get("target", {})
    n_classes = model.config["n_classes"]
    if n_classes == 3:
        objects = (
            f"Objects: the connected regions of class 1 (interior) are seeds, grown by up to {rule.grow} pixels "
            f"through the foreground (classes 1 and 2) and widened by {rule.expand} pixels where no other object "
            "is, so touching objects separate along the predicted boundary."
        )
    else:
        objects = (
            "Objects: the connected regions where class 1 (object) is most probable"
            + (f", grown by up to {rule.grow} pixels" if rule.grow else "")
            + (f" and widened by {rule.expand} pixels" if rule.expand else "")
            + "."
        )
    lines = [
        f"# {name}",
        "",
        description,
        "",
        "A U-Net (Ronneberger et al. 2015) with valid convolutions, trained and exported by unetflow "
        f"(depth {model.config['depth']}, {model.config['base_channels']} base channels, {n_classes} classes).",
        "",
        "## Input",
        "",
        f"(batch, channel, y, x) float32 with {model.config['in_channels']} channel(s). Valid edges are "
        f"{smallest} + n * {step}; the output is {2 * model.margin} pixels smaller per axis (the context "
        f"margin of {model.margin} pixels per side is used up by the valid convolutions). To segment a whole "
        "image, tile it with overlapping inputs (mirror the image at its border), as unetflow's predictor does.",
        "",
        "## Preprocessing",
        "",
        pre,
        "",
        "## Output and post-processing",
        "",
        f"Class probabilities (softmax over channels): {', '.join(CLASS_NAMES.get(n_classes, []))}. "
        "The class is the most probable one. bioimage.io has no operation for the instance step, so "
        "tools stop at the probabilities; unetflow forms instances as follows.",
        "",
        objects,
        "",
        f"Training target: {json.dumps(target, sort_keys=True)}. "
        f"Object size of the training set: {json.dumps(checkpoint.get('recipe', {}).get('object_size'), sort_keys=True)}.",
        "",
        "## Test metrics",
        "",
    ]
    if summary is None:
        lines.append("Not measured: the model was exported without an evaluation.")
    else:
        keys = [k for k in ("pixel_error", "rand_error", "mean_ap") if isinstance(summary.get(k), (int, float))]
        keys += sorted(k for k in summary if k.startswith(("f1", "seg")) and isinstance(summary[k], (int, float)))
        caveat = " (its val images double as test: optimistic)" if summary.get("val_doubles_as_test") else ""
        lines += [
            f"Measured by unetflow on the {summary.get('split')} split, {len(summary.get('images', []))} image(s)"
            f"{caveat}, objects post-processed by {json.dumps(summary.get('postprocess'), sort_keys=True)}:",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {key} | {summary[key]:.4f} |" for key in keys],
        ]
    lines += [
        "",
        "## Test tensors",
        "",
        f"`test_input.npy` is a crop of image `{source}`; `test_output.npy` is what unetflow's own predictor "
        "computes for it after the preprocessing above.",
        "",
    ]
    return "\n".join(lines)
