localrules:
    protocol,
    aggregate,
    table,
    paper,


rule protocol:
    """The study's protocol card (geopeft.config.protocol): what the runs do, the reference
    protocol, each difference from it and why, the reference's published figures."""
    output:
        LAYOUT.protocol,
    params:
        # the card itself: an equivalent study file (the same rows) rewrites nothing
        # (a function: a string's braces would be taken for wildcards)
        record=lambda wildcards: canonical_json(PROTOCOL),
    log:
        LAYOUT.log("protocol"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft protocol --record {params.record:q} --out {output} > {log} 2>&1"


rule aggregate:
    """One CSV with every run of the study; the MLflow experiment's description gets the summary
    and the protocol card."""
    input:
        models=expand(LAYOUT.run("{run}").model, run=ROWS),
        metrics=expand(LAYOUT.run("{run}").metrics, run=ROWS),
        experiment=ancient(EXPERIMENT),
        protocol=LAYOUT.protocol,
    output:
        csv=LAYOUT.runs_csv,
        html=report(LAYOUT.runs_html, caption="../report/runs.rst", category="Tables"),
    params:
        runs=lambda wildcards, input: [os.path.dirname(m) for m in input.metrics],
        metric=REPORT_METRIC,
    log:
        LAYOUT.log("aggregate"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft aggregate --runs {params.runs} --out {output.csv} --html {output.html}"
        " --experiment {input.experiment} --protocol {input.protocol} > {log} 2>&1"


rule figures:
    """Accuracy vs trainable parameters and label fraction, cost, confusion matrices."""
    input:
        csv=LAYOUT.runs_csv,
        metrics=expand(LAYOUT.run("{run}").metrics, run=ROWS),
    output:
        pdf=[LAYOUT.figure(name, "pdf") for name in FIGURES],
        # each figure its own caption, worded for the study's task (params.task, .metric)
        png=[
            report(
                LAYOUT.figure(name, "png"),
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
        LAYOUT.log("figures"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft figures --runs-csv {input.csv} --runs-dir {params.runs}"
        " --outdir {params.outdir} > {log} 2>&1"


rule table:
    """LaTeX booktabs tables for the paper (results; a sweep's rates; the cost ledger), the
    ledger as CSV, and the per-class report (CSV and LaTeX)."""
    input:
        csv=LAYOUT.runs_csv,
        metrics=expand(LAYOUT.run("{run}").metrics, run=ROWS),
    output:
        table=report(LAYOUT.table, caption="../report/table.rst", category="Tables"),
        per_class_tex=LAYOUT.per_class_tex,
        per_class_csv=LAYOUT.per_class_csv,
        ledger=LAYOUT.ledger_csv,
    params:
        study=STUDY,
        runs=lambda wildcards, input: os.path.dirname(os.path.dirname(input.metrics[0])),
    log:
        LAYOUT.log("table"),
    conda:
        "../../envs/geopeft.yaml"
    shell:
        "geopeft table --runs-csv {input.csv} --study {params.study} --out {output.table}"
        " --runs-dir {params.runs} --per-class-tex {output.per_class_tex}"
        " --per-class-csv {output.per_class_csv} --ledger-csv {output.ledger} > {log} 2>&1"


rule paper:
    """paper/main.pdf: a section per study of paper.studies (default: this one), generated from
    its results, compiled with latexmk (`snakemake paper`)."""
    input:
        get_paper_inputs,
    output:
        PAPER_PDF,
    params:
        results=PAPER_STUDIES,
    log:
        LAYOUT.log("paper"),
    conda:
        "../../envs/paper.yaml"
    shell:
        "geopeft paper --results {params.results} --out {output} > {log} 2>&1"
