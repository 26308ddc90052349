if DATA["source"] == "synthetic":

    rule synthesize:
        """The embedded synthetic Sentinel-2 world, in EuroSAT-MS/-RGB layouts, + source set."""
        output:
            ms=directory(DATA_LAYOUT.raw("eurosat_ms")),
            rgb=directory(DATA_LAYOUT.raw("eurosat_rgb")),
            ms_source=directory(DATA_LAYOUT.raw("eurosat_ms_source")),
            rgb_source=directory(DATA_LAYOUT.raw("eurosat_rgb_source")),
        params:
            spec=canonical_json(DATA["synthetic"]),
        resources:
            **CPU_RESOURCES,
        log:
            DATA_LAYOUT.raw_log("synthesize"),
        conda:
            "../../envs/geopeft.yaml"
        shell:
            "geopeft synthesize --spec {params.spec:q} --ms {output.ms} --rgb {output.rgb}"
            " --ms-source {output.ms_source} --rgb-source {output.rgb_source} > {log} 2>&1"

    rule synthesize_layout:
        """Embedded worlds of the datasets whose sources write one alone (BigEarthNet-S2 v2,
        PASTIS), in the publishers' layouts."""
        output:
            directory(DATA_LAYOUT.raw("{layout}")),
        wildcard_constraints:
            layout="|".join(study_config.WORLD_DATASETS),
        params:
            spec=canonical_json(DATA["synthetic"]),
        resources:
            **CPU_RESOURCES,
        log:
            DATA_LAYOUT.raw_log("synthesize_{layout}"),
        conda:
            "../../envs/geopeft.yaml"
        shell:
            "geopeft synthesize --spec {params.spec:q} --world {wildcards.layout} {output}"
            " > {log} 2>&1"


if DATA["source"] == "download":

    localrules:
        download,
        fetch,

    rule download:
        """One file of a real dataset: streamed, resumed, retried, checksum-verified."""
        output:
            DATA_LAYOUT.download("{dataset}", "{file}"),
        wildcard_constraints:
            file="[^/]+",
        params:
            spec=canonical_json({k: DATA[k] for k in ("mirrors", "remotes")}),
        retries: 2
        log:
            DATA_LAYOUT.log("download", "{dataset}-{file}"),
        conda:
            "../../envs/geopeft.yaml"
        shell:
            "geopeft download --dataset {wildcards.dataset} --file {wildcards.file:q}"
            " --spec {params.spec:q} --out {output:q} > {log} 2>&1"

    rule fetch:
        """The raw folder of a downloaded dataset: archives extracted safely, metadata copied."""
        input:
            get_download_files,
        output:
            directory(DATA_LAYOUT.raw("{dataset}")),
        # a limit refuses, it never changes a result: a resource, not a param, so that changing
        # it reruns nothing (Snakemake reruns a job whose params changed)
        resources:
            max_extract_bytes=config["limits"]["max_extract_bytes"],
        log:
            DATA_LAYOUT.raw_log("fetch", "{dataset}"),
        conda:
            "../../envs/geopeft.yaml"
        shell:
            "geopeft fetch --dataset {wildcards.dataset} --out {output}"
            " --max-extract-bytes {resources.max_extract_bytes} {input:q} > {log} 2>&1"


rule prepare:
    """Raw dataset -> one zarr store per band selection (train-split norm stats, fingerprint)."""
    input:
        raw=get_raw,
    output:
        directory(DATA_LAYOUT.store("{dataset}", "{bands}")),
    params:
        bands=lambda wildcards: wildcards.bands.replace("-", ","),
        options=canonical_json(DATA["options"]),
    threads: 2
    resources:
        **CPU_RESOURCES,
        # a limit, not a param: changing it reruns nothing (see fetch)
        max_raster_values=config["limits"]["max_raster_values"],
    log:
        DATA_LAYOUT.prepared_log("prepare", "{dataset}-{bands}"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft prepare --dataset {wildcards.dataset} --raw {input.raw} --bands {params.bands}"
        " --options {params.options:q} --max-raster-values {resources.max_raster_values}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule subset:
    """Label-fraction subset of the train split, cached by (method, fraction, seed)."""
    input:
        DATA_LAYOUT.store("{dataset}", "{bands}"),
    output:
        DATA_LAYOUT.subset("{dataset}", "{bands}", SUBSET_NAME),
    resources:
        **CPU_RESOURCES,
    log:
        DATA_LAYOUT.prepared_log("subset", f"{{dataset}}-{{bands}}-{SUBSET_KEY}"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft subset --store {input} --method {wildcards.method} --fraction {wildcards.fraction}"
        " --seed {wildcards.seed} --out {output} > {log} 2>&1"
