"""Collect every run of a study into one CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from geopeft.io import atomic_file, read_json
from geopeft.layout import ModelLayout
from geopeft.paper.selection import selected
from geopeft.tasks import RUN_COLUMNS, of_metrics

#: What ``peak_memory_mb`` measured in runs recorded before ``memory_kind`` was kept.
OLD_MEMORY_KIND = "process peak RSS"

COLUMNS = [
    "run", "strategy", "method", "label_fraction", "seed", "lr", "lr_sweep", "selected",
    "trainable_params", "total_params",
    "trainable_pct", "train_samples", "epochs", "wall_time_s", "attempts", "images_per_s",
    "step_time_s", "device_hours", "peak_memory_mb", "memory_kind",
    # every task's test metrics (Task.run_columns), empty in the rows of the other tasks
    "val_score", "primary_metric", "test_primary", *RUN_COLUMNS,
    "sequence_length", "model", "device", "dataset", "synthetic", "rehearsal", "mlflow_run_id",
]


def run_row(model_dir: Path, metrics_file: Path) -> dict[str, Any]:
    """One runs.csv row: a run's record (``run.json``) with its test metrics."""
    rec = read_json(ModelLayout(Path(model_dir)).record)
    met = read_json(metrics_file)
    row = rec["spec"]["row"]
    task = of_metrics(met)
    steps = rec.get("steps")
    return {
        "run": row["name"], "strategy": row["strategy"], "method": row["method"],
        "label_fraction": row["label_fraction"], "seed": row["seed"],
        "lr": row["train"]["lr"], "lr_sweep": row.get("lr_sweep") or [], "selected": True,
        "trainable_params": rec["trainable_params"], "total_params": rec["total_params"],
        "trainable_pct": 100.0 * rec["trainable_params"] / rec["total_params"],
        "train_samples": rec["train_samples"], "epochs": row["train"]["epochs"],
        "wall_time_s": rec["wall_time_s"], "attempts": rec.get("attempts", 1),
        "images_per_s": rec["images_per_s"],
        # runs recorded before steps were kept: no step time
        "step_time_s": rec["train_time_s"] / steps if steps else None,
        # the job's time on each of its devices (its processes, for DDP), summed
        "device_hours": rec["wall_time_s"] * rec.get("world_size", 1) / 3600,
        "peak_memory_mb": rec["peak_memory_mb"],
        "memory_kind": rec.get("memory_kind", OLD_MEMORY_KIND),
        "val_score": rec["history"][-1].get("val_score"),
        "primary_metric": met["primary_metric"], "test_primary": met["primary"],
        **dict.fromkeys(RUN_COLUMNS),
        **{f"test_{c}": met.get(key) for c, key in task.run_columns.items()},
        "sequence_length": row.get("sequence_length"),
        "model": (row.get("segmentation") or {}).get("model", "upernet_ltae")
        if row.get("segmentation") is not None else "",
        "device": rec["device"], "dataset": rec["spec"]["data"]["dataset"],
        "synthetic": rec["spec"]["data"].get("source") == "synthetic",
        "rehearsal": bool(rec["spec"].get("rehearsal", False)),
        "mlflow_run_id": rec["mlflow_run_id"],
    }


def aggregate(model_dirs: list[Path], metrics_files: list[Path], out: Path) -> list[dict[str, Any]]:
    """Write ``out`` (CSV, one row per run, in the study's order: tables and legends follow it).

    Args:
        model_dirs: the runs' saved models, in study order.
        metrics_files: their test metrics, in the same order.
        out: the CSV to write.
    """
    if len(model_dirs) != len(metrics_files):
        raise ValueError("aggregate needs one metrics file per model folder")
    rows = [run_row(m, f) for m, f in zip(model_dirs, metrics_files, strict=True)]
    for r, keep in zip(rows, selected(rows), strict=True):
        r["selected"] = keep
    with atomic_file(out) as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({**r, "lr_sweep": " ".join(repr(float(x)) for x in r["lr_sweep"])}
                    for r in rows)
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The study at a glance, as Markdown (the MLflow experiment's description): per dataset,
    strategy, label fraction (and sequence length), the primary test score as mean ± sd over the
    seeds (n said), trainable parameters and the mean wall time."""
    import pandas as pd

    rows = [r for r in rows if r.get("selected", True)]  # a sweep's chosen rate only
    if not rows:
        return "No run yet."
    df = pd.DataFrame(rows)
    keys = ["dataset", "strategy", "label_fraction"]
    if df["sequence_length"].notna().any():
        keys.append("sequence_length")
    lines = [f"| {' | '.join(k.replace('_', ' ') for k in keys)} | test score (%) | seeds | "
             f"trainable params | wall time (s) |", "|" + "---|" * (len(keys) + 4)]
    for key, g in df.groupby(keys, sort=False, dropna=False):
        score = 100 * g["test_primary"].astype(float)
        sd = f" ± {score.std(ddof=1):.1f}" if len(g) > 1 else ""
        cells = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        cells[2] = f"{100 * float(cells[2]):g} %"
        lines.append(f"| {' | '.join(cells)} | {g['primary_metric'].iloc[0].replace('_', ' ')} "
                     f"{score.mean():.1f}{sd} | {len(g)} | {int(g['trainable_params'].iloc[0]):,} "
                     f"| {g['wall_time_s'].astype(float).mean():.0f} |")
    synthetic = " Synthetic data: the embedded Sentinel-2 world." if df["synthetic"].all() else ""
    return ("\n".join(lines) + f"\n\nScores: mean ± sd over the seeds (n in the seeds column; "
            f"no ± for one seed); wall time: mean over the seeds.{synthetic}")
