"""``unetflow predict MODEL_DIR IMAGE_STORE OUT_DIR``: overlap-tile inference into OME-Zarr images.

Writes ``OUT_DIR/<name>.ome.zarr`` for every image of the chosen split (and ``<name>.ome.tif``
with ``predict.ome_tiff``); its objects follow the model's recipe at the thresholds and min_size
of ``--tuned`` (else the defaults). The folder is built in
``OUT_DIR.partial`` and renamed at the end; a killed run leaves that folder behind and the next
run with the same model, store and settings resumes it chunk by chunk.
"""

from __future__ import annotations

import argparse
import logging

from unetflow.commands import add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> None:
    import torch  # here, not at module level: every CLI start imports this module

    from unetflow.io.ome_tiff import write_ome_tiff
    from unetflow.predict import PredictOptions, predict_store
    from unetflow.tuned import load_tuned

    options = PredictOptions.from_settings(settings_from_args(args, "predict"))
    threads = options.num_threads or args.threads
    if threads > 0:  # worker processes of a distributed cluster set their own (threads_per_worker)
        torch.set_num_threads(threads)
    export = write_ome_tiff if options.ome_tiff else None
    tuned = load_tuned(args.tuned)["chunked"] if args.tuned else None
    out = predict_store(args.model, args.images, args.out, args.split, options, export, tuned)
    log.info("predictions written to %s", out)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment the images of a store (a dataset split, slides) into OME-Zarr predictions",
        description=__doc__,
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="trained model directory (best.pt) or a .pt checkpoint")
    parser.add_argument("images", metavar="IMAGE_STORE", help="unetflow image store (data.zarr or a slide store)")
    parser.add_argument("out", metavar="OUT_DIR", help="output folder, one <name>.ome.zarr per image")
    parser.add_argument(
        "--split", choices=["train", "val", "test", "all"], default="all", help="which images of the store (default: all)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads of the model (the rule's threads; 0 = torch's default)"
    )
    parser.add_argument(
        "--tuned",
        metavar="JSON",
        help="tuned.json of `unetflow tune`: its chunk-exact choice forms the objects (default: thresholds 0.5, no min_size)",
    )
    add_settings_arguments(parser, "predict")
    parser.set_defaults(func=run)
