"""``unetflow weights DATA_STORE OUT_STORE``: training targets and the paper's weight map for every
labelled image (see ``unetflow.weighting``)."""

from __future__ import annotations

import argparse

from unetflow.commands import add_settings_arguments, settings_from_args


def run(args: argparse.Namespace) -> None:
    from unetflow.weighting import compute_weights

    compute_weights(args.data_store, args.out_store, settings_from_args(args, "weights"), args.preview)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="compute training targets (gaps between touching objects) and the U-Net paper's weight map",
        description=__doc__,
    )
    parser.add_argument("data_store", metavar="DATA_STORE", help="labelled dataset store (data.zarr)")
    parser.add_argument("out_store", metavar="OUT_STORE", help="weights store to write (atomically)")
    parser.add_argument("--preview", metavar="PNG", help="also write the report figure (image / labels / targets / weights)")
    add_settings_arguments(parser, "weights")
    parser.set_defaults(func=run)
