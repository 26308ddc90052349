"""A study's runs as its figures, tables and paper section read them (runs.csv and each run's
files): what kind of study it is (its tasks, whether it is a time series) and so which figures
it gets, what a spread is over, the summed confusion matrices, the cost and where the results
come from. pandas and numpy load lazily: the Snakefile imports :func:`study_figures` at every
start."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from geopeft import tasks
from geopeft.data.sources import get_source
from geopeft.io import read_json
from geopeft.layout import RunLayout
from geopeft.paper.aggregate import OLD_MEMORY_KIND

if TYPE_CHECKING:
    import pandas as pd

SYNTHETIC_NOTE = "synthetic data: embedded Sentinel-2 world"
REHEARSAL_NOTE = "REHEARSAL: fixture data and random weights, not a result"
FIGURES = ("accuracy_vs_params", "accuracy_vs_fraction", "cost", "confusion", "curves",
           "trainable_params")
#: Figures of a study shown by sequence length (:func:`by_sequence_length`: label fraction x
#: sequence length).
SERIES_FIGURES = ("miou_vs_fraction", "fraction_length_heatmap", "cost", "confusion", "curves",
                  "trainable_params")


def read_runs(runs_csv: Path, every: bool = False) -> pd.DataFrame:
    """A study's runs.csv: the runs it reports (``every``: with the other rates of a learning
    rate sweep, which :mod:`geopeft.paper.selection` did not choose on validation). A runs.csv
    written before sweeps existed reports every run."""
    import pandas as pd

    df = pd.read_csv(runs_csv)
    if every or "selected" not in df:
        return df
    return df[df["selected"].astype(bool)].reset_index(drop=True)


def dataset_task(dataset: str) -> tasks.Task:
    """The task of a dataset (its source's)."""
    return tasks.get(get_source(dataset).task)


def study_kind(datasets: Iterable[str]) -> tuple[list[tasks.Task], bool]:
    """The tasks of a study's datasets (each once, in order) and whether it is a time series
    (a dataset of it is)."""
    sources = [get_source(d) for d in dict.fromkeys(datasets)]
    return (list(dict.fromkeys(tasks.get(s.task) for s in sources)),
            any(s.time_series for s in sources))


def by_sequence_length(study_tasks: Iterable[tasks.Task], time_series: bool) -> bool:
    """Whether a study is shown by label fraction x sequence length (its figures, its table's
    rows): a time-series study whose every task asks for it (``Task.series_figures``)."""
    return time_series and all(t.series_figures for t in study_tasks)


def figure_names(study_tasks: Iterable[tasks.Task], time_series: bool) -> tuple[str, ...]:
    """The figures of a study of these tasks (time series or not)."""
    return SERIES_FIGURES if by_sequence_length(study_tasks, time_series) else FIGURES


def study_figures(datasets: Iterable[str]) -> tuple[str, ...]:
    """The figures of a study of these datasets: the rules expect them (common.smk) and
    :func:`geopeft.paper.figures.make_figures` and the paper draw and include them."""
    return figure_names(*study_kind(datasets))


def seeds_phrase(df: pd.DataFrame, keys: tuple[str, ...] = ("dataset", "strategy",
                                                                "label_fraction")) -> str:
    """What a ± or an error bar of these runs is: ``mean ± sd over n seeds`` (n per cell, a range
    when it varies; with n < 3 the sd is said to be a rough spread)."""
    cols = [k for k in (*keys, "sequence_length") if k in df and df[k].notna().any()]
    sizes = df.groupby(cols, dropna=False).size() if cols else [len(df)]
    lo, hi = int(min(sizes)), int(max(sizes))
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    words = f"mean ± sd over {count} seed{'s' if hi > 1 else ''}"
    if hi < 3:
        words += " (n < 3: a rough spread)" if hi > 1 else " (n = 1: no spread)"
    return words


def memory_kind(df: pd.DataFrame) -> str:
    """What the runs' memory column measures (runs.csv ``memory_kind``; older runs: RSS)."""
    if "memory_kind" in df and df["memory_kind"].notna().any():
        return str(df["memory_kind"].dropna().iloc[0])
    return OLD_MEMORY_KIND


def summed_confusion(df: pd.DataFrame, runs_dir: Path, dataset: str, strategy: str,
                     fraction: float) -> tuple[dict, int]:
    """The test metrics of a strategy at one label fraction, over every seed (no run is picked,
    least of all by its test score): confusion matrices summed, per-class AP as a list per seed.

    Returns:
        (metrics of the first run with ``confusion_matrix`` summed and ``per_class_ap_runs`` the
        per-seed APs, number of runs).
    """
    import numpy as np

    runs = df[(df.dataset == dataset) & (df.strategy == strategy) & (df.label_fraction == fraction)]
    ms = [read_json(RunLayout(Path(runs_dir) / r).metrics) for r in runs["run"]]
    if not ms:
        return {}, 0
    out = dict(ms[0])
    if "confusion_matrix" in out:
        out["confusion_matrix"] = np.sum([np.asarray(m["confusion_matrix"], float) for m in ms], 0)
    if "per_class_ap" in out:
        out["per_class_ap_runs"] = [[np.nan if a is None else a for a in m["per_class_ap"]]
                                    for m in ms]
    return out, len(ms)


def provenance_note(df: pd.DataFrame) -> str | None:
    """What every figure and table of these runs must say about where they come from."""
    if "rehearsal" in df and df["rehearsal"].fillna(False).astype(bool).any():
        return REHEARSAL_NOTE
    return SYNTHETIC_NOTE if df["synthetic"].fillna(False).astype(bool).any() else None


def curve_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs the training curves show: per dataset, the largest label fraction and, for time
    series, the longest sequence length (runs of other sizes are never pooled with them)."""
    keep = df[df.label_fraction == df.groupby("dataset").label_fraction.transform("max")]
    if "sequence_length" in keep and keep["sequence_length"].notna().any():
        longest = keep.groupby("dataset").sequence_length.transform("max")
        keep = keep[keep.sequence_length == longest]
    return keep


def histories(df: pd.DataFrame, runs_dir: Path) -> dict[str, list[dict[str, float]]]:
    """Each run's per-epoch metrics (its run.json ``history``), by run name."""
    return {r: read_json(RunLayout(Path(runs_dir) / r).record)["history"] for r in df["run"]}


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cost per dataset, strategy **and** label fraction (runs of different fractions are never
    pooled: their spread would show the data size, not seed noise): mean and sd of the wall
    time, images/s and peak memory, and the number of runs."""
    return df.groupby(["dataset", "strategy", "label_fraction"], sort=False).agg(
        time=("wall_time_s", "mean"), time_sd=("wall_time_s", "std"),
        ips=("images_per_s", "mean"), ips_sd=("images_per_s", "std"),
        mem=("peak_memory_mb", "mean"), mem_sd=("peak_memory_mb", "std"),
        n=("wall_time_s", "size")).reset_index()


__all__ = ["FIGURES", "REHEARSAL_NOTE", "SERIES_FIGURES", "SYNTHETIC_NOTE", "by_sequence_length",
           "cost_table", "curve_runs", "dataset_task", "figure_names", "histories", "memory_kind",
           "provenance_note", "read_runs", "seeds_phrase", "study_figures", "study_kind",
           "summed_confusion"]
