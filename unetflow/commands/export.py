"""``unetflow export MODEL_DIR DATA_STORE OUT``: the trained model as a bioimage.io model package."""

from __future__ import annotations

import argparse

from unetflow.commands import add_settings_arguments, settings_from_args


def run(args: argparse.Namespace) -> None:
    from unetflow.export import export_bioimageio

    export_bioimageio(
        args.model,
        args.data_store,
        args.out,
        settings_from_args(args, "export"),
        evaluation=args.evaluation,
        overlays=args.cover,
        zip_path=args.zip,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the trained model as a bioimage.io model package (Fiji/deepImageJ, napari, QuPath, ilastik)",
        description=__doc__,
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="trained model directory (best.pt)")
    parser.add_argument("data_store", metavar="DATA_STORE", help="dataset store (data.zarr) the test input is cut from")
    parser.add_argument("out", metavar="OUT", help="output folder: rdf.yaml, weights, test tensors (written atomically)")
    parser.add_argument("--evaluation", metavar="DIR", help="evaluation folder whose summary.json gives the documented metrics")
    parser.add_argument("--cover", metavar="PNG", help="cover image (the evaluation overlays); default: a figure of the test crop")
    parser.add_argument("--zip", metavar="ZIP", help="also write the package as one zip file (deepImageJ installs it)")
    add_settings_arguments(parser, "export")
    parser.set_defaults(func=run)
