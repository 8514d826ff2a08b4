# weights: the U-Net paper's border-weighted loss map, one per labelled image, computed once.


rule weights:
    input:
        data_store(),
    output:
        store=directory(weights_store()),
        plot=report(
            f"{RESULTS}/{DATASET}/plots/weights.png",
            caption="../report/weights.rst",
            category="Data",
            subcategory="Weight maps",
        ),
    log:
        log_path("weights"),
    conda:
        "../../envs/weights.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=settings("weights"),
    shell:
        "python -m unetflow weights {input:q} {output.store:q} --settings {params.settings:q} --preview {output.plot:q} > {log:q} 2>&1"
