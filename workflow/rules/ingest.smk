# ingest: raw files (or the synthetic generator) -> zarr stores of pixels as acquired, with provenance.
# Normalisation is part of the model (model.normalization), applied by train and predict.


rule ingest_dataset:
    input:
        dataset_sources(),
    output:
        store=directory(data_store()),
        plot=report(
            f"{RESULTS}/{DATASET}/plots/dataset.png",
            caption="../report/dataset.rst",
            category="Data",
            subcategory="Dataset overview",
        ),
    log:
        log_path("ingest_dataset"),
    conda:
        "../../envs/ingest.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=settings("dataset"),
    shell:
        "python -m unetflow ingest dataset {output.store:q} --preview {output.plot:q} --settings {params.settings:q} > {log:q} 2>&1"


rule ingest_slide:
    input:
        source=slide_source,
    output:
        directory(slide_store()),
    log:
        log_path("ingest_slide_{slide}"),
    conda:
        "../../envs/ingest.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=lambda wc: json.dumps(
            {
                "slide": slide_config(wc.slide),
                "channels": config["dataset"]["channels"],
                "rgb_rule": config["dataset"]["rgb_rule"],
                "non_finite": config["dataset"]["non_finite"],
            },
            sort_keys=True,
        ),
    shell:
        "python -m unetflow ingest slide {output:q} --settings {params.settings:q} > {log:q} 2>&1"
