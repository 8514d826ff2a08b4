"""One module per CLI sub-command; each exposes ``register(subparsers)``."""

from __future__ import annotations

import argparse
from typing import Any

from unetflow.config import stage_settings


def add_settings_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    """Add ``--settings`` (JSON slice, what rules pass) and ``--config`` (a YAML file) options."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--settings",
        metavar="JSON",
        help=f"the '{section}' config section as JSON (Snakemake passes its params this way)",
    )
    group.add_argument(
        "--config",
        metavar="YAML",
        action="append",
        help=(
            f"a config file whose '{section}' section is used (schema defaults fill the rest); repeat to "
            "layer files like Snakemake does: --config config/config.yaml --config my.yaml"
        ),
    )


def settings_from_args(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The validated config section selected by ``add_settings_arguments`` options."""
    return stage_settings(section, settings_json=args.settings, config_path=args.config)
