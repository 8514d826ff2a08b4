# export: the trained model as a bioimage.io model package (rdf.yaml, TorchScript and ONNX
# weights, test tensors from unetflow's predictor, cover, documentation), for Fiji/deepImageJ,
# napari, QuPath and ilastik. bioimage.io's own validator and test_model (export.check) run before
# the folder appears. Only the export section is a param (without `bioimageio`, which only puts
# the package into the default target).


rule export:
    input:
        unpack(export_inputs),
    output:
        package=directory(bioimageio_dir()),
        zip=bioimageio_zip(),
    log:
        log_path("export"),
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=settings_without("export", "bioimageio"),
        options=export_options,
    shell:
        "python -m unetflow export {input.model:q} {input.data:q} {output.package:q} --zip {output.zip:q} {params.options}"
        " --settings {params.settings:q} > {log:q} 2>&1"
