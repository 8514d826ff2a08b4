"""Report figure of the train stage: training/validation loss and validation IoU against step.

The per-step training loss of small augmented batches is noisy, so a running mean is drawn over
it; validation points are plotted as they are (they are whole-image evaluations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unetflow.plots.common import plt, save_figure


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start, never shifted)."""
    cumsum = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    index = np.arange(1, values.size + 1)
    start = np.maximum(index - window, 0)
    return (cumsum[index] - cumsum[start]) / (index - start)


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Write the loss and IoU curves of a ``metrics.csv`` (written by ``unetflow.train``)."""
    table = pd.read_csv(metrics_csv)
    val = table.dropna(subset=["val_iou"])
    window = max(1, len(table) // 50)
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(table["step"], table["train_loss"], color="0.7" if window > 1 else "C0", lw=0.8, label="train (per step)")
    if window > 1:
        smooth = running_mean(table["train_loss"].to_numpy(), window)
        ax_loss.plot(table["step"], smooth, color="C0", label=f"train (mean of {window})")
    if len(val):
        ax_loss.plot(val["step"], val["val_loss"], "o-", color="C1", label="validation")
        best = val.loc[val["val_iou"].idxmax()]
        ax_iou.plot(val["step"], val["val_iou"], "o-", color="C2")
        ax_iou.axvline(best["step"], color="0.5", ls="--", lw=0.8)
        ax_iou.set_title(f"validation foreground IoU (best {best['val_iou']:.3f} at step {int(best['step'])})")
    else:
        ax_iou.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax_iou.transAxes)
        ax_iou.set_title("validation foreground IoU")
    ax_loss.set(xlabel="step", ylabel="weighted cross-entropy", title="loss", yscale="log")
    ax_loss.legend()
    ax_iou.set(xlabel="step", ylabel="IoU", ylim=(0, 1))
    return save_figure(fig, out_png)
