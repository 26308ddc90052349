"""Pictures of a test evaluation: the confusion matrix as an image (logged to the run's MLflow
artifacts beside its CSV; the paper's confusion figure draws its matrices with
:func:`plot_matrix` too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_matrix(ax: Any, cm: np.ndarray, classes: list[str], fontsize: float) -> Any:
    """A confusion matrix (rows true, columns predicted) on ``ax``, each row normalised (the
    share of the true class, i.e. recall on the diagonal); returns the image for a colour bar."""
    cm = np.asarray(cm, float)
    image = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=fontsize)
    ax.set_xlabel("predicted")
    return image


def confusion_image(path: Path, cm: np.ndarray, classes: list[str], title: str,
                    columns: list[str] | None = None) -> Path:
    """Write a confusion matrix as a PNG with its counts in the cells.

    Args:
        path: the PNG to write.
        cm: the matrix: (true, predicted) counts; or, with ``columns``, a per-class table of
            counts (multi-label: tp, fp, fn, tn per class), each row normalised the same way.
        classes: the row names (and column names without ``columns``).
        title: the title (run, split, score).
        columns: the column names of a per-class table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geopeft.io import atomic_file

    cm = np.asarray(cm)
    k = len(classes)
    fs = 7 if k <= 12 else 5
    width = 2.5 + 0.45 * (len(columns) if columns else k)
    fig, ax = plt.subplots(figsize=(max(width, 4.5), 2 + 0.38 * k))
    image = plot_matrix(ax, cm, columns or classes, fs)
    ax.set_yticks(range(k), classes, fontsize=fs)
    ax.set_ylabel("true" if columns is None else "class")
    if columns is not None:
        ax.set_xlabel("")
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for (i, j), n in np.ndenumerate(cm):
        if n:
            ax.text(j, i, str(int(n)), ha="center", va="center", fontsize=fs - 1,
                    color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["confusion_image", "plot_matrix"]
