# unetflow: U-Net segmentation from raw images to evaluated results.
# Usage: snakemake --cores 2            (venv, see README)
#        snakemake --cores 8 --use-conda
#        snakemake --profile profiles/slurm
from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "config/config.yaml"


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
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
