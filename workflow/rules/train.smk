localrules:
    mlflow_init,


rule mlflow_init:
    """Create the MLflow DB and the study's experiment once, before any job logs to it."""
    output:
        EXPERIMENT,
    params:
        **MLFLOW,
        datasets=sorted({row["dataset"] for row in ROWS.values()}),
    log:
        LAYOUT.log("mlflow_init"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft mlflow-init --tracking-uri {params.uri:q} --experiment {params.experiment:q}"
        " --artifact-root {params.artifacts} --datasets {params.datasets} --out {output}"
        " > {log} 2>&1"


rule pretrain:
    """Supervised pretraining of the embedded backbone on the synthetic source set."""
    input:
        store=get_source_store(),
        experiment=ancient(EXPERIMENT),
    output:
        directory(LAYOUT.pretrain),
    params:
        spec=get_pretrain_spec,
    threads: max(2, config["threads"])
    resources:
        **GPU_RESOURCES,
    log:
        LAYOUT.log("pretrain"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft pretrain --spec {params.spec:q} --store {input.store}"
        " --experiment {input.experiment} --out {output} --gpus {resources.gpu} --mem-mb {resources.mem_mb} > {log} 2>&1"


rule features:
    """A frozen encoder's features of every sample of a store, once for every row that probes
    it (seeds, label fractions)."""
    input:
        store=lambda wildcards: get_store(FEATURES_JOBS[wildcards.key]["dataset"], wildcards.bands),
        pretrain=lambda wildcards: FEATURES_JOBS[wildcards.key]["pretrain"],
    output:
        directory(DATA_LAYOUT.features("{dataset}", "{bands}", "{key}")),
    params:
        spec=lambda wildcards: FEATURES_JOBS[wildcards.key]["spec"],
        pretrain=lambda wildcards, input: optional_flag("--pretrain", input.pretrain),
    threads: config["threads"]
    resources:
        **GPU_RESOURCES,
    log:
        DATA_LAYOUT.prepared_log("features", "{dataset}-{bands}-{key}"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft features --spec {params.spec:q} --store {input.store} {params.pretrain}"
        " --out {output} --gpus {resources.gpu} --mem-mb {resources.mem_mb} > {log} 2>&1"


rule train:
    """One training job per study row."""
    input:
        store=get_run_store,
        subset=get_subset,
        pretrain=get_pretrain,
        features=get_features,
        experiment=ancient(EXPERIMENT),
    output:
        directory(LAYOUT.run("{run}").model),
    params:
        spec=get_train_spec,
        subset=lambda wildcards, input: optional_flag("--subset", input.subset),
        pretrain=lambda wildcards, input: optional_flag("--pretrain", input.pretrain),
        features=lambda wildcards, input: optional_flag("--features", input.features),
        state=lambda wildcards: LAYOUT.run(wildcards.run).state,
        # every attempt's output, appended; the job's log links to it (Snakemake empties a
        # log before each attempt, and the link shows the attempt in progress as it runs)
        history=lambda wildcards: LAYOUT.train_history(wildcards.run),
        history_name=lambda wildcards: os.path.basename(LAYOUT.train_history(wildcards.run)),
    threads: config["threads"]
    resources:
        **GPU_RESOURCES,
        # a retry of a training that diverged stops at once (geopeft.train.run.train_row)
        attempt=lambda wildcards, attempt: attempt,
    log:
        LAYOUT.log("train", "{run}"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "ln -sfn {params.history_name} {log};"
        " echo \"=== $(date -Iseconds) $(hostname): geopeft train {wildcards.run}\" >> {params.history};"
        " geopeft train --spec {params.spec:q} --store {input.store} {params.subset}"
        " {params.pretrain} {params.features} --experiment {input.experiment} --out {output}"
        " --state {params.state} --attempt {resources.attempt} --gpus {resources.gpu}"
        " --mem-mb {resources.mem_mb} >> {params.history} 2>&1"
