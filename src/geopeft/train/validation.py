"""The validation metrics of each epoch: loss and the primary score (``val_score``) that
the run's history keeps: accuracy, macro mAP (multi-label) or mIoU (segmentation), under that
one name only (MLflow shows each metric once), with the secondary ones (``val_map_micro``,
``val_oa``): each task's (``Task.val_scores``), the task of the split's targets
(:func:`geopeft.tasks.of_targets`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from geopeft.data.dataset import Split
from geopeft.models.inference import predict, segmentation_scores
from geopeft.tasks import Task, of_targets
from geopeft.train.losses import loss_fn


def is_multilabel(split: Split) -> bool:
    """Multi-hot (N, C) targets: BCE loss and mAP instead of cross-entropy and accuracy."""
    return of_targets(split.y).loss == "bce"


def is_segmentation(split: Split) -> bool:
    """Label maps (N, H, W): pixel-wise cross-entropy ignoring void, mIoU."""
    return of_targets(split.y).dense


def val_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation loss and score of a classifier: accuracy, or macro mAP for multi-hot ``y``."""
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y)))
    return {"val_loss": loss, **of_targets(y).val_scores(y, logits)}


def dense_val_metrics(task: Task, cm: np.ndarray, loss: float) -> dict[str, float]:
    """Validation loss and scores of a dense task (segmentation: mIoU, the score, and overall
    accuracy) from a pixel confusion matrix."""
    return {"val_loss": loss, **task.val_scores(None, cm)}


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
    task = of_targets(val.y)
    if task.dense:
        def batch_loss(logits: np.ndarray, y: np.ndarray) -> float:
            return float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y), None,
                                 val.ignore_index))

        cm, loss = segmentation_scores(model, val, batch_size, device, amp, batch_loss)
        return dense_val_metrics(task, cm, loss)
    logits = predict(model, val.x, batch_size, device, amp, val.dates)
    return val_metrics(logits, val.y)


__all__ = ["dense_val_metrics", "is_multilabel", "is_segmentation", "val_metrics", "validate"]
