localrules:
    aggregate,
    table,
    paper,


rule aggregate:
    """One CSV with every run of the study."""
    input:
        models=expand(f"{RES}/runs/{{run}}/model", run=ROWS),
        metrics=expand(f"{RES}/runs/{{run}}/metrics.json", run=ROWS),
        experiment=ancient(EXPERIMENT),
    output:
        csv=f"{RES}/runs.csv",
        html=report(f"{RES}/runs.html", caption="../report/runs.rst", category="Tables"),
    params:
        runs=lambda wildcards, input: [os.path.dirname(m) for m in input.metrics],
        metric=REPORT_METRIC,
    log:
        f"{RES}/logs/aggregate.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft aggregate --runs {params.runs} --out {output.csv} --html {output.html}"
        " --experiment {input.experiment} > {log} 2>&1"


rule figures:
    """Accuracy vs trainable parameters and label fraction, cost, confusion matrices."""
    input:
        csv=f"{RES}/runs.csv",
        metrics=expand(f"{RES}/runs/{{run}}/metrics.json", run=ROWS),
    output:
        pdf=expand(f"{RES}/figures/{{name}}.pdf", name=FIGURES),
        # each figure its own caption, worded for the study's task (params.task, .metric)
        png=[
            report(
                f"{RES}/figures/{name}.png",
                caption=f"../report/figures/{name}.rst",
                category="Figures",
                labels={"figure": name},
            )
            for name in FIGURES
        ],
    params:
        task=REPORT_TASK,
        metric=REPORT_METRIC,
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
    """LaTeX booktabs table for the paper, and the per-class report (CSV and LaTeX)."""
    input:
        csv=f"{RES}/runs.csv",
        metrics=expand(f"{RES}/runs/{{run}}/metrics.json", run=ROWS),
    output:
        table=report(f"{RES}/table.tex", caption="../report/table.rst", category="Tables"),
        per_class_tex=f"{RES}/per_class.tex",
        per_class_csv=f"{RES}/per_class.csv",
    params:
        study=STUDY,
        runs=lambda wildcards, input: os.path.dirname(os.path.dirname(input.metrics[0])),
    log:
        f"{RES}/logs/table.log",
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft table --runs-csv {input.csv} --study {params.study} --out {output.table}"
        " --runs-dir {params.runs} --per-class-tex {output.per_class_tex}"
        " --per-class-csv {output.per_class_csv} > {log} 2>&1"


rule paper:
    """paper/main.pdf: a section per study of paper.studies (default: this one), generated from
    its results, compiled with latexmk (`snakemake paper`)."""
    input:
        get_paper_inputs,
    output:
        "paper/main.pdf",
    params:
        results=PAPER_STUDIES,
    log:
        f"{RES}/logs/paper.log",
    conda:
        "../../envs/paper.yaml"
    shell:
        "geopeft paper --results {params.results} --out {output} > {log} 2>&1"
