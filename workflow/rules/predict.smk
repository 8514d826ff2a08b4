# predict: overlap-tile inference of the trained model into OME-Zarr images, one per input image.
# Only the predict section is a param, so changing e.g. the evaluation never re-predicts. The CLI
# builds <output>.partial/, which outlives a failed or killed job, and resumes it chunk by chunk.
# Peak memory is set by predict.chunk and predict.chunks_in_flight, not by the slide size; a
# retry (attempt) gets more anyway. A GPU is requested only for device cuda.


rule predict_val:
    input:
        model=model_dir(),
        images=data_store(),
    output:
        directory(val_predictions()),
    params:
        settings=settings("predict"),
    log:
        log_path("predict_val"),
    conda:
        "../../envs/predict.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
        **({"gpu": 1} if config["predict"]["device"] == "cuda" else {}),
    shell:
        "python -m unetflow predict {input.model:q} {input.images:q} {output:q} --split val --threads {threads}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule predict_slide:
    input:
        model=model_dir(),
        images=slide_store(),
    output:
        directory(slide_predictions()),
    params:
        settings=settings("predict"),
    log:
        log_path("predict_slide_{slide}"),
    conda:
        "../../envs/predict.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 720 * attempt,
        **({"gpu": 1} if config["predict"]["device"] == "cuda" else {}),
    shell:
        "python -m unetflow predict {input.model:q} {input.images:q} {output:q} --split all --threads {threads}"
        " --settings {params.settings:q} > {log:q} 2>&1"
