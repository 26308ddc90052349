"""Paper figures of a study, each as PDF and PNG. Figures made from synthetic data say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopeft.io import read_json

SYNTHETIC_NOTE = "synthetic data: embedded Sentinel-2 world"
METRIC_LABEL = {"overall_accuracy": "test overall accuracy (%)", "map_macro": "test macro mAP (%)"}
FIGURES = ("accuracy_vs_params", "accuracy_vs_fraction", "cost", "confusion")


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, outdir: Path, name: str, synthetic: bool) -> list[Path]:  # type: ignore[no-untyped-def]
    if synthetic:
        fig.text(0.5, -0.01, SYNTHETIC_NOTE, ha="center", va="top", fontsize=7,
                 color="#b03030", style="italic")
    paths = []
    for ext in ("pdf", "png"):
        p = outdir / f"{name}.{ext}"
        tmp = outdir / f".{name}.tmp.{ext}"
        fig.savefig(tmp, bbox_inches="tight", format=ext)
        tmp.replace(p)
        paths.append(p)
    return paths


def _colors(strategies: list[str]) -> dict[str, str]:
    palette = ["#1b6ca8", "#d1495b", "#2a9d8f", "#edae49", "#6a4c93", "#8d8d8d"]
    return {s: palette[i % len(palette)] for i, s in enumerate(strategies)}


def make_figures(runs_csv: Path, outdir: Path, confusion_dir: Path | None = None) -> list[Path]:
    """Draw all figures of a study into ``outdir``; returns the written paths."""
    plt = _plt()
    df = pd.read_csv(runs_csv)
    outdir.mkdir(parents=True, exist_ok=True)
    synthetic = bool(df["synthetic"].any())
    strategies = list(dict.fromkeys(df["strategy"]))
    col = _colors(strategies)
    g = df.groupby(["strategy", "label_fraction"])
    agg = g.agg(acc=("test_primary", "mean"), acc_sd=("test_primary", "std"),
                params=("trainable_params", "first")).reset_index()
    metric = str(df["primary_metric"].iloc[0])
    ylabel = METRIC_LABEL.get(metric, f"test {metric} (%)")
    short = "accuracy" if metric == "overall_accuracy" else "mAP"
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    fmax = agg["label_fraction"].max()
    for s in strategies:
        a = agg[(agg.strategy == s) & (agg.label_fraction == fmax)]
        ax.errorbar(a["params"], 100 * a["acc"], yerr=100 * a["acc_sd"].fillna(0), fmt="o",
                    color=col[s], capsize=3, label=s)
        for _, r in a.iterrows():
            ax.annotate(s, (r["params"], 100 * r["acc"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8, color=col[s])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{short.capitalize()} vs trainable parameters ({100 * fmax:g} % of labels)")
    written += _save(fig, outdir, "accuracy_vs_params", synthetic)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    for s in strategies:
        a = agg[agg.strategy == s].sort_values("label_fraction")
        ax.errorbar(100 * a["label_fraction"], 100 * a["acc"], yerr=100 * a["acc_sd"].fillna(0),
                    marker="o", color=col[s], capsize=3, label=s)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training samples (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{short.capitalize()} vs label fraction (mean ± sd over seeds)")
    ax.legend(frameon=False)
    written += _save(fig, outdir, "accuracy_vs_fraction", synthetic)
    plt.close(fig)

    cost = df.groupby("strategy").agg(time=("wall_time_s", "mean"), time_sd=("wall_time_s", "std"),
                                      mem=("peak_memory_mb", "mean"),
                                      mem_sd=("peak_memory_mb", "std"),
                                      ips=("images_per_s", "mean")).reindex(strategies)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8))
    x = np.arange(len(strategies))
    axes[0].bar(x, cost["time"], yerr=cost["time_sd"].fillna(0), color=[col[s] for s in strategies],
                capsize=3)
    axes[0].set_ylabel("training wall time per run (s)")
    axes[1].bar(x, cost["mem"], yerr=cost["mem_sd"].fillna(0), color=[col[s] for s in strategies],
                capsize=3)
    device = str(df["device"].iloc[0])
    axes[1].set_ylabel("peak memory (MiB, " + ("CUDA allocated" if "cuda" in device else "RSS") + ")")
    for a in axes:
        a.set_xticks(x, strategies)
    fig.suptitle(f"Cost per strategy (device: {device})")
    fig.tight_layout()
    written += _save(fig, outdir, "cost", synthetic)
    plt.close(fig)

    if confusion_dir is not None:
        best = df[df.label_fraction == fmax].sort_values("test_primary", ascending=False)
        best = best.groupby("strategy").head(1).set_index("strategy").reindex(strategies)
        fig, axes = plt.subplots(1, len(strategies), figsize=(3.3 * len(strategies), 3.4),
                                 squeeze=False)
        for ax, s in zip(axes[0], strategies, strict=True):
            m = read_json(confusion_dir / best.loc[s, "run"] / "metrics.json")
            n = len(m["classes"])
            if "confusion_matrix" in m:
                cm = np.asarray(m["confusion_matrix"], dtype=float)
                cmn = cm / np.maximum(cm.sum(1, keepdims=True), 1)
                ax.imshow(cmn, cmap="Blues", vmin=0, vmax=1)
                ax.set_xticks(range(n), m["classes"], rotation=90, fontsize=6)
                ax.set_xlabel("predicted")
                title = f"OA {100 * m['overall_accuracy']:.1f} %"
            else:  # multi-label: per-class AP
                ap = [np.nan if a is None else a for a in m["per_class_ap"]]
                ax.barh(range(n), ap, color="#1b6ca8")
                ax.set_xlim(0, 1)
                ax.invert_yaxis()
                ax.set_xlabel("average precision")
                title = f"mAP {100 * m['map_macro']:.1f} %"
            ax.set_yticks(range(n), m["classes"] if ax is axes[0][0] else [""] * n, fontsize=6)
            ax.set_title(f"{s}: {best.loc[s, 'run']}\n{title}", fontsize=8)
        axes[0][0].set_ylabel("true" if "confusion_matrix" in m else "")
        fig.tight_layout()
        written += _save(fig, outdir, "confusion", synthetic)
        plt.close(fig)
    return written
