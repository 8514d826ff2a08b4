# Paths of every store and folder the rules exchange, and small helpers. Rule files use these
# functions instead of spelling paths, so the layout is defined once.
import glob
import json
import os
import shlex
import sys

from snakemake.settings.types import DeploymentMethod

RESULTS = config["results"]
DATASET = config["dataset"]["name"]
RUN = config["run"]
SLIDES = [slide["name"] for slide in config["slides"]]
# Jobs call `python -m unetflow`. The shell prefix puts the checkout on PYTHONPATH inside every
# job's command, which works in the project venv (where unetflow is installed), from any working
# directory, and in the per-stage conda environments (which carry the dependencies only, and from
# whose jobs Snakemake deletes an inherited PYTHONPATH). No path goes into params or the rule's
# command text, so a moved checkout reruns nothing.
# Without conda, `python` must be the interpreter that runs Snakemake (it has unetflow's
# dependencies), not whichever `python` comes first on PATH when `.venv/bin/snakemake` is called
# without activating the venv: its folder leads PATH. Under --use-conda the env's activation
# (which Snakemake places before the prefix) decides, so PATH is left alone.
# (Snakemake formats the prefix like a command, hence the doubled braces.)
USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
INTERPRETER = "" if USES_CONDA else f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(
    f"set -euo pipefail; {INTERPRETER}export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def settings(*sections):
    """Config section(s) handed to a stage's CLI as JSON, sorted so the text is stable across runs.

    One section gives that section; several give an object keyed by section name.
    """
    if len(sections) == 1:
        return json.dumps(config[sections[0]], sort_keys=True)
    return json.dumps({name: config[name] for name in sections}, sort_keys=True)


def slide_config(name):
    return next(slide for slide in config["slides"] if slide["name"] == name)


def dataset_sources():
    """The raw files ingest reads, as inputs: edited or added data reruns ingest (and all after
    it), and a wrong path fails the dry run instead of a job. zarr sources count by their
    metadata file; the synthetic generator has none (and an unset path is left to ingest, which
    names the missing key)."""
    ds = config["dataset"]
    fmt = ds["format"]
    if fmt == "synthetic" or not ds["path"]:
        return []
    if fmt == "pairs":
        return sorted(glob.glob(os.path.join(ds["path"], ds["image_glob"]))) + sorted(
            glob.glob(os.path.join(ds["path"], ds["label_glob"]))
        ) or [ds["path"]]
    if fmt == "dsb":
        return sorted(glob.glob(os.path.join(ds["path"], "*", "*", "*.png"))) or [ds["path"]]
    if fmt == "ctc":
        # every frame and every mask of the annotation kinds read (a superset of the files used:
        # unselected sequences and frames without a mask count too; a rerun too many, never too few)
        kinds = {"gold": ["GT"], "silver": ["ST"], "gold_then_silver": ["GT", "ST"]}[ds["ctc"]["annotation"]]
        patterns = [os.path.join("*", "t*.tif*")] + [
            os.path.join(f"*_{kind}", "SEG", "man_seg*.tif*") for kind in kinds
        ]
        return sorted(path for pattern in patterns for path in glob.glob(os.path.join(ds["path"], pattern))) or [
            ds["path"]
        ]
    if fmt == "tiff_stack":
        return [ds["path"], ds["label_path"]]
    return [ds["path"], ds["label_path"]] if ds["label_path"] else [ds["path"]]


def slide_source(wildcards):
    """The slide file or zarr store ingest_slide reads (none for a synthetic slide)."""
    slide = slide_config(wildcards.slide)
    return [] if slide["format"] == "synthetic" else [slide["path"]]


def data_store():
    return f"{RESULTS}/{DATASET}/data.zarr"


def weights_store():
    return f"{RESULTS}/{DATASET}/weights.zarr"


def slide_store(slide="{slide}"):
    return f"{RESULTS}/slides/{slide}.zarr"


def run_dir():
    return f"{RESULTS}/{DATASET}/{RUN}"


def model_dir():
    return f"{run_dir()}/model"


def predictions(split="{split}"):
    """Predictions of a dataset split: train, val or test."""
    return f"{run_dir()}/predictions/{split}"


def val_predictions():
    return predictions("val")


def val_doubles_as_test():
    """Whether the config has no test split of its own (configs from before it): the val images
    are then scored as test, and the summary and report say so."""
    split = config["dataset"]["split"]
    return split["test_fraction"] is None and split["test_indices"] is None


def split_predictions(wildcards):
    """The predictions evaluate scores: test reuses the val predictions when val doubles as test."""
    if wildcards.split == "test" and val_doubles_as_test():
        return val_predictions()
    return predictions(wildcards.split)


def slide_predictions(slide="{slide}"):
    return f"{run_dir()}/predictions/slides/{slide}"


def tuned_params():
    """The tune stage's choice of post-processing (tuned.json)."""
    return f"{run_dir()}/tuned.json"


def tunes_on_val():
    """Whether the config has val images of its own to tune on: none (val_fraction 0) or val
    doubling as test (tuning on the images that are scored is no result) skip tune."""
    split = config["dataset"]["split"]
    return not val_doubles_as_test() and (bool(split["val_indices"]) or split["val_fraction"] > 0)


def tuned_input():
    """tuned.json as an input of the rules that apply it, or nothing: the defaults apply."""
    return tuned_params() if tunes_on_val() else []


def tuned_option(wildcards, input):
    """``--tuned <tuned.json>`` when the rule has one as input (``tuned_input``), else nothing."""
    return f"--tuned {shlex.quote(input.tuned)}" if input.get("tuned") else ""


def evaluation_dir(split="{split}"):
    return f"{run_dir()}/evaluation/{split}"


def log_path(name):
    return f"{RESULTS}/logs/{DATASET}/{RUN}/{name}.log"


def holds_out_test_images():
    """Whether the config gives a test split to score (in older configs, the val split doubles
    as test; no hold-out at all means train on everything and skip evaluation)."""
    split = config["dataset"]["split"]
    if val_doubles_as_test():
        return bool(split["val_indices"]) or split["val_fraction"] > 0
    return bool(split["test_indices"]) or (split["test_fraction"] or 0) > 0


def settings_without(section, key):
    """A config section as JSON without a key that only chooses which outputs the workflow builds,
    so flipping that key reruns nothing already built."""
    return json.dumps({k: v for k, v in config[section].items() if k != key}, sort_keys=True)


def evaluation_settings():
    """The evaluate section without ``splits``: adding the train split must not rescore test."""
    return settings_without("evaluate", "splits")


def bioimageio_dir():
    return f"{run_dir()}/bioimageio"


def bioimageio_zip():
    return f"{run_dir()}/bioimageio.zip"


def export_inputs(wildcards):
    """The model and store, plus the test evaluation (documented metrics) and its overlays (the
    cover) when the config holds out test images."""
    inputs = {"model": model_dir(), "data": data_store()}
    if holds_out_test_images():
        inputs["evaluation"] = evaluation_dir("test")
        inputs["cover"] = f"{run_dir()}/plots/evaluation_test_overlays.png"
    return inputs


def export_options(wildcards, input):
    """The export CLI's options for the optional inputs of ``export_inputs``."""
    options = [f"--{name} {shlex.quote(input[name])}" for name in ("evaluation", "cover") if name in input.keys()]
    return " ".join(options)


def final_outputs():
    evaluation = [evaluation_dir(split) for split in config["evaluate"]["splits"]] if holds_out_test_images() else []
    export = [bioimageio_dir(), bioimageio_zip()] if config["export"]["bioimageio"] else []
    return (evaluation or [model_dir()]) + export + [slide_predictions(s) for s in SLIDES]
