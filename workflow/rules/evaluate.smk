rule evaluate:
    """Test-split metrics of one trained run, logged to its MLflow run."""
    input:
        model=f"{RES}/runs/{{run}}/model",
        store=get_run_store,
        pretrain=get_pretrain,
        experiment=ancient(EXPERIMENT),
    output:
        metrics=f"{RES}/runs/{{run}}/metrics.json",
        confusion=f"{RES}/runs/{{run}}/confusion.csv",
    params:
        pretrain=lambda wildcards, input: optional_flag("--pretrain", input.pretrain),
    threads: config["threads"]
    resources:
        **GPU_RESOURCES,
    log:
        f"{RES}/logs/evaluate/{{run}}.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft evaluate --model {input.model} --store {input.store} {params.pretrain}"
        " --experiment {input.experiment} --metrics {output.metrics}"
        " --confusion {output.confusion} --threads {threads} --gpus {resources.gpu} --mem-mb {resources.mem_mb} > {log} 2>&1"
