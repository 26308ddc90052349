localrules:
    aggregate,
    table,


rule aggregate:
    """One CSV with every run of the study."""
    input:
        models=expand(f"{RES}/runs/{{run}}/model", run=ROWS),
        metrics=expand(f"{RES}/runs/{{run}}/metrics.json", run=ROWS),
    output:
        report(f"{RES}/runs.csv", caption="../report/runs.rst", category="Tables"),
    params:
        runs=lambda wildcards, input: [os.path.dirname(m) for m in input.metrics],
    log:
        f"{RES}/logs/aggregate.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft aggregate --runs {params.runs} --out {output} > {log} 2>&1"


rule figures:
    """Accuracy vs trainable parameters and label fraction, cost, confusion matrices."""
    input:
        csv=f"{RES}/runs.csv",
        metrics=expand(f"{RES}/runs/{{run}}/metrics.json", run=ROWS),
    output:
        pdf=expand(f"{RES}/figures/{{name}}.pdf", name=FIGURES),
        png=report(
            expand(f"{RES}/figures/{{name}}.png", name=FIGURES),
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        outdir=lambda wildcards, output: os.path.dirname(output.pdf[0]),
        runs=lambda wildcards, input: os.path.dirname(os.path.dirname(input.metrics[0])),
    resources:
        **CPU_RESOURCES,
    log:
        f"{RES}/logs/figures.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft figures --runs-csv {input.csv} --runs-dir {params.runs}"
        " --outdir {params.outdir} > {log} 2>&1"


rule table:
    """LaTeX booktabs table for the paper."""
    input:
        f"{RES}/runs.csv",
    output:
        report(f"{RES}/table.tex", caption="../report/table.rst", category="Tables"),
    params:
        study=STUDY,
    log:
        f"{RES}/logs/table.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft table --runs-csv {input} --study {params.study} --out {output} > {log} 2>&1"
