# Paths of every store and folder the rules exchange, and small helpers. Rule files use these
# functions instead of spelling paths, so the layout is defined once.
import json

RESULTS = config["results"]
DATASET = config["dataset"]["name"]
RUN = config["run"]
SLIDES = [slide["name"] for slide in config["slides"]]
# How rules call the package: `python -m unetflow` with the checkout on PYTHONPATH works both in
# the project venv (where unetflow is installed) and in the per-rule conda environments (which
# carry the dependencies only), without putting any path into params.
UNETFLOW = f"PYTHONPATH={workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}} python -m unetflow"


def settings(section):
    """The config section a rule passes to its CLI: JSON, sorted so it is stable across runs."""
    return json.dumps(config[section], sort_keys=True)


def slide_config(name):
    return next(slide for slide in config["slides"] if slide["name"] == name)


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


def val_predictions():
    return f"{run_dir()}/predictions/val"


def slide_predictions(slide="{slide}"):
    return f"{run_dir()}/predictions/slides/{slide}"


def evaluation_dir():
    return f"{run_dir()}/evaluation"


def log_path(name):
    return f"{RESULTS}/logs/{DATASET}/{RUN}/{name}.log"


def final_outputs():
    return [evaluation_dir()] + [slide_predictions(s) for s in SLIDES]
