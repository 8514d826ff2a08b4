# predict: overlap-tile inference of the trained model into OME-Zarr images, one per input image:
# the images of a dataset split (val for choosing post-processing, test for the reported figures,
# train to tell under- from overfitting) or a slide.
# Only the predict section is a param, so changing e.g. the evaluation never re-predicts. The CLI
# builds <output>.partial/, which outlives a failed or killed job, and resumes it chunk by chunk.
# Peak memory is set by predict.chunk and predict.chunks_in_flight, not by the slide size; a
# retry (attempt) gets more anyway. A GPU is requested only for device cuda. With scheduler slurm
# the chunks run in dask worker jobs (predict.slurm asks for their CPUs and GPUs); the predict job
# only coordinates them and needs one core and no GPU.
PREDICT_COORDINATES = config["predict"]["scheduler"] == "slurm"
PREDICT_THREADS = 1 if PREDICT_COORDINATES else 4
PREDICT_GPU = {"gpu": 1} if config["predict"]["device"] == "cuda" and not PREDICT_COORDINATES else {}


rule predict_split:
    input:
        model=model_dir(),
        images=data_store(),
    output:
        directory(predictions()),
    wildcard_constraints:
        split="train|val|test",
    params:
        settings=settings("predict"),
    log:
        log_path("predict_{split}"),
    conda:
        "../../envs/predict.yaml"
    threads: PREDICT_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
        **PREDICT_GPU,
    shell:
        "python -m unetflow predict {input.model:q} {input.images:q} {output:q} --split {wildcards.split} --threads {threads}"
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
    threads: PREDICT_THREADS
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 720 * attempt,
        **PREDICT_GPU,
    shell:
        "python -m unetflow predict {input.model:q} {input.images:q} {output:q} --split all --threads {threads}"
        " --settings {params.settings:q} > {log:q} 2>&1"
