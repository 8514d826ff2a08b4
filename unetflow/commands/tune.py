"""``unetflow tune MODEL_DIR DATA_STORE VAL_PREDICTIONS OUT``: choose the post-processing (thresholds,
min_size, optionally a watershed) that maximises the objective on the val split's predictions."""

from __future__ import annotations

import argparse

from unetflow.commands import add_settings_arguments, settings_from_args


def run(args: argparse.Namespace) -> None:
    from unetflow.tune import tune

    tune(args.model, args.data_store, args.predictions, args.out, settings_from_args(args, "tune"), plot=args.plot)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search the post-processing on the val predictions; write tuned.json for evaluate and predict",
        description=__doc__,
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="trained model directory (its recipe: instance rule, object size)")
    parser.add_argument("data_store", metavar="DATA_STORE", help="labelled dataset store (data.zarr) holding the val ground truth")
    parser.add_argument("predictions", metavar="VAL_PREDICTIONS", help="folder of the val split's <name>.ome.zarr predictions")
    parser.add_argument("out", metavar="OUT", help="tuned.json to write (atomically)")
    parser.add_argument("--plot", metavar="PNG", help="also write the report figure of the search here")
    add_settings_arguments(parser, "tune")
    parser.set_defaults(func=run)
