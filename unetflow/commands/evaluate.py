"""``unetflow evaluate DATA_STORE PRED_DIR OUT_DIR``: score predictions against the ground truth."""

from __future__ import annotations

import argparse

from unetflow.commands import add_settings_arguments, settings_from_args


def run(args: argparse.Namespace) -> None:
    from unetflow.evaluate import evaluate
    from unetflow.tuned import load_tuned

    evaluate(
        args.data_store,
        args.pred_dir,
        args.out_dir,
        settings_from_args(args, "evaluate"),
        split=args.split,
        plot=args.plot,
        overlay_plot=args.overlay_plot,
        tuned=load_tuned(args.tuned) if args.tuned else None,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare predictions with ground truth: pixel, Rand, VI, object matching and SEG metrics",
        description=__doc__,
    )
    parser.add_argument("data_store", help="labelled dataset store (data.zarr) holding the ground truth")
    parser.add_argument("pred_dir", help="folder of <name>.ome.zarr predictions, one per image of the split")
    parser.add_argument("out_dir", help="output folder: per_image.csv, summary.json, overlays/ (written atomically)")
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="images to evaluate (default: test, the reported figures; train beside it shows under-/overfitting)",
    )
    parser.add_argument("--plot", metavar="PNG", help="also write the metric table and matching curves here")
    parser.add_argument("--overlay-plot", metavar="PNG", help="also write a grid of the overlay images here")
    parser.add_argument(
        "--tuned", metavar="JSON", help="tuned.json of `unetflow tune`, applied by postprocess tuned (default: the defaults)"
    )
    add_settings_arguments(parser, "evaluate")
    parser.set_defaults(func=run)
