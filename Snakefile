# unetflow: U-Net segmentation from raw images to evaluated results.
# Usage: snakemake --cores 2            (venv, see README)
#        snakemake --cores 8 --use-conda
#        snakemake --profile profiles/slurm
import sys

from snakemake.utils import min_version, validate

min_version("8.20")
sys.path.insert(0, workflow.basedir)  # this checkout's unetflow, as jobs get it through PYTHONPATH
from unetflow.config import validate_config


configfile: "config/config.yaml"


# unetflow's check first: one line per wrong key (Snakemake's own message prints the whole schema
# after it); then Snakemake's, which fills the defaults into `config`.
validate_config(config)
validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


# Light rules run on the submitting host rather than as cluster jobs.
localrules:
    all,
    evaluate,


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
