if DATA["source"] == "synthetic":

    rule synthesize:
        output:
            ms=directory(f"{RAW}/eurosat_ms"),
            rgb=directory(f"{RAW}/eurosat_rgb"),
            ms_source=directory(f"{RAW}/eurosat_ms_source"),
            rgb_source=directory(f"{RAW}/eurosat_rgb_source"),
        params:
            spec=gcfg.canonical_json(DATA["synthetic"]),
        log:
            f"{DATA['root']}/logs/synthesize.log",
        conda:
            "../../envs/geopeft.yaml"
        shell:
            "geopeft synthesize --spec {params.spec:q} --ms {output.ms} --rgb {output.rgb}"
            " --ms-source {output.ms_source} --rgb-source {output.rgb_source} > {log} 2>&1"


rule prepare:
    input:
        raw=f"{RAW}/{{dataset}}",
    output:
        directory(f"{PREP}/{{dataset}}/{{bands}}.zarr"),
    params:
        bands=lambda wildcards: wildcards.bands.replace("-", ","),
    threads: 2
    log:
        f"{DATA['root']}/logs/prepare/{{dataset}}-{{bands}}.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft prepare --dataset {wildcards.dataset} --raw {input.raw} --bands {params.bands}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule subset:
    input:
        f"{PREP}/{{dataset}}/{{bands}}.zarr",
    output:
        f"{PREP}/{{dataset}}/{{bands}}.subsets/{{method}}-f{{fraction}}-s{{seed}}.json",
    log:
        f"{DATA['root']}/logs/subset/{{dataset}}-{{bands}}-{{method}}-f{{fraction}}-s{{seed}}.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft subset --store {input} --method {wildcards.method} --fraction {wildcards.fraction}"
        " --seed {wildcards.seed} --out {output} > {log} 2>&1"
