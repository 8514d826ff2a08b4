# evaluate: score the validation predictions against the ground truth (pixel, Rand, VI, object
# matching, SEG) and draw the report's metric and overlay figures. Light single-core work on a
# few images: a localrules candidate on a cluster (listed there by the lead, not here).


rule evaluate:
    input:
        data=data_store(),
        predictions=val_predictions(),
    output:
        evaluation=directory(evaluation_dir()),
        metrics=report(
            f"{run_dir()}/plots/evaluation_metrics.png",
            caption="../report/evaluation_metrics.rst",
            category="Evaluation",
        ),
        overlays=report(
            f"{run_dir()}/plots/evaluation_overlays.png",
            caption="../report/evaluation_overlays.rst",
            category="Evaluation",
        ),
    params:
        settings=settings("evaluate"),
    log:
        log_path("evaluate"),
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m unetflow evaluate {input.data:q} {input.predictions:q} {output.evaluation:q}"
        " --settings {params.settings:q} --plot {output.metrics:q} --overlay-plot {output.overlays:q}"
        " > {log:q} 2>&1"
