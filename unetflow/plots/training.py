"""Report figure of the train stage: training/validation loss and the validation scores against step.

The per-step training loss of small augmented batches is noisy, so a running mean is drawn over
it; validation points are plotted as they are (they are whole-image evaluations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unetflow.objectives import SELECT_FG_IOU, maximised
from unetflow.plots.common import plt, save_figure


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start, never shifted)."""
    cumsum = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    index = np.arange(1, values.size + 1)
    start = np.maximum(index - window, 0)
    return (cumsum[index] - cumsum[start]) / (index - start)


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path, select: str = "fg_iou") -> Path:
    """Write the loss and validation-score curves of a ``metrics.csv`` (written by
    ``unetflow.train``); ``select`` is the run's ``train.select``, the score that picked best.pt
    (marked), drawn beside the foreground IoU."""
    table = pd.read_csv(metrics_csv)
    val = table.dropna(subset=["val_iou"])
    score = "val_iou" if select == SELECT_FG_IOU or "val_score" not in val else "val_score"
    window = max(1, len(table) // 50)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(table["step"], table["train_loss"], color="0.7" if window > 1 else "C0", lw=0.8, label="train (per step)")
    if window > 1:
        smooth = running_mean(table["train_loss"].to_numpy(), window)
        ax_loss.plot(table["step"], smooth, color="C0", label=f"train (mean of {window})")
    if len(val):
        ax_loss.plot(val["step"], val["val_loss"], "o-", color="C1", label="validation")
        best = val.loc[val[score].idxmax() if maximised(select) else val[score].idxmin()]
        ax_val.plot(val["step"], val["val_iou"], "o-", color="C2", label="foreground IoU")
        if score == "val_score":
            ax_val.plot(val["step"], val["val_score"], "s-", color="C3", label=f"{select} (objects)")
        ax_val.axvline(best["step"], color="0.5", ls="--", lw=0.8)
        ax_val.set_title(f"validation: best {select} {best[score]:.3f} at step {int(best['step'])}")
        ax_val.legend()
    else:
        ax_val.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax_val.transAxes)
        ax_val.set_title("validation")
    ax_loss.set(xlabel="step", ylabel="weighted cross-entropy", title="loss", yscale="log")
    ax_loss.legend()
    ax_val.set(xlabel="step", ylabel="score", ylim=(0, 1))
    return save_figure(fig, out_png)
