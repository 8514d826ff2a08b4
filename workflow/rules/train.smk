# train: the U-Net on augmented tiles of the dataset, weighted by the weight maps. Only the model
# and train config sections are params, so changing inference settings never retrains. The CLI
# works in <model>.checkpoints/, which outlives a failed or killed job and the finished run;
# --resume continues from its last checkpoint when the settings are unchanged or only
# train.steps/minutes grew (Snakemake deletes <model>/ before the rerun, not the checkpoints) (torch threads follow the rule's threads
# through OMP_NUM_THREADS unless train.num_threads is set). A GPU is requested only for device cuda.


rule train:
    input:
        data=data_store(),
        weights=weights_store(),
    output:
        model=directory(model_dir()),
        curves=report(
            f"{run_dir()}/plots/training_curves.png",
            caption="../report/training.rst",
            category="Training",
        ),
    log:
        log_path("train"),
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        **({"gpu": 1} if config["train"]["device"] == "cuda" else {}),
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=720,
    params:
        settings=settings("model", "train"),
    shell:
        "python -m unetflow train {input.data:q} {input.weights:q} {output.model:q} --curves {output.curves:q} --resume"
        " --settings {params.settings:q} > {log:q} 2>&1"
