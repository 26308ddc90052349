"""Paper figures of a study, each as PDF and PNG. Figures made from synthetic data or in a
rehearsal say so, in the figure and in its metadata (PNG Description, PDF Subject)."""

from __future__ import annotations

from pathlib import Path

from geopeft.layout import FIGURE_FORMATS, figure_file
from geopeft.paper.runs import (  # with the figures' names and notes, as callers import them
    FIGURES,
    REHEARSAL_NOTE,
    SERIES_FIGURES,
    SYNTHETIC_NOTE,
    by_sequence_length,
    cost_table,
    curve_runs,
    dataset_task,
    figure_names,
    histories,
    memory_kind,
    provenance_note,
    read_runs,
    seeds_phrase,
    study_figures,
    study_kind,
    summed_confusion,
)


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, outdir: Path, name: str, note: str | None) -> list[Path]:  # type: ignore[no-untyped-def]
    if note:
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7,
                 color="#b03030", style="italic")
    paths = []
    for ext in FIGURE_FORMATS:
        p = outdir / figure_file(name, ext)
        tmp = outdir / f".{name}.tmp.{ext}"
        meta = {"Description" if ext == "png" else "Subject": note} if note else {}
        fig.savefig(tmp, bbox_inches="tight", format=ext, metadata=meta)
        tmp.replace(p)
        paths.append(p)
    return paths


def _finish(plt, fig, outdir: Path, name: str, note: str | None) -> list[Path]:  # type: ignore[no-untyped-def]
    """Lay out, save (PDF and PNG, with the provenance note) and close a figure."""
    fig.tight_layout()
    paths = _save(fig, outdir, name, note)
    plt.close(fig)
    return paths


def _colors(strategies: list[str]) -> dict[str, str]:
    palette = ["#1b6ca8", "#d1495b", "#2a9d8f", "#edae49", "#6a4c93", "#8d8d8d"]
    return {s: palette[i % len(palette)] for i, s in enumerate(strategies)}


def make_figures(runs_csv: Path, outdir: Path, confusion_dir: Path | None = None) -> list[Path]:
    """Draw all figures of a study into ``outdir``; returns the written paths.

    A study over several datasets gets one panel per dataset (each with its task's metric); a
    study shown by sequence length (:func:`~geopeft.paper.runs.by_sequence_length`: a time-series
    segmentation study) gets the label fraction x sequence length figures instead: the figures
    of :func:`~geopeft.paper.runs.study_figures`, as the rules expect them.

    Args:
        runs_csv: the study's runs.csv.
        outdir: the figures folder.
        confusion_dir: the runs folder (confusion matrices).
    """

    plt = _plt()
    df = read_runs(runs_csv)  # a sweep's chosen rates
    outdir.mkdir(parents=True, exist_ok=True)
    note = provenance_note(df)
    strategies = list(dict.fromkeys(df["strategy"]))
    datasets = list(dict.fromkeys(df["dataset"]))
    col = _colors(strategies)
    agg = df.groupby(["dataset", "strategy", "label_fraction"]).agg(
        acc=("test_primary", "mean"), acc_sd=("test_primary", "std"),
        params=("trainable_params", "first")).reset_index()
    fmax = agg["label_fraction"].max()
    written: list[Path] = []
    study_tasks, time_series = study_kind(datasets)
    if by_sequence_length(study_tasks, time_series):
        written += _series_figures(plt, df, study_tasks[0], strategies, outdir, note)
    else:
        written += _panel_figures(plt, df, agg, strategies, datasets, col, fmax, outdir, note)
    written += _cost(plt, df, strategies, datasets, col, outdir, note)
    written += _trainable_params(plt, df, strategies, datasets, col, outdir, note)
    if confusion_dir is not None:
        # the largest label fraction and, for time series, the longest series only: runs of
        # other sizes are never summed in
        written += _confusion(plt, curve_runs(df), datasets, strategies, fmax, confusion_dir,
                              outdir, note)
        written += _curves(plt, df, strategies, datasets, col, confusion_dir, outdir, note)
    return written


def _curves(plt, df, strategies, datasets, col, runs_dir, outdir, note):  # type: ignore[no-untyped-def]
    """Per dataset: train (solid) and val (dashed) loss, and the val score, per epoch and
    strategy: the mean over seeds, the band their range."""
    import numpy as np

    runs = curve_runs(df)
    hist = histories(runs, runs_dir)
    fig, axes = plt.subplots(2, len(datasets), figsize=(3.6 * len(datasets), 5.0), squeeze=False)
    for j, ds in enumerate(datasets):
        sub = runs[runs.dataset == ds]
        for s in strategies:
            names = list(sub[sub.strategy == s]["run"])
            if not names:
                continue
            for ax, key, style, pct in ((axes[0, j], "train_loss", "-", 1),
                                        (axes[0, j], "val_loss", "--", 1),
                                        (axes[1, j], "val_score", "-", 100)):
                ys = [[h.get(key, np.nan) for h in hist[r]] for r in names]
                n_ep = min(len(y) for y in ys)
                y = pct * np.array([v[:n_ep] for v in ys], float)
                if np.isnan(y).all():  # not in these runs' histories
                    continue
                ep = np.arange(1, n_ep + 1)
                ax.plot(ep, np.nanmean(y, 0), style, color=col[s], lw=1.2, marker="o",
                        markersize=2.5, label=s if key != "val_loss" else None)
                if len(names) > 1:
                    ax.fill_between(ep, np.nanmin(y, 0), np.nanmax(y, 0), color=col[s], alpha=0.15,
                                    lw=0)
        frac = sub.label_fraction.iloc[0]
        length = (f", T = {int(sub.sequence_length.iloc[0])}"
                  if "sequence_length" in sub and sub.sequence_length.notna().any() else "")
        axes[0, j].set_title(f"{ds}: {100 * frac:g} % labels{length}", fontsize=8)
        axes[0, j].set_ylabel("loss (solid: train, dashed: val)")
        axes[1, j].set_ylabel(dataset_task(ds).val_label)
        axes[1, j].set_xlabel("epoch")
        epochs = max(len(hist[r]) for r in sub["run"])
        for a in axes[:, j]:
            a.set_xlim(0.5, epochs + 0.5)
            a.set_xticks(range(1, epochs + 1, -(-epochs // 8)))  # whole epochs, 8 at most
    axes[1, 0].legend(frameon=False, fontsize=7)
    n = runs.groupby(["dataset", "strategy"]).size()
    spread = (f"line: mean, band: range over {int(n.min())}"
              f"{'' if n.min() == n.max() else f'-{int(n.max())}'} seeds" if n.max() > 1
              else "one seed: no band")
    fig.suptitle(f"Training curves ({spread}{'; n < 3' if 1 < n.max() < 3 else ''}; model "
                 f"selection: the last epoch, no test data seen)", fontsize=8)
    return _finish(plt, fig, outdir, "curves", note)


def _trainable_params(plt, df, strategies, datasets, col, outdir, note):  # type: ignore[no-untyped-def]
    """Trainable parameters per strategy (log scale), each bar labelled with its count and its
    share of the model's parameters."""
    import numpy as np

    fig, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 2.8), squeeze=False)
    for j, ds in enumerate(datasets):
        sub = df[df.dataset == ds].groupby("strategy", sort=False).agg(
            t=("trainable_params", "first"), total=("total_params", "first")).reindex(strategies)
        sub = sub.dropna()
        ax = axes[0, j]
        x = np.arange(len(sub))
        ax.bar(x, sub.t, color=[col[s] for s in sub.index])
        ax.set_yscale("log")
        for xi, (t, total) in zip(x, zip(sub.t, sub.total, strict=True), strict=True):
            count = f"{t / 1e6:.3g} M" if t >= 1e5 else f"{t / 1e3:.3g} k"
            ax.text(xi, t, f"{count}\n{100 * t / total:.2g} %" if t < total else f"{count}\nall",
                    ha="center", va="bottom", fontsize=6)
        # every bar from the same decade below the smallest (a log axis has no zero)
        ax.set_ylim(bottom=10 ** (np.floor(np.log10(max(sub.t.min(), 1))) - 1))
        ax.set_xticks(x, list(sub.index), rotation=30 if len(sub) > 3 else 0, fontsize=7)
        ax.set_ylabel("trainable parameters (log)")
        ax.set_title(ds if len(datasets) > 1 else "", fontsize=8)
        ax.margins(y=0.25)
    fig.suptitle("Trainable parameters per strategy (label: count, share of all parameters)",
                 fontsize=8)
    return _finish(plt, fig, outdir, "trainable_params", note)


def _series_figures(plt, df, task, strategies, outdir, note):  # type: ignore[no-untyped-def]
    """The primary metric (mIoU) vs label fraction (a panel per strategy, a line per sequence
    length) and a label fraction x sequence length heatmap of its mean per strategy."""
    import numpy as np

    agg = df.groupby(["strategy", "sequence_length", "label_fraction"]).agg(
        m=("test_primary", "mean"), sd=("test_primary", "std")).reset_index()
    lengths = sorted(agg["sequence_length"].unique())
    fracs = sorted(agg["label_fraction"].unique())
    cmap = plt.get_cmap("viridis")
    lcol = {t: cmap(i / max(1, len(lengths) - 1)) for i, t in enumerate(lengths)}
    n = len(strategies)
    written = []
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], strategies, strict=True):
        for t in lengths:
            a = agg[(agg.strategy == s) & (agg.sequence_length == t)].sort_values("label_fraction")
            if len(a):
                ax.errorbar(100 * a["label_fraction"], 100 * a["m"], yerr=100 * a["sd"].fillna(0),
                            marker="o", ms=3, capsize=2, color=lcol[t], label=f"T={int(t)}")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training patches (%)")
        ax.set_title(s, fontsize=8)
    axes[0][0].set_ylabel(task.metric_label)
    axes[0][-1].legend(frameon=False, fontsize=7, title="dates", title_fontsize=7)
    fig.suptitle(f"{task.short} vs label fraction per sequence length ({seeds_phrase(df)})", fontsize=9)
    fig.tight_layout()
    written += _save(fig, outdir, "miou_vs_fraction", note)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 2.9), squeeze=False)
    vmax = 100 * agg["m"].max()
    for ax, s in zip(axes[0], strategies, strict=True):
        grid = np.full((len(lengths), len(fracs)), np.nan)
        for _, r in agg[agg.strategy == s].iterrows():
            grid[lengths.index(r["sequence_length"]), fracs.index(r["label_fraction"])] = 100 * r["m"]
        im = ax.imshow(grid, cmap="magma", vmin=0, vmax=vmax, origin="lower", aspect="auto")
        for i in range(len(lengths)):
            for j in range(len(fracs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < 0.6 * vmax else "black")
        ax.set_xticks(range(len(fracs)), [f"{100 * f:g}" for f in fracs], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(int(t)) for t in lengths], fontsize=7)
        ax.set_xlabel("labelled patches (%)")
        ax.set_title(s, fontsize=8)
    axes[0][0].set_ylabel("dates per series (T)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{task.short} (%)")
    fig.suptitle(f"{task.short}: label fraction x sequence length ("
                 + seeds_phrase(df).replace("mean ± sd", "mean") + ")", fontsize=9)
    written += _save(fig, outdir, "fraction_length_heatmap", note)
    plt.close(fig)
    return written


def _panel_figures(plt, df, agg, strategies, datasets, col, fmax, outdir, note):  # type: ignore[no-untyped-def]
    """Primary metric vs trainable parameters, and vs label fraction (a panel per dataset)."""
    nd = len(datasets)
    written = []
    fig, axes = plt.subplots(1, nd, figsize=(4.2 * nd, 3.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        ylabel, short = dataset_task(ds).metric_label, dataset_task(ds).noun
        for s in strategies:
            a = agg[(agg.dataset == ds) & (agg.strategy == s) & (agg.label_fraction == fmax)]
            ax.errorbar(a["params"], 100 * a["acc"], yerr=100 * a["acc_sd"].fillna(0), fmt="o",
                        color=col[s], capsize=3, label=s)
            for _, r in a.iterrows():
                ax.annotate(s, (r["params"], 100 * r["acc"]), textcoords="offset points",
                            xytext=(5, 4), fontsize=8, color=col[s])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(ylabel)
        ax.set_title((f"{ds}: {short}" if nd > 1 else short.capitalize())
                     + f" vs trainable parameters ({100 * fmax:g} % of labels)\n"
                     + seeds_phrase(df[df.dataset == ds]), fontsize=8)
    fig.tight_layout()
    written += _save(fig, outdir, "accuracy_vs_params", note)
    plt.close(fig)

    fig, axes = plt.subplots(1, nd, figsize=(4.2 * nd, 3.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        ylabel, short = dataset_task(ds).metric_label, dataset_task(ds).noun
        for s in strategies:
            a = agg[(agg.dataset == ds) & (agg.strategy == s)].sort_values("label_fraction")
            ax.errorbar(100 * a["label_fraction"], 100 * a["acc"], yerr=100 * a["acc_sd"].fillna(0),
                        marker="o", color=col[s], capsize=3, label=s)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training samples (%)")
        ax.set_ylabel(ylabel)
        ax.set_title((f"{ds}: " if nd > 1 else "") + f"{short} vs label fraction\n"
                     + seeds_phrase(df[df.dataset == ds]), fontsize=8)
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    written += _save(fig, outdir, "accuracy_vs_fraction", note)
    plt.close(fig)
    return written


def _cost(plt, df, strategies, datasets, col, outdir, note):  # type: ignore[no-untyped-def]
    """Training wall time, throughput and peak memory per strategy and label fraction."""
    import numpy as np

    cost = cost_table(df)
    groups = [(ds, f) for ds in datasets for f in sorted(cost[cost.dataset == ds].label_fraction.unique())]
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.0))
    x = np.arange(len(strategies))
    w = 0.8 / len(groups)
    hatches = ["", "//", "..", "xx", "\\\\", "++"]
    for j, (ds, f) in enumerate(groups):
        c = cost[(cost.dataset == ds) & (cost.label_fraction == f)].set_index("strategy").reindex(strategies)
        off = x + (j - (len(groups) - 1) / 2) * w
        label = (f"{ds}, " if len(datasets) > 1 else "") + f"{100 * f:g} % labels"
        for a, key in zip(axes, ("time", "ips", "mem"), strict=True):
            a.bar(off, c[key], width=w, yerr=c[f"{key}_sd"].fillna(0), capsize=2,
                  color=[col[s] for s in strategies], hatch=hatches[j % len(hatches)],
                  edgecolor="white", label=label)
    resumed = int((df["attempts"] > 1).sum()) if "attempts" in df else 0
    axes[0].set_ylabel("training wall time per run (s)"
                       + (f"\nall attempts; {resumed} runs resumed" if resumed else ""))
    axes[1].set_ylabel("training throughput (images/s)")
    device = str(df["device"].iloc[0])
    axes[2].set_ylabel("training memory (MiB)\n" + memory_kind(df).replace(": ", ":\n"), fontsize=7)
    for a in axes:
        a.set_xticks(x, strategies, rotation=30 if len(strategies) > 3 else 0, fontsize=7)
    axes[2].legend(frameon=False, fontsize=6)
    fig.suptitle(f"Cost per strategy and label fraction (device: {device}; bars: "
                 f"{seeds_phrase(df)})", fontsize=8)
    return _finish(plt, fig, outdir, "cost", note)


def _confusion(plt, df, datasets, strategies, fmax, runs_dir, outdir, note):  # type: ignore[no-untyped-def]
    """Confusion matrices (multi-class, segmentation) summed over every seed at the largest label
    fraction, each row normalised (recall), with a colour bar; per-class AP (multi-label) as the
    mean and sd over seeds. No run is picked: nothing is selected on the test set."""
    import numpy as np

    from geopeft.evaluate.plots import plot_matrix

    fig, axes = plt.subplots(len(datasets), len(strategies),
                             figsize=(3.6 * len(strategies), 3.8 * len(datasets)), squeeze=False)
    image = None
    for row, ds in zip(axes, datasets, strict=True):
        for ax, s in zip(row, strategies, strict=True):
            m, n_runs = summed_confusion(df, runs_dir, ds, s, fmax)
            if not n_runs:
                ax.axis("off")
                continue
            classes = m["classes"]
            k = len(classes)
            fs = 7 if k <= 12 else 6
            if "confusion_matrix" in m:
                cm = m["confusion_matrix"]
                image = plot_matrix(ax, cm, classes, fs)
                score = np.trace(cm) / max(cm.sum(), 1)
                title = f"OA of the summed matrix {100 * score:.1f} %"
            else:  # multi-label: per-class AP over seeds
                ap = np.asarray(m["per_class_ap_runs"], float)
                mean = np.nanmean(ap, 0)
                sd = np.nanstd(ap, 0, ddof=1) if len(ap) > 1 else np.zeros(k)
                ax.barh(range(k), mean, xerr=sd, color="#1b6ca8", capsize=1.5)
                ax.set_xlim(0, 1)
                ax.invert_yaxis()
                ax.set_xlabel("average precision")
                title = f"mean mAP {100 * np.nanmean(mean):.1f} %"
            ax.set_yticks(range(k), classes if ax is row[0] else [""] * k, fontsize=fs)
            if ax is row[0] and "confusion_matrix" in m:
                ax.set_ylabel("true")
            length = df[(df.dataset == ds) & (df.strategy == s)].get("sequence_length")
            length = (f", T = {int(length.max())}" if length is not None and length.notna().any()
                      else "")
            ax.set_title(f"{s} ({ds}, {100 * fmax:g} % labels{length})\n{title}, {n_runs} seed"
                         f"{'s' if n_runs > 1 else ''}", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7,
                     label="share of the true class (rows sum to 1)")
    kinds = []
    if image is not None:
        kinds.append("test confusion matrices summed over seeds, rows normalised (recall)")
    # what the tasks without a confusion matrix draw instead (multi-label: per-class AP)
    kinds.extend(dict.fromkeys(t.per_class_bars for t in study_kind(datasets)[0]
                               if t.per_class_bars))
    fig.suptitle("; ".join(kinds).capitalize(), fontsize=8)
    paths = _save(fig, outdir, "confusion", note)
    plt.close(fig)
    return paths


__all__ = ["FIGURES", "REHEARSAL_NOTE", "SERIES_FIGURES", "SYNTHETIC_NOTE", "cost_table",
           "curve_runs", "figure_names", "histories", "make_figures", "memory_kind",
           "provenance_note", "seeds_phrase", "study_figures", "summed_confusion"]
