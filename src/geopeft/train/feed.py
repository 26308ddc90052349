"""The training data on the device: the split as tensors (:class:`_Tensors`), the feeder that
puts batches on the device (:class:`_Feeder`: pinned memory and prefetch on CUDA, streamed
images read ahead) and the dihedral augmentation (:func:`augment`) of
:func:`geopeft.train.loop.fit`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geopeft.data.dataset import Split
from geopeft.spec import TrainArgs
from geopeft.train.validation import is_multilabel, is_segmentation


def augment(x: torch.Tensor, gen: torch.Generator, y: torch.Tensor | None = None) -> Any:
    """Apply one of the 8 dihedral transforms (flips x rotations) to each sample (the last two
    axes are y, x: images and time series alike); with label maps ``y`` (B, H, W), the same
    transform to each map, and ``(x, y)`` is returned.

    Args:
        x: a batch (..., H, W).
        gen: the generator of the transforms.
        y: label maps (B, H, W) transformed alike, or None.
    """
    t = draw_views(x.shape[0], gen)
    out = x.clone()
    out_y = y.clone() if y is not None and y.ndim == 3 else None
    for k in range(8):
        idx = (t == k).nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            continue
        for src, dst in ((x, out), (y, out_y)):
            if dst is None or src is None:
                continue
            dst[idx] = dihedral(src[idx], k)
    if y is None:
        return out
    return out, (out_y if out_y is not None else y)


def draw_views(n: int, gen: torch.Generator) -> torch.Tensor:
    """The dihedral transform (0-7) of each of ``n`` samples, as :func:`augment` draws them."""
    return torch.randint(0, 8, (n,), generator=gen)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The dihedral transform ``k`` (0-7) of ``x`` (..., H, W): ``k % 4`` quarter turns, then a
    left-right flip for ``k`` >= 4 (0: the identity)."""
    r = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(r, dims=(-1,)) if k >= 4 else r


@dataclass
class _Tensors:
    """The training split as tensors, and how its targets are scored."""

    x: Any
    """The images: a tensor, or a :class:`~geopeft.data.stream.StoreImages` read by batch."""
    y: torch.Tensor
    dates: torch.Tensor | None
    labels: Any
    """The targets as numpy (for class weights)."""
    segmentation: bool
    ignore: int | None
    weighted: bool
    views: bool = False
    """``x`` holds features of 8 dihedral views per sample (:attr:`Split.views`)."""

    @classmethod
    def of(cls, train: Split, args: TrainArgs) -> _Tensors:
        x = torch.from_numpy(train.x) if isinstance(train.x, np.ndarray) else train.x
        return cls(x, torch.from_numpy(train.y),
                   torch.from_numpy(train.dates) if train.dates is not None else None, train.y,
                   is_segmentation(train), train.ignore_index,
                   args.loss == "weighted_ce" and not is_multilabel(train), train.views)


class _Feeder:
    """Puts training batches on the device. On CPU a batch is indexed from the tensors in
    memory. On CUDA it is gathered into pinned (page-locked) memory and copied asynchronously,
    and :meth:`prefetch` issues the next batch's gather and copy while the current step's
    kernels run, so the GPU does not wait for the host. Only the deterministic gather and copy
    run ahead: augmentation draws its random transforms at its step, on the device, so a state
    saved between steps resumes the same random stream."""

    def __init__(self, data: _Tensors, device: torch.device, channels_last: bool,
                 ahead: bool | None = None):
        self.data, self.device = data, device
        self.cuda = device.type == "cuda"
        self.channels_last = channels_last
        # a batch of features of several views is gathered once its views are drawn
        self.ahead = (self.cuda if ahead is None else ahead) and not data.views
        """Prefetch the next batch (default: on CUDA)."""
        self.pending: tuple[torch.Tensor, tuple[Any, ...]] | None = None
        self.stream: Any = None
        """The epoch's streamed image batches (:meth:`plan`)."""
        self.planned: Any = None
        self.hits = 0
        """Batches served from a prefetch."""

    def plan(self, batches: list[torch.Tensor]) -> None:
        """The batches the epoch (from where it stands) will ask for, in order: images left in
        the store are read ahead by the reader processes
        (:meth:`~geopeft.data.stream.StoreImages.batches`)."""
        x = self.data.x
        if not isinstance(x, torch.Tensor):
            self.close()
            self.stream = x.batches([b.numpy() for b in batches])
            self.planned = iter(batches)

    def close(self) -> None:
        """End the epoch's pass of streamed batches (the reader processes stay for the next)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _gather(self, t: Any, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):  # images left in the store: the planned batch
            if self.stream is None or not torch.equal(next(self.planned), idx):
                raise RuntimeError("a streamed batch out of the epoch's plan")
            batch = torch.from_numpy(next(self.stream))
            return batch.pin_memory().to(self.device, non_blocking=True) if self.cuda else batch
        if not self.cuda:
            return t[idx]
        host = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        torch.index_select(t, 0, idx, out=host)
        return host.to(self.device, non_blocking=True)

    def _load(self, idx: torch.Tensor, views: torch.Tensor | None = None) -> tuple[Any, ...]:
        d = self.data
        if d.views:  # the drawn view of each sample (view 0: the samples as they are)
            t = views if views is not None else torch.zeros(len(idx), dtype=torch.long)
            x = d.x[idx, t]
            x = x.pin_memory().to(self.device, non_blocking=True) if self.cuda else x
        else:
            x = self._gather(d.x, idx)
        return (x, self._gather(d.y, idx),
                self._gather(d.dates, idx) if d.dates is not None else None)

    def prefetch(self, idx: torch.Tensor | None) -> None:
        """Start the next batch's transfer (None: no next batch in this epoch)."""
        if self.ahead and idx is not None:
            self.pending = (idx, self._load(idx))

    def batch(self, idx: torch.Tensor, views: torch.Tensor | None = None) -> tuple[Any, ...]:
        """The batch ``idx`` on the device: (images, targets, dates or None); of features of
        several views, each sample's view ``views`` (None: view 0)."""
        pending, self.pending = self.pending, None
        if pending is not None and torch.equal(pending[0], idx):
            xb, yb, db = pending[1]
            self.hits += 1
        else:
            xb, yb, db = self._load(idx, views)
        if not xb.is_floating_point():  # the store's integers travel; float32 on the device
            xb = xb.float()
        if self.channels_last and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb, db
