rule evaluate:
    """Test-split metrics of one trained run, logged to its MLflow run."""
    input:
        model=LAYOUT.run("{run}").model,
        store=get_run_store,
        pretrain=get_pretrain,
        experiment=ancient(EXPERIMENT),
    output:
        metrics=LAYOUT.run("{run}").metrics,
        confusion=LAYOUT.run("{run}").confusion,
    params:
        pretrain=lambda wildcards, input: optional_flag("--pretrain", input.pretrain),
    threads: config["threads"]
    resources:
        **GPU_RESOURCES,
    log:
        LAYOUT.log("evaluate", "{run}"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft evaluate --model {input.model} --store {input.store} {params.pretrain}"
        " --experiment {input.experiment} --metrics {output.metrics}"
        " --confusion {output.confusion} --threads {threads} --gpus {resources.gpu} --mem-mb {resources.mem_mb} > {log} 2>&1"
