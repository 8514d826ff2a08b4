# tune: choose the post-processing (thresholds, min_size, for a 2-class model optionally a
# watershed) on the val split's predictions, never on test; evaluate and the slide predictions
# apply tuned.json. Only the tune section is a param, so editing it reruns tune and what applies
# it, never training or the split predictions. Light single-core work on the few val images.


rule tune:
    input:
        model=model_dir(),
        data=data_store(),
        predictions=val_predictions(),
    output:
        tuned=tuned_params(),
        plot=report(
            f"{run_dir()}/plots/tuning.png",
            caption="../report/tuning.rst",
            category="Tuning",
        ),
    log:
        log_path("tune"),
    conda:
        "../../envs/tune.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=settings("tune"),
    shell:
        "python -m unetflow tune {input.model:q} {input.data:q} {input.predictions:q} {output.tuned:q}"
        " --plot {output.plot:q} --settings {params.settings:q} > {log:q} 2>&1"
