"""Classification metrics from a confusion matrix (rows = true class, columns = predicted).

Precision of class c = C[c, c] / column sum (of all predicted c, how many are c);
recall of class c = C[c, c] / row sum (of all true c, how many were found). Classes that never
occur and are never predicted are left out of macro averages (as scikit-learn's ``labels=present``
would); a class that occurs but is never predicted has precision 0 and F1 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs: rows true classes, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes**2).reshape(
        n_classes, n_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Overall accuracy, per-class precision/recall/F1, macro averages."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    return {
        "overall_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "per_class_f1": f1.tolist(),
        "per_class_precision": precision.tolist(),
        "per_class_recall": recall.tolist(),
        "support": support.astype(int).tolist(),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """All metrics plus the confusion matrix (as a nested list).

    Args:
        y_true: class indices.
        y_pred: predicted class indices.
        n_classes: the number of classes.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    return {**from_confusion(cm), "confusion_matrix": cm.tolist()}
