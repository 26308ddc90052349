"""The learning rate of each swept cell, chosen on validation (``strategies.<key>.lr_sweep``).

A cell is the runs of one dataset, strategy, label fraction and (for time series) sequence
length; a swept cell holds one run per rate and seed. Its rate is the one with the best mean
validation score (``val_score``: the last epoch's, the model a run saves) over the seeds; ties go
to the rate listed first. The test split is never read. Runs outside a sweep are all kept.
Pure Python: the aggregate rule calls it on runs.csv's rows before pandas is loaded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

#: What makes a cell: runs that differ only by their seed and, in a sweep, their rate.
CELL = ("dataset", "strategy", "label_fraction", "sequence_length")


def cell_of(row: dict[str, Any]) -> tuple[Any, ...]:
    """The cell (:data:`CELL`) of a runs.csv row."""
    return tuple(row.get(k) for k in CELL)


def _mean(values: list[float | None]) -> float:
    """The mean of the validation scores; -inf when one is missing (a run without a
    validation score cannot win)."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return -math.inf
    return sum(float(v) for v in values) / len(values)  # type: ignore[arg-type]


def sweep_scores(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[float, float]]:
    """Per swept cell, the mean validation score of each rate over its seeds, in the order of
    the sweep (rows: runs.csv's, each with ``lr``, ``lr_sweep``, ``val_score``)."""
    runs: dict[tuple[Any, ...], dict[float, list[float | None]]] = defaultdict(dict)
    order: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        if not r.get("lr_sweep"):
            continue
        cell = cell_of(r)
        order.setdefault(cell, [float(x) for x in r["lr_sweep"]])
        runs[cell].setdefault(float(r["lr"]), []).append(r.get("val_score"))
    return {cell: {lr: _mean(runs[cell][lr]) for lr in rates if lr in runs[cell]}
            for cell, rates in order.items()}


def chosen_rates(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
    """Per swept cell, the rate chosen on validation (best mean score; ties: the first
    listed).

    Raises:
        ValueError: no rate of a cell has a validation score of every seed (naming the cell):
            nothing can be chosen on validation, and nothing is chosen otherwise.
    """
    out = {}
    for cell, scores in sweep_scores(rows).items():
        best = max(scores.values())
        if best == -math.inf:
            raise ValueError(f"learning-rate sweep of {dict(zip(CELL, cell, strict=True))}: no "
                             f"rate has a validation score for every seed, so none can be "
                             f"chosen on validation")
        out[cell] = next(lr for lr, s in scores.items() if s == best)
    return out


def selected(rows: list[dict[str, Any]]) -> list[bool]:
    """Whether each row is reported: every run outside a sweep, and in a swept cell the runs
    of the rate chosen on validation."""
    chosen = chosen_rates(rows)
    return [not r.get("lr_sweep") or float(r["lr"]) == chosen[cell_of(r)] for r in rows]


__all__ = ["CELL", "cell_of", "chosen_rates", "selected", "sweep_scores"]
