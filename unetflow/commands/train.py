"""``unetflow train DATA_STORE WEIGHTS_STORE MODEL_DIR``: train the U-Net on augmented tiles.

Settings are the ``model`` and ``train`` config sections together, as one JSON object
``{"model": {...}, "train": {...}}`` (what the Snakemake rule passes), or a config file. The run
works in ``MODEL_DIR.checkpoints/``, which survives a kill and is kept after the run; ``--resume``
continues from its ``last.pt`` with the same trajectory (also after raising ``train.steps`` or
``train.minutes`` on a finished run), and ``MODEL_DIR`` is written only when training is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from unetflow.commands import add_settings_arguments
from unetflow.config import ConfigError, stage_settings

log = logging.getLogger(__name__)

SECTIONS = ("model", "train")


def train_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated ``model`` and ``train`` sections from ``--settings`` or ``--config``."""
    if args.settings is None:
        model, train = (stage_settings(section, config_path=args.config) for section in SECTIONS)
        return model, train
    try:
        value = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or set(value) - set(SECTIONS):
        raise ConfigError(
            f'--settings must be a JSON object {{"model": {{...}}, "train": {{...}}}}, got {args.settings!r}'
        )
    model, train = (stage_settings(section, json.dumps(value.get(section, {}))) for section in SECTIONS)
    return model, train


def run(args: argparse.Namespace) -> None:
    # torch and matplotlib load here, not when the CLI starts (every stage's CLI imports this module)
    from unetflow.plots.training import plot_training_curves
    from unetflow.train import METRICS_CSV, train_model

    model, train = train_settings(args)
    final = train_model(args.data_store, args.weights_store, args.model_dir, model, train, resume=args.resume)
    if args.curves:
        plot_training_curves(final / METRICS_CSV, args.curves, select=train["select"])
    log.info("model written to %s (model.json, best.pt, last.pt, %s)", final, METRICS_CSV)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the U-Net on a dataset and its weight maps", description=__doc__
    )
    parser.add_argument("data_store", metavar="DATA_STORE", help="labelled dataset store (data.zarr)")
    parser.add_argument("weights_store", metavar="WEIGHTS_STORE", help="weight maps (weights.zarr)")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model directory to write")
    parser.add_argument("--curves", metavar="PNG", help="also write the loss/IoU curves figure")
    parser.add_argument(
        "--resume", action="store_true", help="continue from MODEL_DIR.checkpoints/last.pt when it exists (same settings; steps/minutes may grow)"
    )
    add_settings_arguments(parser, "model and train")
    parser.set_defaults(func=run)
