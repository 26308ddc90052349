"""Training losses: cross-entropy (class-weighted, void-ignoring) and BCE (multi-hot targets),
one per ``Task.loss``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from geopeft.tasks import of_targets


def loss_fn(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
            ignore_index: int | None = None) -> torch.Tensor:
    """The loss of the task of ``y`` (:func:`geopeft.tasks.of_targets`, ``Task.loss``): BCE
    for multi-hot targets, else (class-weighted) cross-entropy.

    Args:
        logits: model outputs (N, K) or (N, K, H, W).
        y: class indices (N,) / label maps (N, H, W), or multi-hot floats (N, K).
        weight: per-class weights of the cross-entropy.
        ignore_index: a label (void) that contributes nothing; a batch of only ignored pixels
            has loss 0.
    """
    return LOSSES[of_targets(y).loss](logits, y, weight, ignore_index)


def binary_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                         ignore_index: int | None = None) -> torch.Tensor:
    """BCE of independent class scores against multi-hot targets (no weights, nothing void)."""
    return F.binary_cross_entropy_with_logits(logits.float(), y.float())


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int | None = None) -> torch.Tensor:
    """(Class-weighted) cross-entropy of class indices or label maps, void ignored (the mean
    over the targets that count)."""
    if ignore_index is None:
        return F.cross_entropy(logits.float(), y, weight=weight)
    # the mean over non-ignored targets, computed without a host sync per step
    total = F.cross_entropy(logits.float(), y, weight=weight, ignore_index=ignore_index,
                            reduction="sum")
    valid = (y != ignore_index).float()
    if weight is not None:
        valid = valid * weight[y.clamp(0, len(weight) - 1)]
    denom = valid.sum()
    return torch.where(denom > 0, total / denom.clamp_min(1e-12), total * 0.0)


#: The losses, by ``Task.loss``.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {"cross_entropy": cross_entropy,
                                                  "bce": binary_cross_entropy}


def class_weights(y: np.ndarray, n_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Inverse-frequency class weights, mean 1 over the classes present.

    Args:
        y: labels or label maps.
        n_classes: the number of classes (absent classes get weight 0).
        ignore_index: a label (void) left out of the counts.
    """
    v = np.asarray(y).ravel()
    if ignore_index is not None:
        v = v[v != ignore_index]
    counts = np.bincount(v, minlength=n_classes)[:n_classes].astype(np.float64)
    w = np.divide(1.0, counts, out=np.zeros(n_classes), where=counts > 0)
    present = counts > 0
    return (w / w[present].mean()).astype(np.float32) if present.any() else w.astype(np.float32)


__all__ = ["LOSSES", "binary_cross_entropy", "class_weights", "cross_entropy", "loss_fn"]
