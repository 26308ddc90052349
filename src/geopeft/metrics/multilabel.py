"""Multi-label metrics (BigEarthNet): average precision per class, mAP micro and macro, and F1
micro and macro at a 0.5 probability threshold.

Average precision follows the step-wise definition AP = sum_n (R_n - R_{n-1}) P_n over the
distinct score thresholds (ties handled as one threshold), which is what scikit-learn computes.
Classes without a positive sample in ``y_true`` have no AP and are left out of the macro mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Per-class probabilities from multi-label logits."""
    return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """AP of one class; NaN when ``y`` holds no positive."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s, yy = np.asarray(score, dtype=np.float64)[order], y[order]
    tp = np.cumsum(yy)
    fp = np.cumsum(~yy)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=np.float64), where=denom > 0)


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics from multi-hot ``y_true`` (N, C) and probabilities ``scores`` (N, C).

    Args:
        y_true: multi-hot targets (N, C).
        scores: probabilities (N, C).
        threshold: the decision threshold of the F1 scores.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and scores {p.shape} differ in shape")
    ap = np.array([average_precision(y[:, c], p[:, c]) for c in range(y.shape[1])])
    pred = p >= threshold
    tp = (pred & y).sum(0).astype(np.float64)
    fp = (pred & ~y).sum(0).astype(np.float64)
    fn = (~pred & y).sum(0).astype(np.float64)
    present = y.sum(0) > 0
    return {
        "map_macro": float(np.nanmean(ap)) if present.any() else 0.0,
        "map_micro": average_precision(y.ravel(), p.ravel()),
        "f1_macro": float(_f1(tp, fp, fn)[present | (tp + fp > 0)].mean()),
        "f1_micro": float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0]),
        "per_class_ap": [None if np.isnan(a) else float(a) for a in ap],
        "per_class_f1": _f1(tp, fp, fn).tolist(),
        "support": y.sum(0).astype(int).tolist(),
        "threshold": threshold,
    }
