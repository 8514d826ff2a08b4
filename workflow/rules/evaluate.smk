# evaluate: score a split's predictions against the ground truth (pixel, Rand, VI, object
# matching, SEG) and draw the report's metric and overlay figures. Objects are formed with the
# post-processing tune chose on val (tuned.json, when there is a val split of its own). test gives the reported
# figures; train (evaluate.splits) sits beside it to tell under- from overfitting. Light
# single-core work on a few images: a localrules candidate on a cluster (listed there by the
# lead, not here).


rule evaluate:
    input:
        data=data_store(),
        predictions=split_predictions,
        tuned=tuned_input(),
    output:
        evaluation=directory(evaluation_dir()),
        metrics=report(
            f"{run_dir()}/plots/evaluation_{{split}}_metrics.png",
            caption="../report/evaluation_metrics.rst",
            category="Evaluation",
            subcategory="{split} split",
        ),
        overlays=report(
            f"{run_dir()}/plots/evaluation_{{split}}_overlays.png",
            caption="../report/evaluation_overlays.rst",
            category="Evaluation",
            subcategory="{split} split",
        ),
    log:
        log_path("evaluate_{split}"),
    wildcard_constraints:
        split="train|val|test",
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=evaluation_settings(),
        tuned=tuned_option,
    shell:
        "python -m unetflow evaluate {input.data:q} {input.predictions:q} {output.evaluation:q} --split {wildcards.split}"
        " --settings {params.settings:q} {params.tuned} --plot {output.metrics:q} --overlay-plot {output.overlays:q}"
        " > {log:q} 2>&1"
