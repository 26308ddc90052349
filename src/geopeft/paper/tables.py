"""The tables of a study: the LaTeX booktabs table (accuracy per strategy and label fraction, with
costs), the per-class report (CSV and LaTeX) and the runs table as an HTML page."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from geopeft.io import atomic_file, read_json
from geopeft.layout import RunLayout
from geopeft.paper.runs import (
    by_sequence_length,
    curve_runs,
    dataset_task,
    memory_kind,
    provenance_note,
    read_runs,
    seeds_phrase,
    study_kind,
    summed_confusion,
)
from geopeft.tasks import TASKS, of_metrics

_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}


def tex_escape(text: object) -> str:
    """``text`` as literal LaTeX (every special character escaped)."""
    import re

    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIALS[m.group()], str(text))


def _pm(mean: float, sd: float) -> str:
    sd = 0.0 if pd.isna(sd) else sd
    return f"{100 * mean:.1f} $\\pm$ {100 * sd:.1f}"


def _params(n: float) -> str:
    return f"{n / 1e6:.2f}\\,M" if n >= 1e5 else f"{n / 1e3:.1f}\\,k"


def _attempts_note(df: pd.DataFrame) -> str:
    """Say so when some runs were resumed: their time adds up every attempt."""
    if "attempts" not in df or not (df["attempts"].fillna(1) > 1).any():
        return ""
    resumed = int((df["attempts"] > 1).sum())
    return (f" (time summed over every attempt of a run; {resumed} of {len(df)} runs resumed, "
            f"at most {int(df['attempts'].max())} attempts)")


def make_table(runs_csv: Path, out: Path, study: str, ledger_csv: Path | None = None) -> str:
    """Write the study's booktabs tables (``\\input``-able) to ``out`` and return their text.

    The results table: one row per strategy (the ablation ladder of a Fusion-LoRA study reads
    top to bottom): trainable parameters, the primary test metric per label fraction (mean
    $\\pm$ sd over seeds), secondary metrics at the largest fraction and the cost; a block per
    dataset when there are several. Then, when a strategy sweeps its learning rate, the sweep
    table (:func:`sweep_table`), and the cost ledger (:func:`ledger`, also written to
    ``ledger_csv``).

    Args:
        runs_csv: the study's runs.csv.
        out: the .tex file to write.
        study: the study's name (caption and label).
        ledger_csv: where the ledger goes as CSV (None: not written).
    """
    every = read_runs(runs_csv, every=True)
    costs = ledger(every)
    if ledger_csv is not None:
        with atomic_file(ledger_csv) as fh:
            costs.to_csv(fh, index=False, float_format="%.6g")
    text = "\n".join([_results_table(read_runs(runs_csv), study), sweep_table(every, study),
                      ledger_table(costs, every, study)])
    with atomic_file(out) as fh:
        fh.write(text)
    return text


def ledger(every: pd.DataFrame) -> pd.DataFrame:
    """The cost ledger: per dataset and strategy (study order), what it trains and what it cost.

    Columns: ``method``, ``trainable_params``, ``trainable_pct``; ``step_time_ms``,
    ``images_per_s`` and ``peak_memory_mb``, means over the reported runs of the largest label
    fraction (and longest series): one size, never pooled over sizes; ``runs`` and
    ``device_hours``, the reported runs and their summed time (wall time x devices); with a
    learning-rate sweep, ``sweep_runs`` and ``sweep_device_hours`` count every rate tried (what
    choosing the rate cost); ``device`` and ``memory_kind``, what the figures were measured on.

    Args:
        every: runs.csv with every run (:func:`~geopeft.paper.runs.read_runs` ``every=True``).
    """
    rows = []
    for (ds, s), g in every.groupby(["dataset", "strategy"], sort=False):
        rep = g[g["selected"].astype(bool)] if "selected" in g else g
        top = curve_runs(rep)

        def mean(col: str, runs: pd.DataFrame = top) -> float:
            return float(runs[col].mean()) if col in runs else float("nan")

        hours = g["device_hours"] if "device_hours" in g else g["wall_time_s"] / 3600
        rows.append({
            "dataset": ds, "strategy": s, "method": g["method"].iloc[0],
            "trainable_params": int(rep["trainable_params"].iloc[0]),
            "trainable_pct": float(rep["trainable_pct"].iloc[0]),
            "step_time_ms": 1000 * mean("step_time_s"), "images_per_s": mean("images_per_s"),
            "peak_memory_mb": mean("peak_memory_mb"),
            "runs": len(rep), "device_hours": float(hours[rep.index].sum()),
            "sweep_runs": len(g), "sweep_device_hours": float(hours.sum()),
            "device": ", ".join(sorted(set(map(str, g["device"])))),
            "memory_kind": memory_kind(g)})
    return pd.DataFrame(rows)


def ledger_table(costs: pd.DataFrame, every: pd.DataFrame, study: str) -> str:
    """The cost ledger (:func:`ledger`) as a booktabs table."""
    swept = bool((costs["sweep_runs"] > costs["runs"]).any())
    datasets = list(dict.fromkeys(costs["dataset"]))
    head = ["Strategy", "Trainable", "Step (ms)", "Mem. (MiB)", "Runs", "Device-h"]
    if swept:
        head += ["Runs, sweep", "Device-h, sweep"]
    note = provenance_note(every)
    lines = [
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{tex_escape(study)}: cost ledger per strategy. Step time, images and peak "
        f"memory ({memory_kind(every)}): mean over the reported runs at the largest label "
        f"fraction; runs and device-hours (wall time $\\times$ devices; device: "
        f"{tex_escape(', '.join(sorted(set(costs['device']))))}): summed over every reported run"
        + ("; sweep: every learning rate tried, the cost of choosing it" if swept else "")
        + (f" \\textit{{({note})}}" if note else "") + ".}",
        f"\\label{{tab:{study}-ledger}}",
        f"\\begin{{tabular}}{{l{'r' * (len(head) - 1)}}}", "\\toprule",
        " & ".join(head) + " \\\\", "\\midrule"]
    for i, ds in enumerate(datasets):
        if len(datasets) > 1:
            if i:
                lines.append("\\midrule")
            lines.append(f"\\multicolumn{{{len(head)}}}{{l}}{{\\textit{{{tex_escape(ds)}}}}} "
                         "\\\\")
        for _, r in costs[costs.dataset == ds].iterrows():
            cells = [tex_escape(r["strategy"]), _params(r["trainable_params"]),
                     "--" if pd.isna(r["step_time_ms"]) else f"{r['step_time_ms']:.1f}",
                     f"{r['peak_memory_mb']:.0f}", f"{r['runs']}", f"{r['device_hours']:.3g}"]
            if swept:
                cells += [f"{r['sweep_runs']}", f"{r['sweep_device_hours']:.3g}"]
            lines.append(" & ".join(cells) + " \\\\")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""])


def sweep_table(every: pd.DataFrame, study: str) -> str:
    """The learning-rate sweeps (empty text without one): per swept dataset, strategy, label
    fraction (and length), each rate's validation score, mean over its seeds, the rate chosen
    in bold (:mod:`geopeft.paper.selection`: best mean validation score; the test split is
    not read)."""
    from geopeft.paper.selection import CELL, sweep_scores

    if "lr_sweep" not in every or not every["lr_sweep"].notna().any():
        return ""
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()}
            for r in every.to_dict("records")]
    for r in rows:
        r["lr_sweep"] = [float(x) for x in str(r["lr_sweep"] or "").split()]
    scores = sweep_scores(rows)
    seeds = every[every["lr_sweep"].notna()].groupby(list(CELL) + ["lr"], dropna=False).size()
    n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    series = every["sequence_length"].notna().any()
    lines = [
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{tex_escape(study)}: learning rates tried, each with its validation score "
        f"(\\%, mean over {n} seed{'s' if seeds.max() > 1 else ''}); in bold the rate reported, "
        f"chosen on validation only (best mean; ties: the first listed). The test split chose "
        f"nothing.}}",
        f"\\label{{tab:{study}-sweep}}",
        "\\begin{tabular}{l l r " + ("r " if series else "") + "l}", "\\toprule",
        "Dataset & Strategy & Labels " + ("& T " if series else "")
        + "& Rate: validation score \\\\", "\\midrule"]
    for (ds, s, f, t), by_rate in scores.items():
        best = max(by_rate.values())
        chosen = next(lr for lr, v in by_rate.items() if v == best)
        cells = [f"\\textbf{{{lr:g}: {100 * v:.1f}}}" if lr == chosen else
                 f"{lr:g}: " + ("--" if v == -math.inf else f"{100 * v:.1f}")  # a seed lacks one
                 for lr, v in by_rate.items()]
        lines.append(" & ".join([tex_escape(ds), tex_escape(s), f"{100 * float(f):g}\\,\\%"]
                                + ([f"{int(t)}"] if series else []) + ["; ".join(cells)])
                     + " \\\\")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""])


def _results_table(df: pd.DataFrame, study: str) -> str:
    """The results table of :func:`make_table` (``df``: the runs it reports)."""
    study_tasks, time_series = study_kind(df["dataset"])
    if by_sequence_length(study_tasks, time_series):
        # a row per strategy (study order) and sequence length (longest first)
        order = {s: i for i, s in enumerate(dict.fromkeys(df["strategy"]))}
        df = df.assign(_o=df["strategy"].map(order)).sort_values(
            ["_o", "sequence_length"], ascending=[True, False], kind="stable")
        df["strategy"] = [f"{s}, T={int(t)}" for s, t in zip(df["strategy"], df["sequence_length"],
                                                              strict=True)]
    note = provenance_note(df)
    fracs = sorted(df["label_fraction"].unique())
    fmax = fracs[-1]
    strategies = list(dict.fromkeys(df["strategy"]))
    datasets = list(dict.fromkeys(df["dataset"]))
    # the tasks' secondary metrics at the largest label fraction: (column, header)
    secondary = [(c, h) for c, h in dict.fromkeys(x for t in study_tasks for x in t.secondary)
                 if c in df and df[c].notna().any()]
    short = study_tasks[0].short if len(study_tasks) == 1 else "Primary"
    cols = "l r r " + "c " * (len(fracs) + len(secondary)) + "r r"
    head = " & ".join(
        ["Strategy", "Trainable", "\\%"] + [f"{short} {100 * f:g}\\,\\%" for f in fracs]
        + [h for _, h in secondary] + ["Time (s)", "Mem. (MiB)"])
    words = " / ".join(t.metric_words for t in study_tasks)
    stats = seeds_phrase(df).replace("±", "$\\pm$").replace("<", "$<$")
    name = study.replace("_", "\\_")
    ncol = 3 + len(fracs) + len(secondary) + 2
    lines = [
        "% generated by geopeft; do not edit",
        "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{name}: test {words} (\\%, {stats}) by strategy and share "
        f"of labelled training data; secondary metrics and the cost per run (mean) at "
        f"{100 * fmax:g}\\,\\% of labels (memory: {memory_kind(df)}); trainable parameters"
        f"{_attempts_note(df)}"
        + (f" \\textit{{({note})}}" if note else "") + ".}",
        f"\\label{{tab:{study}}}",
        f"\\begin{{tabular}}{{{cols.strip()}}}", "\\toprule", head + " \\\\", "\\midrule",
    ]
    for i, ds in enumerate(datasets):
        dd = df[df.dataset == ds]
        if len(datasets) > 1:
            metric = dataset_task(ds).metric_words
            if i:
                lines.append("\\midrule")
            lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{ds}}} ({metric})}} \\\\"
                         .replace("_", "\\_"))
        for s in strategies:
            d = dd[dd.strategy == s]
            if d.empty:
                continue
            cells = [s.replace("_", "\\_"), _params(d["trainable_params"].iloc[0]),
                     f"{d['trainable_pct'].iloc[0]:.2f}"]
            for f in fracs:
                e = d[d.label_fraction == f]["test_primary"]
                cells.append(_pm(e.mean(), e.std()) if len(e) else "--")
            for c, _ in secondary:
                e = d[d.label_fraction == fmax][c].dropna()
                cells.append(_pm(e.mean(), e.std()) if len(e) else "--")
            top = d[d.label_fraction == fmax]  # cost of one setting, not pooled over fractions
            cells += [f"{top['wall_time_s'].mean():.1f}", f"{top['peak_memory_mb'].mean():.0f}"]
            lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def write_html_table(runs_csv: Path, out: Path) -> None:
    """runs.csv as an HTML page (the Snakemake report shows it as a table): one row per run, the
    columns a reader compares first, every value escaped, and where the runs come from
    (synthetic data, a rehearsal) said above it."""
    df = read_runs(runs_csv, every=True)  # every run, selected or not
    first = [c for c in ("run", "dataset", "strategy", "label_fraction", "sequence_length", "seed",
                         "primary_metric", "test_primary", "val_score", "trainable_params",
                         "trainable_pct", "wall_time_s", "images_per_s", "peak_memory_mb")
             if c in df]
    df = df[first + [c for c in df if c not in first]]
    note = provenance_note(df)
    body = df.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}",
                      border=0, classes="runs")
    with atomic_file(out) as fh:
        fh.write("<!doctype html><html><head><meta charset='utf-8'><title>runs</title><style>"
                 "table.runs{border-collapse:collapse;font:12px sans-serif}"
                 "table.runs td,table.runs th{padding:2px 6px;border-bottom:1px solid #ddd}"
                 "</style></head><body>")
        fh.write(f"<p><b>{len(df)} runs</b> (one row per run; test_primary is each run's "
                 f"primary test metric, model selection on val only)"
                 f"{f'. <i>{note}</i>' if note else ''}</p>")
        fh.write(body)
        fh.write("</body></html>\n")


def per_class_report(runs_csv: Path, runs_dir: Path) -> pd.DataFrame:
    """Per dataset, strategy and class, over every seed at the largest label fraction (and the
    longest series): precision, recall, F1 and support from the test confusion matrices summed
    over the seeds (IoU too for segmentation); for multi-label data the test AP and F1, mean
    over the seeds, and the positives as support. No run is picked by its test score.

    Args:
        runs_csv: the study's runs.csv.
        runs_dir: its runs folder (each run's metrics.json).
    """
    import numpy as np

    df = curve_runs(read_runs(runs_csv))
    rows = []
    for ds in dict.fromkeys(df["dataset"]):
        fmax = df[df.dataset == ds].label_fraction.max()
        for s in dict.fromkeys(df[df.dataset == ds]["strategy"]):
            m, n = summed_confusion(df, runs_dir, ds, s, fmax)
            if not n:
                continue
            base = {"dataset": ds, "strategy": s, "label_fraction": fmax, "seeds": n}
            if "confusion_matrix" in m:
                cm = np.asarray(m["confusion_matrix"], float)
                tp, pred, true = np.diag(cm), cm.sum(0), cm.sum(1)
                # as scikit-learn's zero_division=0: a class never predicted has precision 0,
                # and F1 0 when it is present; a class absent from the test split has no recall
                with np.errstate(divide="ignore", invalid="ignore"):
                    prec = np.where(pred > 0, tp / pred, 0.0)
                    rec = np.where(true > 0, tp / true, np.nan)
                    f1 = np.where(true > 0, np.where(prec + rec > 0,
                                                     2 * prec * rec / (prec + rec), 0.0), np.nan)
                    iou = np.where(pred + true > 0, tp / (pred + true - tp), np.nan)
                for c, name in enumerate(m["classes"]):
                    rows.append({**base, "class": name, "support": int(true[c]),
                                 "precision": prec[c], "recall": rec[c], "f1": f1[c],
                                 **({"iou": iou[c]} if of_metrics(m).dense else {}),
                                 "task": of_metrics(m).name})
            else:  # multi-label: per-class AP (and F1 at the threshold) per seed
                aps = np.asarray(m["per_class_ap_runs"], float)
                ms = [read_json(RunLayout(Path(runs_dir) / r).metrics) for r in
                      df[(df.dataset == ds) & (df.strategy == s) & (df.label_fraction == fmax)].run]
                f1s = np.asarray([x["per_class_f1"] for x in ms], float)
                with warnings.catch_warnings():  # a class absent from the test split: no AP
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ap, f1 = np.nanmean(aps, 0), np.nanmean(f1s, 0)
                for c, name in enumerate(m["classes"]):
                    rows.append({**base, "class": name, "support": int(m["support"][c]),
                                 "ap": ap[c], "f1": f1[c],
                                 "task": of_metrics(m).name})
    return pd.DataFrame(rows)


def write_per_class(runs_csv: Path, runs_dir: Path, out_tex: Path, out_csv: Path) -> pd.DataFrame:
    """Write the per-class report as CSV (every column) and as LaTeX (per dataset: a row per
    class, its test support and each strategy's per-class score, in %; pandas Styler, every
    name escaped)."""
    report = per_class_report(runs_csv, runs_dir)
    with atomic_file(out_csv) as fh:
        report.to_csv(fh, index=False, float_format="%.6g")
    note = provenance_note(read_runs(runs_csv))
    parts = ["% generated by geopeft; do not edit"]
    for ds in dict.fromkeys(report["dataset"]):
        sub = report[report.dataset == ds]
        task = TASKS[str(sub.task.iloc[0])]
        key, head = task.per_class
        classes, strategies = list(dict.fromkeys(sub["class"])), list(dict.fromkeys(sub.strategy))
        wide = sub.pivot(index="class", columns="strategy", values=key).reindex(
            index=classes, columns=strategies) * 100
        wide.insert(0, "support", sub.drop_duplicates("class").set_index("class")["support"]
                    .reindex(classes))
        wide = wide.reset_index()
        wide.columns.name = None
        n = sorted(set(sub.seeds))
        caption = (f"{tex_escape(ds)}: per-class test {head} (\\%) of each strategy at "
                   f"{100 * sub.label_fraction.iloc[0]:g}\\,\\% of labels, {task.per_class_how} "
                   f"{'/'.join(map(str, n))} seed{'s' if max(n) > 1 else ''}; support: test "
                   f"{task.support} of the class"
                   + (f" ({note})" if note else "") + ".")
        styler = wide.style.format(precision=1, na_rep="--", escape="latex") \
            .format("{:d}", subset=["support"]).format_index(escape="latex", axis=1) \
            .hide(axis="index")
        parts.append(styler.to_latex(
            hrules=True, position="H", position_float="centering", caption=caption,
            label=f"tab:{ds}-per-class", environment="table",
            # long class names (BigEarthNet's) wrap within the page
            column_format=("p{0.4\\linewidth}" if wide["class"].str.len().max() > 28 else "l")
            + "r" * (len(wide.columns) - 1)))
    text = "\n".join(parts).replace("\\begin{table}[H]", "\\begin{table}[H]\n\\small")
    with atomic_file(out_tex) as fh:
        fh.write(text)
    return report

