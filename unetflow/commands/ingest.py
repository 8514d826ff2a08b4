"""``unetflow ingest dataset|slide OUT``: raw files or the synthetic generator -> zarr store."""

from __future__ import annotations

import argparse
import json

from unetflow.commands import add_settings_arguments, settings_from_args
from unetflow.config import ConfigError, fill_defaults, load_config, load_schema, validate_section


def _slide_settings(args: argparse.Namespace) -> dict:
    """The slide entry plus the dataset's pixel settings (a slide must match the model input).

    From ``--settings '{"slide": {...}, "channels": 1, "rgb_rule": "luminance", "non_finite":
    {...}}'`` (what the rule passes) or ``--config FILE --name SLIDE``.
    """
    schema = load_schema()["properties"]
    if args.settings is not None:
        try:
            given = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings is not valid JSON: {exc}") from exc
        if not isinstance(given, dict) or "slide" not in given:
            raise ConfigError('slide --settings must be {"slide": {...}, "channels": N, "rgb_rule": "..."}')
        slide = given["slide"]
        dataset = {k: given[k] for k in ("channels", "rgb_rule", "non_finite") if k in given}
    elif args.config:
        config = load_config(*args.config)
        names = [s["name"] for s in config["slides"]]
        if args.name not in names:
            raise ConfigError(f"ingest slide with --config needs --name, one of the config's slides: {names}")
        matches = [s for s in config["slides"] if s["name"] == args.name]
        slide, dataset = matches[0], config["dataset"]
    else:
        raise ConfigError("ingest slide needs --settings or --config with --name")
    validate_section(slide, schema["slides"]["items"], "slides[]")
    slide = fill_defaults(slide, schema["slides"]["items"])
    channels = dataset.get("channels", schema["dataset"]["properties"]["channels"]["default"])
    rgb_rule = dataset.get("rgb_rule", schema["dataset"]["properties"]["rgb_rule"]["default"])
    validate_section(channels, schema["dataset"]["properties"]["channels"], "dataset.channels")
    validate_section(rgb_rule, schema["dataset"]["properties"]["rgb_rule"], "dataset.rgb_rule")
    non_finite_schema = schema["dataset"]["properties"]["non_finite"]
    validate_section(dataset.get("non_finite", {}), non_finite_schema, "dataset.non_finite")
    non_finite = fill_defaults(dataset.get("non_finite", {}), non_finite_schema)
    return {"slide": slide, "channels": channels, "rgb_rule": rgb_rule, "non_finite": non_finite}


def run(args: argparse.Namespace) -> None:
    from unetflow.ingest import ingest_dataset, ingest_slide

    if args.kind == "dataset":
        out = ingest_dataset(settings_from_args(args, "dataset"), args.out)
        if args.preview:
            from unetflow.plots.dataset import plot_dataset_overview
            from unetflow.store import open_store

            plot_dataset_overview(open_store(out, "dataset"), args.preview)
    else:
        given = _slide_settings(args)
        ingest_slide(given["slide"], given["channels"], given["rgb_rule"], args.out, given["non_finite"])


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="read raw images/labels (or generate synthetic ones) into a zarr store (pixels as acquired)",
        description=__doc__,
    )
    parser.add_argument("kind", choices=["dataset", "slide"], help="a labelled dataset or one unlabelled slide")
    parser.add_argument("out", help="output zarr store (written atomically)")
    parser.add_argument("--name", help="slide name in the --config file's slides list (kind slide only)")
    parser.add_argument("--preview", metavar="PNG", help="also write the dataset overview figure (kind dataset only)")
    add_settings_arguments(parser, "dataset")
    parser.set_defaults(func=run)
