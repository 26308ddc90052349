"""The validation metrics of each epoch: loss and the primary score (``val_score``) that
the run's history keeps: accuracy, macro mAP (multi-label) or mIoU (segmentation), under that
one name only (MLflow shows each metric once), with the secondary ones (``val_map_micro``,
``val_oa``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from geopeft.data.dataset import Split
from geopeft.metrics.multilabel import multilabel_metrics, sigmoid
from geopeft.metrics.segmentation import segmentation_metrics
from geopeft.models.inference import predict, segmentation_scores
from geopeft.train.losses import loss_fn


def is_multilabel(split: Split) -> bool:
    """Multi-hot (N, C) targets: BCE loss and mAP instead of cross-entropy and accuracy."""
    return split.y.ndim == 2 and split.y.dtype.kind == "f"


def is_segmentation(split: Split) -> bool:
    """Label maps (N, H, W): pixel-wise cross-entropy ignoring void, mIoU."""
    return split.y.ndim == 3


def val_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation loss and score of a classifier: accuracy, or macro mAP for multi-hot ``y``."""
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y)))
    if y.ndim == 2:
        m = multilabel_metrics(y, sigmoid(logits))
        return {"val_loss": loss, "val_score": m["map_macro"], "val_map_micro": m["map_micro"]}
    acc = float((logits.argmax(1) == y).mean())
    return {"val_loss": loss, "val_score": acc}


def segmentation_val_metrics(cm: np.ndarray, loss: float) -> dict[str, float]:
    """Validation loss, mIoU (the score) and overall accuracy of a pixel confusion matrix."""
    m = segmentation_metrics(cm)
    return {"val_loss": loss, "val_score": m["miou"], "val_oa": m["overall_accuracy"]}


def validate(model: nn.Module, val: Split, batch_size: int, device: torch.device,
             amp: bool) -> dict[str, float]:
    """The validation metrics of ``model`` on ``val`` (whole samples, eval mode).

    Args:
        model: the model being trained.
        val: the validation split.
        batch_size: samples per forward pass.
        device: where the model is.
        amp: bf16 autocast on CUDA.
    """
    if is_segmentation(val):
        def batch_loss(logits: np.ndarray, y: np.ndarray) -> float:
            return float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y), None,
                                 val.ignore_index))

        cm, loss = segmentation_scores(model, val, batch_size, device, amp, batch_loss)
        return segmentation_val_metrics(cm, loss)
    logits = predict(model, val.x, batch_size, device, amp, val.dates)
    return val_metrics(logits, val.y)


__all__ = ["is_multilabel", "is_segmentation", "segmentation_val_metrics", "val_metrics",
           "validate"]
