# train: the U-Net on augmented tiles of the dataset, weighted by the weight maps. Only the model
# and train config sections are params, so changing inference settings never retrains. The CLI
# works in <model>.partial/, which outlives a failed or killed job; --resume continues from its
# last checkpoint when the settings are unchanged (torch threads follow the rule's threads
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
    params:
        settings=settings("model", "train"),
    log:
        log_path("train"),
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=720,
        **({"gpu": 1} if config["train"]["device"] == "cuda" else {}),
    shell:
        "python -m unetflow train {input.data:q} {input.weights:q} {output.model:q} --curves {output.curves:q} --resume"
        " --settings {params.settings:q} > {log:q} 2>&1"
