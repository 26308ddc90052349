"""Running a model over arrays in eval mode: logits batch by batch, and the streamed pixel
confusion of a segmentation split. Validation during training and the test-split evaluation
both call these, so a model is scored the same way in both."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from geopeft.data.dataset import Split
from geopeft.metrics.segmentation import pixel_confusion
from geopeft.models.runtime import autocast


def forward(model: nn.Module, xb: torch.Tensor, db: torch.Tensor | None) -> torch.Tensor:
    """``model(xb)``, or ``model(xb, db)`` for time series with their acquisition days ``db``."""
    return model(xb) if db is None else model(xb, db)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256,
            device: torch.device | None = None, amp: bool = True,
            dates: np.ndarray | None = None) -> np.ndarray:
    """Logits of raw inputs in eval mode.

    Args:
        model: the model (its normalisation is inside it).
        x: inputs (N, C, H, W), or time series (N, T, C, H, W) with ``dates``.
        batch_size: samples per forward pass.
        device: where to run (default: the model's).
        amp: bf16 autocast on CUDA.
        dates: acquisition days (N, T) of time series.
    """
    return np.concatenate([out for out, _ in predict_batches(model, x, batch_size, device, amp,
                                                             dates)])


@torch.no_grad()
def predict_batches(model: nn.Module, x: np.ndarray, batch_size: int = 256,
                    device: torch.device | None = None, amp: bool = True,
                    dates: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, slice]]:
    """Yield (logits, slice of ``x``) batch by batch, in eval mode (whole samples: no crops).

    Args:
        model: the model.
        x: inputs, as for :func:`predict`.
        batch_size: samples per forward pass.
        device: where to run (default: the model's).
        amp: bf16 autocast on CUDA.
        dates: acquisition days of time series.
    """
    device = device or next(model.parameters()).device
    model.eval()
    starts = range(0, len(x), batch_size)
    # images left in the store (geopeft.data.stream.StoreImages): read ahead by its readers
    batches = (x.batches([slice(i, i + batch_size) for i in starts]) if hasattr(x, "batches")
               else (x[i : i + batch_size] for i in starts))
    for i, raw in zip(starts, batches, strict=True):
        xb = torch.from_numpy(np.ascontiguousarray(raw)).to(device)
        if not xb.is_floating_point():  # a store's integers: float32 on the device
            xb = xb.float()
        db = None if dates is None else torch.from_numpy(dates[i : i + batch_size]).to(device)
        with autocast(device, amp):
            out = forward(model, xb, db)
        yield out.float().cpu().numpy(), slice(i, i + len(xb))


#: A per-batch loss: (logits, label maps) -> mean loss over the batch's non-void pixels.
BatchLoss = Callable[[np.ndarray, np.ndarray], float]


def segmentation_scores(model: nn.Module, split: Split, batch_size: int, device: torch.device,
                        amp: bool = True, loss: BatchLoss | None = None,
                        ) -> tuple[np.ndarray, float]:
    """Pixel confusion matrix (void excluded) of a segmentation split, streamed batch by batch
    (whole patches), and the mean ``loss`` over its non-void pixels (0 without ``loss``).

    Args:
        model: the segmentation model.
        split: the split (label maps ``y``, ``ignore_index`` the void label).
        batch_size: patches per forward pass.
        device: where to run.
        amp: bf16 autocast on CUDA.
        loss: the per-batch loss to average, weighted by non-void pixels.
    """
    cm: np.ndarray | None = None
    loss_sum, n = 0.0, 0
    for logits, sl in predict_batches(model, split.x, batch_size, device, amp, split.dates):
        y = split.y[sl]
        c = pixel_confusion(y, logits.argmax(1), logits.shape[1], split.ignore_index)
        cm = c if cm is None else cm + c
        valid = int((y != split.ignore_index).sum()) if split.ignore_index is not None else y.size
        if valid and loss is not None:
            loss_sum += loss(logits, y) * valid
            n += valid
    assert cm is not None
    return cm, loss_sum / max(n, 1)


__all__ = ["forward", "predict", "predict_batches", "segmentation_scores"]
