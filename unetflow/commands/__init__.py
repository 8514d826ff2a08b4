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
        help=f"a config file; its '{section}' section is used (schema defaults fill the rest)",
    )


def settings_from_args(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The validated config section selected by ``add_settings_arguments`` options."""
    return stage_settings(section, settings_json=args.settings, config_path=args.config)
