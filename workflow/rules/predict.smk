# predict: overlap-tile inference of the trained model into OME-Zarr images, one per input image:
# the images of a dataset split (val for choosing post-processing, test for the reported figures,
# train to tell under- from overfitting) or a slide.
# Only the predict section is a param, so changing e.g. the evaluation never re-predicts. The CLI
# builds <output>.partial/, which outlives a failed or killed job, and resumes it chunk by chunk.
# Peak memory is set by predict.chunk and predict.chunks_in_flight, not by the slide size; a
# retry (attempt) gets more anyway. A GPU is requested only for device cuda. Slides' objects use
# the post-processing tune chose on val (tuned.json); the dataset splits keep the defaults, as
# evaluate forms their objects from the probabilities itself (and tune needs val's first).


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
    threads: 4
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=60,
        **({"gpu": 1} if config["predict"]["device"] == "cuda" else {}),
    shell:
        "python -m unetflow predict {input.model:q} {input.images:q} {output:q} --split {wildcards.split} --threads {threads}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule predict_slide:
    input:
        model=model_dir(),
        images=slide_store(),
        tuned=tuned_input(),
    output:
        directory(slide_predictions()),
    params:
        settings=settings("predict"),
        tuned=tuned_option,
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
        " --settings {params.settings:q} {params.tuned} > {log:q} 2>&1"
