"""Report figures of the evaluate stage: the metric table with matching curves, and overlays.

Overlays are composed as RGB arrays at full resolution (one pixel per image pixel, contours one
pixel wide) rather than drawn as matplotlib contours, so a contour that is off by one pixel is
visible as such: ground truth green, prediction magenta, both yellow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from unetflow.plots.common import display_image, save_figure  # noqa: E402

GT_COLOUR = np.array([0, 255, 0], dtype=np.uint8)
PRED_COLOUR = np.array([255, 0, 255], dtype=np.uint8)
BOTH_COLOUR = np.array([255, 255, 0], dtype=np.uint8)

#: rows of the metric table: summary key, label, decimals
TABLE_ROWS = (
    ("pixel_error", "pixel error", 4),
    ("fg_iou", "foreground IoU", 3),
    ("fg_dice", "foreground Dice", 3),
    ("rand_error", "Rand error (foreground-restricted)", 4),
    ("rand_precision", "Rand precision (merge score)", 3),
    ("rand_recall", "Rand recall (split score)", 3),
    ("vi_split", "VI split, bits", 3),
    ("vi_merge", "VI merge, bits", 3),
    ("seg", "SEG (Cell Tracking Challenge)", 3),
    ("mean_ap", "mean AP (DSB 2018)", 3),
)
CURVES = (
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1"),
    ("ap", "AP = TP/(TP+FP+FN)"),
    ("pq", "panoptic quality"),
)


def overlay_rgb(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """uint8 RGB of ``image`` (C, Y, X) with ground-truth and predicted object contours."""
    rgb = (display_image(image) * 255).astype(np.uint8)
    gt_edge = find_boundaries(gt, mode="inner")
    pred_edge = find_boundaries(pred, mode="inner")
    rgb[gt_edge & ~pred_edge] = GT_COLOUR
    rgb[pred_edge & ~gt_edge] = PRED_COLOUR
    rgb[gt_edge & pred_edge] = BOTH_COLOUR
    return rgb


def save_rgb(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB array as a PNG, pixel for pixel."""
    plt.imsave(path, rgb, format="png")


def _postprocess_label(described: dict[str, Any]) -> str:
    text = described["method"].replace("_", " ")
    if described["method"] == "watershed":
        ws = described["watershed"]
        h = ws["h_distance"] if ws["source"] == "distance" else ws["h_probability"]
        text += f" on {ws['source']} (threshold {ws['threshold']:g}, h {h:g})"
    if described["method"] == "tuned":
        tuned = described["tuned"]
        if tuned is None:
            return text + " (no val split: defaults)"
        text += f" on val ({described['objective']}): {tuned['mode']}, foreground > {tuned['foreground_threshold']:g}"
        if tuned["mode"] == "watershed":
            text += f", h {tuned['h_distance']:g}"
        elif tuned["seed_threshold"] != tuned["foreground_threshold"]:
            text += f", seeds > {tuned['seed_threshold']:g}"
        return text + (f", min size {tuned['min_size']} px" if tuned["min_size"] else "")
    if described["min_size"]:
        text += f", min size {described['min_size']} px"
    return text


def plot_metrics(summary: dict[str, Any], path: str | Path) -> None:
    """Metric table (mean and std over images) beside the object-matching curves against the
    IoU threshold (means over images, pooled F1 dashed)."""
    thresholds = summary["iou_thresholds"]
    fig, (ax_table, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    cells = [[label, f"{summary[key]:.{d}f}", f"{summary['std'][key]:.{d}f}"] for key, label, d in TABLE_ROWS]
    first = thresholds[0]
    for key, label in (("f1", "F1"), ("pq", "panoptic quality")):
        cells.append([f"{label} @ IoU > {first:g}", f"{summary['curves'][key][0]:.3f}", ""])
    table = ax_table.table(cellText=cells, colLabels=["metric", "mean", "std"], loc="center", cellLoc="left",
                           colWidths=[0.62, 0.19, 0.19])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.25)
    ax_table.axis("off")
    ax_table.set_title(
        f"{summary['n_images']} {summary['split']} images"
        f"{' (val doubles as test: optimistic)' if summary.get('val_doubles_as_test') else ''}, "
        f"{summary['n_gt']} true / {summary['n_pred']} predicted objects",
        fontsize=10,
    )
    for key, label in CURVES:
        ax_curve.plot(thresholds, summary["curves"][key], "o-", ms=3, label=label)
    ax_curve.plot(thresholds, summary["pooled"]["f1"], "--", color="0.4", label="F1, pooled objects")
    ax_curve.set(xlabel="IoU threshold (match when IoU > threshold)", ylabel="score", ylim=(0, 1.02),
                 title="object matching (one-to-one, Hungarian)")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Evaluation -- objects: {_postprocess_label(summary['postprocess'])}", fontsize=11)
    save_figure(fig, path)


def plot_overlays(overlays: Sequence[np.ndarray], captions: Sequence[str], path: str | Path, columns: int = 2) -> None:
    """Grid of overlay images with a caption each and a colour legend."""
    if not overlays:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no overlays requested (evaluate.overlays = 0)", ha="center", va="center")
        ax.axis("off")
    else:
        columns = min(columns, len(overlays))
        rows = -(-len(overlays) // columns)
        aspect = max(rgb.shape[0] / rgb.shape[1] for rgb in overlays)
        fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, (6 * aspect + 0.4) * rows + 0.5), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, rgb, caption in zip(axes.ravel(), overlays, captions):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(caption, fontsize=10)
        handles = [Patch(color=c / 255, label=label) for c, label in
                   ((GT_COLOUR, "ground truth"), (PRED_COLOUR, "prediction"), (BOTH_COLOUR, "both"))]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    rect = (0, 0.5 / fig.get_figheight(), 1, 1) if overlays else (0, 0, 1, 1)
    save_figure(fig, path, rect=rect)
