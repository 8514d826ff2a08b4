"""Command line: ``unetflow <stage> ...``, one sub-command per pipeline stage.

Each stage lives in ``unetflow.commands.<stage>`` and exposes ``register(subparsers)``, which
adds its parser and sets ``func``. Errors a user can fix (bad input, bad config) are printed as one
clear message and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from unetflow import __version__
from unetflow.config import ConfigError
from unetflow.io.errors import InputError
from unetflow.store import StoreError

STAGES = ("ingest", "weights", "train", "predict", "tune", "evaluate", "export")
USER_ERRORS = (ConfigError, InputError, StoreError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        importlib.import_module(f"unetflow.commands.{stage}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except USER_ERRORS as exc:
        print(f"unetflow {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
