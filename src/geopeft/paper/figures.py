"""Paper figures of a study, each as PDF and PNG. Figures made from synthetic data or in a
rehearsal say so, in the figure and in its metadata (PNG Description, PDF Subject)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from geopeft.io import read_json

if TYPE_CHECKING:  # pandas/numpy load lazily: the Snakefile imports FIGURES at every start
    import pandas as pd

SYNTHETIC_NOTE = "synthetic data: embedded Sentinel-2 world"
REHEARSAL_NOTE = "REHEARSAL: fixture data and random weights, not a result"
METRIC_LABEL = {"overall_accuracy": "test overall accuracy (%)", "map_macro": "test macro mAP (%)",
                "miou": "test mIoU (%, void excluded)"}
FIGURES = ("accuracy_vs_params", "accuracy_vs_fraction", "cost", "confusion")
#: Figures of a time-series segmentation study (label fraction x sequence length).
SEGMENTATION_FIGURES = ("miou_vs_fraction", "fraction_length_heatmap", "cost", "confusion")


def figure_names(segmentation: bool) -> tuple[str, ...]:
    """The figures a study gets."""
    return SEGMENTATION_FIGURES if segmentation else FIGURES


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def provenance_note(df: pd.DataFrame) -> str | None:
    """What every figure and table of these runs must say about where they come from."""
    if "rehearsal" in df and df["rehearsal"].fillna(False).astype(bool).any():
        return REHEARSAL_NOTE
    return SYNTHETIC_NOTE if df["synthetic"].fillna(False).astype(bool).any() else None


def _save(fig, outdir: Path, name: str, note: str | None) -> list[Path]:  # type: ignore[no-untyped-def]
    if note:
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7,
                 color="#b03030", style="italic")
    paths = []
    for ext in ("pdf", "png"):
        p = outdir / f"{name}.{ext}"
        tmp = outdir / f".{name}.tmp.{ext}"
        meta = {"Description" if ext == "png" else "Subject": note} if note else {}
        fig.savefig(tmp, bbox_inches="tight", format=ext, metadata=meta)
        tmp.replace(p)
        paths.append(p)
    return paths


def _colors(strategies: list[str]) -> dict[str, str]:
    palette = ["#1b6ca8", "#d1495b", "#2a9d8f", "#edae49", "#6a4c93", "#8d8d8d"]
    return {s: palette[i % len(palette)] for i, s in enumerate(strategies)}


def _metric_label(df: pd.DataFrame) -> tuple[str, str]:
    metric = str(df["primary_metric"].iloc[0])
    return METRIC_LABEL.get(metric, f"test {metric} (%)"), ("accuracy" if metric == "overall_accuracy"
                                                             else "mAP")


def make_figures(runs_csv: Path, outdir: Path, confusion_dir: Path | None = None) -> list[Path]:
    """Draw all figures of a study into ``outdir``; returns the written paths.

    A study over several datasets gets one panel per dataset (each with its own metric); a
    time-series segmentation study gets the label fraction x sequence length figures instead.

    Args:
        runs_csv: the study's runs.csv.
        outdir: the figures folder.
        confusion_dir: the runs folder (confusion matrices).
    """
    import pandas as pd

    plt = _plt()
    df = pd.read_csv(runs_csv)
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
    if (df["primary_metric"] == "miou").all():
        written += _segmentation_figures(plt, df, strategies, outdir, note)
    else:
        written += _classification_figures(plt, df, agg, strategies, datasets, col, fmax, outdir,
                                            note)
    written += _cost(plt, df, strategies, datasets, col, outdir, note)
    if confusion_dir is not None:
        written += _confusion(plt, df, datasets, strategies, fmax, confusion_dir, outdir, note)
    return written


def _segmentation_figures(plt, df, strategies, outdir, note):  # type: ignore[no-untyped-def]
    """mIoU vs label fraction (a panel per strategy, a line per sequence length) and a label
    fraction x sequence length heatmap of mean mIoU per strategy."""
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
    axes[0][0].set_ylabel(METRIC_LABEL["miou"])
    axes[0][-1].legend(frameon=False, fontsize=7, title="dates", title_fontsize=7)
    fig.suptitle("mIoU vs label fraction per sequence length (mean ± sd over seeds)", fontsize=9)
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
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mIoU (%)")
    fig.suptitle("mIoU: label fraction x sequence length (mean over seeds)", fontsize=9)
    written += _save(fig, outdir, "fraction_length_heatmap", note)
    plt.close(fig)
    return written


def _classification_figures(plt, df, agg, strategies, datasets, col, fmax, outdir,  # type: ignore[no-untyped-def]
                            note):
    """Primary metric vs trainable parameters, and vs label fraction (a panel per dataset)."""
    nd = len(datasets)
    written = []
    fig, axes = plt.subplots(1, nd, figsize=(4.2 * nd, 3.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        ylabel, short = _metric_label(df[df.dataset == ds])
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
        ax.set_title(f"{ds}: {short} vs trainable parameters ({100 * fmax:g} % of labels)"
                     if nd > 1 else f"{short.capitalize()} vs trainable parameters "
                     f"({100 * fmax:g} % of labels)", fontsize=8 if nd > 1 else 9)
    fig.tight_layout()
    written += _save(fig, outdir, "accuracy_vs_params", note)
    plt.close(fig)

    fig, axes = plt.subplots(1, nd, figsize=(4.2 * nd, 3.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        ylabel, short = _metric_label(df[df.dataset == ds])
        for s in strategies:
            a = agg[(agg.dataset == ds) & (agg.strategy == s)].sort_values("label_fraction")
            ax.errorbar(100 * a["label_fraction"], 100 * a["acc"], yerr=100 * a["acc_sd"].fillna(0),
                        marker="o", color=col[s], capsize=3, label=s)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training samples (%)")
        ax.set_ylabel(ylabel)
        ax.set_title((f"{ds}: " if nd > 1 else "") + f"{short} vs label fraction "
                     "(mean ± sd over seeds)", fontsize=8 if nd > 1 else 9)
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    written += _save(fig, outdir, "accuracy_vs_fraction", note)
    plt.close(fig)
    return written


def _cost(plt, df, strategies, datasets, col, outdir, note):  # type: ignore[no-untyped-def]
    """Training wall time and peak memory per strategy."""
    import numpy as np

    nd = len(datasets)
    cost = df.groupby(["strategy", "dataset"]).agg(
        time=("wall_time_s", "mean"), time_sd=("wall_time_s", "std"),
        mem=("peak_memory_mb", "mean"), mem_sd=("peak_memory_mb", "std"))
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8))
    x = np.arange(len(strategies))
    w = 0.8 / nd
    hatches = ["", "//", "..", "xx"]
    for j, ds in enumerate(datasets):
        c = cost.xs(ds, level="dataset").reindex(strategies)
        off = x + (j - (nd - 1) / 2) * w
        for a, key in zip(axes, ("time", "mem"), strict=True):
            a.bar(off, c[key], width=w, yerr=c[f"{key}_sd"].fillna(0), capsize=3,
                  color=[col[s] for s in strategies], hatch=hatches[j % len(hatches)],
                  edgecolor="white", label=ds)
    resumed = int((df["attempts"] > 1).sum()) if "attempts" in df else 0
    axes[0].set_ylabel("training wall time per run (s)"
                       + (f"\nall attempts; {resumed} runs resumed" if resumed else ""))
    device = str(df["device"].iloc[0])
    axes[1].set_ylabel("peak memory (MiB, " + ("CUDA allocated" if "cuda" in device else "RSS") + ")")
    for a in axes:
        a.set_xticks(x, strategies, rotation=30 if len(strategies) > 3 else 0, fontsize=7)
    if nd > 1:
        axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle(f"Cost per strategy (device: {device})")
    fig.tight_layout()
    paths = _save(fig, outdir, "cost", note)
    plt.close(fig)
    return paths


def _confusion(plt, df, datasets, strategies, fmax, runs_dir, outdir, note):  # type: ignore[no-untyped-def]
    """Confusion matrices (multi-class) or per-class AP (multi-label) of each strategy's best run."""
    import numpy as np

    fig, axes = plt.subplots(len(datasets), len(strategies),
                             figsize=(3.3 * len(strategies), 3.4 * len(datasets)), squeeze=False)
    for row, ds in zip(axes, datasets, strict=True):
        d = df[(df.dataset == ds) & (df.label_fraction == fmax)].sort_values("test_primary",
                                                                            ascending=False)
        best = d.groupby("strategy").head(1).set_index("strategy")
        for ax, s in zip(row, strategies, strict=True):
            if s not in best.index:
                ax.axis("off")
                continue
            m = read_json(runs_dir / best.loc[s, "run"] / "metrics.json")
            n = len(m["classes"])
            if "confusion_matrix" in m:
                cm = np.asarray(m["confusion_matrix"], dtype=float)
                ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
                ax.set_xticks(range(n), m["classes"], rotation=90, fontsize=6)
                ax.set_xlabel("predicted")
                title = (f"mIoU {100 * m['miou']:.1f} %" if "miou" in m
                         else f"OA {100 * m['overall_accuracy']:.1f} %")
            else:  # multi-label: per-class AP
                ap = [np.nan if a is None else a for a in m["per_class_ap"]]
                ax.barh(range(n), ap, color="#1b6ca8")
                ax.set_xlim(0, 1)
                ax.invert_yaxis()
                ax.set_xlabel("average precision")
                title = f"mAP {100 * m['map_macro']:.1f} %"
            ax.set_yticks(range(n), m["classes"] if ax is row[0] else [""] * n, fontsize=6)
            if ax is row[0] and "confusion_matrix" in m:
                ax.set_ylabel("true")
            ax.set_title(f"{s}: {best.loc[s, 'run']}\n{title}", fontsize=8)
    fig.tight_layout()
    paths = _save(fig, outdir, "confusion", note)
    plt.close(fig)
    return paths
