"""Semantic segmentation metrics from a pixel confusion matrix (rows true, columns predicted).

Pixels whose true label is the void class (PASTIS 19) are left out entirely: they enter neither
the confusion matrix nor any mean, and the model has no void output. Over the real classes
(PASTIS: background + 18 crops = 19):

* IoU of class c = TP / (TP + FP + FN); mIoU averages the classes that occur or are predicted
  (a class absent from the reference and never predicted has no IoU);
* precision = TP / predicted c (column sum), recall = TP / true c (row sum), F1 their harmonic
  mean (:mod:`geopeft.metrics.classification`); mF1 averages F1 like mIoU;
* OA = correctly classified non-void pixels / non-void pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geopeft.metrics.classification import _div, from_confusion


def pixel_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                    ignore: int | None = None) -> np.ndarray:
    """Confusion matrix (n_classes x n_classes) of label maps; ``ignore`` pixels are skipped.

    Raises:
        ValueError: a true label (not ``ignore``) or a prediction is outside 0..n_classes-1.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"label maps {np.shape(y_true)} and predictions {np.shape(y_pred)} differ")
    keep = t != ignore if ignore is not None else np.ones_like(t, bool)
    t, p = t[keep], p[keep]
    for name, y in (("true labels", t), ("predictions", p)):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} outside 0..{n_classes - 1} (void {ignore} excluded): "
                             f"{np.unique(y[(y < 0) | (y >= n_classes)])[:5].tolist()}")
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def segmentation_metrics(cm: np.ndarray) -> dict[str, Any]:
    """mIoU, mF1, OA, per-class IoU / precision / recall / F1 of a void-free confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    iou = _div(tp, support + predicted - tp)
    present = (support + predicted) > 0
    base = from_confusion(cm)
    f1 = np.asarray(base["per_class_f1"])
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "mf1": float(f1[present].mean()) if present.any() else 0.0,
        "overall_accuracy": base["overall_accuracy"],
        "macro_precision": base["macro_precision"],
        "macro_recall": base["macro_recall"],
        "per_class_iou": [float(v) if ok else None for v, ok in zip(iou, present, strict=True)],
        "per_class_precision": base["per_class_precision"],
        "per_class_recall": base["per_class_recall"],
        "per_class_f1": base["per_class_f1"],
        "support": base["support"],
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


__all__ = ["pixel_confusion", "segmentation_metrics"]
