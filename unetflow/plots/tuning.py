"""Report figure of the tune stage: the val objective over the searched post-processing.

Left: the objective against the foreground threshold, one line per ``min_size`` (for each, the
best over the other parameters), so the report shows how flat or sharp the optimum is. Right: the
defaults against the tuned choice, with the chosen values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from unetflow.plots.common import save_figure  # noqa: E402


def _describe(entry: dict[str, Any]) -> str:
    text = f"{entry['mode']}: seed > {entry['seed_threshold']:g}, fg > {entry['foreground_threshold']:g}"
    if entry["mode"] == "watershed":
        text = f"watershed: fg > {entry['foreground_threshold']:g}, h {entry['h_distance']:g} px"
    return f"{text}, min_size {entry['min_size']}"


def plot_search(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the search of a tuned.json ``result`` into ``path`` (PNG)."""
    pick = max if result["higher_is_better"] else min
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for size in sorted({row["min_size"] for row in result["grid"]}):
        by_threshold: dict[float, float] = {}
        for row in result["grid"]:
            if row["min_size"] == size:
                t = row["foreground_threshold"]
                by_threshold[t] = pick(by_threshold.get(t, row["score"]), row["score"])
        xs = sorted(by_threshold)
        curves.plot(xs, [by_threshold[x] for x in xs], marker="o", ms=3, label=f"min_size {size}")
    chosen = result["best"]
    curves.scatter([chosen["foreground_threshold"]], [chosen["score"]], s=80, c="red", zorder=3, label="chosen")
    curves.set_xlabel("foreground threshold (1 - p(background))")
    curves.set_ylabel(f"{result['objective']} on val ({'higher' if result['higher_is_better'] else 'lower'} is better)")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    labels = ["defaults", "tuned"]
    values = [result["defaults"]["score"], chosen["score"]]
    bars.bar(labels, values, color=["grey", "tab:red"])
    for x, value in enumerate(values):
        bars.text(x, value, f"{value:.3f}", ha="center", va="bottom")
    bars.set_title(f"{len(result['images'])} val images\n{_describe(chosen)}", fontsize=8)
    bars.set_ylabel(result["objective"])
    return save_figure(fig, path)
