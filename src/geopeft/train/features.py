"""Frozen encoders run once: the features a linear probe's head reads, computed by one job for
every sample of a store and read by every frozen row that needs them.

A linear probe trains nothing of its encoder, yet on images it runs the encoder on every sample
of every epoch, for every seed and label fraction. Its head reads the encoder's pooled output
(timm's ``forward_head(..., pre_logits=True)``: the class token or the pooled tokens after the
final norm), so that output, computed once, is all it needs:

* :func:`compute_features` runs the row's model (normalisation, resize and encoder, eval mode,
  no gradients) on every sample of the store, block by block, and writes ``features (sample,
  view, dim)`` float32 to a zarr store with its provenance (:data:`PROVENANCE`: the store's
  fingerprint, the encoder's weights and their digest, the features key). With 8 views each
  train sample's 8 dihedral transforms are encoded (view 0: the sample as it is; val and test
  samples have view 0 only, the others NaN, as only training augments), so that a row that
  augments picks, each step, the view its augmentation draws: the same random stream as on
  images, the same training (:func:`geopeft.train.feed.pick_views`). Its first block checks
  that the head on these features gives the model's own logits, so an encoder whose head reads
  something else is refused, never trained on wrong features.
* :func:`load_feature_splits` gives the train (or label-fraction subset) and val splits of those
  features, after checking their provenance against the run's store and encoder: features of
  another store, encoder or weights are refused by name.
* :class:`HeadOnFeatures` is the model that trains on them: the classifier's own encoder module
  (frozen) and head, whose forward is the head alone, so that its trainable parameters have the
  names, order and initial values of the image path's (a checkpoint of either resumes as itself)
  and the trained head is the saved classifier's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geopeft.data.dataset import Split, open_store, split_indices, split_labels
from geopeft.data.sources import DataError
from geopeft.io import atomic_dir
from geopeft.strategies import Strategy
from geopeft.train.feed import dihedral

log = logging.getLogger(__name__)

#: The attributes a features store carries, checked against the run that reads it.
PROVENANCE = ("key", "store_fingerprint", "weights")
#: Samples encoded at a time (and the store's chunk along samples).
BLOCK = 256
#: Largest difference allowed between the model's logits and its head's on the features, as a
#: share of the logits' scale (the same float32 arithmetic, in another order).
LOGIT_TOLERANCE = 1e-4


class FeaturesError(DataError):
    """A features store does not belong to the run that reads it, or cannot be made."""


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the classifier's head reads of raw images ``x``: normalised, resized, encoded,
    pooled (timm's ``forward_head(..., pre_logits=True)``)."""
    bb = model.backbone
    return bb.forward_head(bb.forward_features(model.normalize(x)), pre_logits=True)


class HeadOnFeatures(nn.Module):
    """The classifier's head on features: holds the classifier's encoder module (``backbone``,
    frozen but for its head) so that parameter names are the classifier's; forward is the
    head alone."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.backbone = classifier.backbone
        self._new = list(classifier.new_modules())
        # the parameters that learn at the head's rate: the classifier's, by the same names
        Strategy.record(self, Strategy.added_parameters(classifier))

    def new_modules(self) -> list[str]:
        """The classifier's new modules (its head), by the same names."""
        return list(self._new)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_classifier()(f)


def encoder_digest(model: nn.Module) -> str:
    """The sha256 of everything of ``model`` that makes its features: every tensor of its state
    (encoder weights, normalisation buffers) but its head's, by name and value."""
    import hashlib

    head = model.backbone.get_classifier()
    skip = {id(t) for t in head.state_dict(keep_vars=True).values()}
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=True).items()):
        if id(t) in skip:
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def compute_features(model: nn.Module, store: Path, out: Path, views: int,
                     provenance: dict[str, Any], batch_size: int = 64,
                     device: torch.device | None = None) -> dict[str, Any]:
    """Encode every sample of ``store`` (its ``views`` dihedral views) with ``model``'s frozen
    encoder; write ``out`` (a zarr store, complete or absent).

    Args:
        model: the row's classifier (weights loaded; its head untouched).
        store: the prepared store.
        out: the features store to write.
        views: 1 (the samples as they are) or 8 (their dihedral transforms, view 0 first).
        provenance: the store's fingerprint, the encoder's weights and the features key
            (:data:`PROVENANCE`), written as attributes.
        batch_size: images per forward pass.
        device: where to run (default: CUDA when there is one).

    Returns:
        The attributes written (with ``samples``, ``dim``, ``seconds``).

    Raises:
        FeaturesError: the head on the features does not give the model's logits (an encoder
            whose head reads something else than its pooled output).
    """
    import zarr

    from geopeft.data.stream import StoreImages

    if views not in (1, 8):
        raise FeaturesError(f"{out}: views {views}; 1 or 8 (the dihedral views)")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    ds = open_store(store)
    n = int(ds.sizes["sample"])
    # only training augments: val and test samples get view 0 (the others are NaN, never read)
    train = ds["split"].values == "train"
    images = StoreImages(Path(store), np.arange(n), cache_chunks=1)
    head = model.backbone.get_classifier()
    start = time.perf_counter()
    attrs: dict[str, Any] = {}
    with atomic_dir(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arr = None
        for i in range(0, n, BLOCK):
            raw = torch.from_numpy(np.ascontiguousarray(images[slice(i, i + BLOCK)])).float()
            block = [encode(model, raw, 0, batch_size, device)]  # every sample as it is
            augmented = np.flatnonzero(train[i : i + len(raw)])
            for k in range(1, views):
                view = torch.full_like(block[0], float("nan"))
                if len(augmented):
                    view[augmented] = encode(model, raw[augmented], k, batch_size, device)
                block.append(view)
            feats = torch.stack(block, dim=1)  # (B, views, D)
            if arr is None:
                _check_head(model, head, raw[:batch_size].to(device), feats[:batch_size, 0],
                            store)
                arr = group.create_array("features", shape=(n, views, feats.shape[-1]),
                                         chunks=(BLOCK, views, feats.shape[-1]), dtype="float32")
            arr[i : i + len(feats)] = feats.numpy()
        attrs = {**provenance, "views": views, "samples": n,
                 "dim": int(arr.shape[-1]) if arr is not None else 0,
                 "precision": "float32", "seconds": round(time.perf_counter() - start, 3),
                 "device": str(device)}
        group.attrs.update(attrs)
    log.info("%s: features of %d samples x %d views (dim %d) in %.1f s", out, n, views,
             attrs["dim"], attrs["seconds"])
    return attrs


def encode(model: nn.Module, raw: torch.Tensor, k: int, batch_size: int,
           device: torch.device) -> torch.Tensor:
    """The pooled features (N, D) of the dihedral view ``k`` of raw images, batch by batch."""
    return torch.cat([pooled(model, dihedral(raw[j : j + batch_size], k).to(device)).float().cpu()
                      for j in range(0, len(raw), batch_size)])


def _check_head(model: nn.Module, head: nn.Module, x: torch.Tensor, f: torch.Tensor,
                store: Path) -> None:
    """The head on the features gives the model's logits (else the features are not what the
    head reads)."""
    if not list(head.parameters()):  # a kNN probe's head, not fit yet: nothing to compare
        return
    want = model(x).float().cpu()
    got = head(f.to(next(head.parameters()).device)).float().cpu()
    scale = float(want.abs().max()) or 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > LOGIT_TOLERANCE * scale:
        raise FeaturesError(f"{store}: the head of {type(model.backbone).__name__} does not read "
                            f"its pooled output (forward_head(pre_logits=True)); its rows train "
                            f"on images")


def fit_probe(model: HeadOnFeatures, method: str, spec: Any, train: Split, val: Split,
              args: Any) -> dict[str, Any]:
    """Fit a probe's head (:mod:`geopeft.strategies.probes`) on the train features in one pass;
    what :func:`geopeft.train.loop.fit` returns (one "epoch": the fit, then validation).

    Args:
        model: the head on features (its classifier's head: a kNN head, or the linear head).
        method: ``knn`` or ``logistic``.
        spec: the row's :class:`~geopeft.strategies.probes.ProbeSpec`.
        train: the train features (N, D), the samples as they are.
        val: the val features.
        args: the row's training settings (evaluation batch size).
    """
    from geopeft.models.runtime import seed_everything
    from geopeft.process import seconds_since_start
    from geopeft.train.losses import loss_fn
    from geopeft.train.validation import validate

    seed_everything(args.seed, args.threads)
    startup_s = seconds_since_start()
    start = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(train.x)).float()
    y = torch.from_numpy(train.y)
    head = model.backbone.get_classifier()
    multilabel = y.ndim == 2
    if method == "knn":
        targets = y.float() if multilabel else nn.functional.one_hot(y, head.out_features).float()
        head.fit(x, targets, spec.k, spec.temperature, multilabel)
    else:
        logistic_regression(head, x, y, spec.l2, spec.max_iter)
    train_time = time.perf_counter() - start
    with torch.no_grad():
        train_loss = float(loss_fn(head(x), y))
    m = {"train_loss": train_loss, "lr": 0.0,
         **validate(model, val, args.eval_batch_size, torch.device("cpu"), args.amp)}
    return {"history": [m], "wall_time_s": time.perf_counter() - start, "attempts": 1,
            "startup_s": startup_s, "train_time_s": train_time,
            "images_per_s": len(x) / max(train_time, 1e-9),
            "peak_memory_mb": x.numel() * 4 / 2**20, "memory_kind": "train features",
            "tensors_mb": {}, "device": "cpu", "steps": 1, "world_size": 1}


def logistic_regression(head: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float,
                        max_iter: int) -> None:
    """Fit the linear ``head`` (weight, bias) to features ``x`` and targets ``y`` (class
    indices: multinomial; multi-hot: one binary regression per class, the loss averaged over
    samples and classes) by full-batch L-BFGS in float64 from zero weights: mean loss + ``l2`` /
    2 x |weight|^2 (multinomial: scikit-learn's objective with C = 1 / (l2 x N), divided by N)."""
    from torch.nn import functional as F

    # fit in float64 (a weakly penalised optimum is flat: float32 stops short of it)
    w = torch.zeros_like(head.weight, dtype=torch.float64, requires_grad=True)
    b = torch.zeros_like(head.bias, dtype=torch.float64, requires_grad=True)
    x64 = x.double()
    target = y.double() if y.ndim == 2 else y
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    data_loss = F.binary_cross_entropy_with_logits if y.ndim == 2 else F.cross_entropy

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = data_loss(x64 @ w.T + b, target) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)


def read_provenance(path: Path) -> dict[str, Any]:
    """The attributes of a features store.

    Raises:
        FeaturesError: naming ``path``: missing, or not a features store.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise FeaturesError(f"{path}: not a features store ({err})") from None
    if "features" not in group or any(k not in attrs for k in PROVENANCE):
        raise FeaturesError(f"{path}: not a features store (no features array or provenance)")
    return attrs


def check_provenance(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The features store's attributes, when they match ``expected`` (:data:`PROVENANCE`).

    Raises:
        FeaturesError: naming the store, the attribute and both values: features of another
            store, encoder or weights are never reused.
    """
    attrs = read_provenance(path)
    for key in PROVENANCE:
        if attrs.get(key) != expected.get(key):
            raise FeaturesError(f"{path}: features of {key} {attrs.get(key)!r}, the run's is "
                                f"{expected.get(key)!r}; remake them (geopeft features)")
    return attrs


def load_feature_splits(path: Path, store: Path, subset: Path | None,
                        augment: bool) -> tuple[Split, Split]:
    """The train (or its label-fraction subset) and val splits as features: train with every
    view when the row augments (:attr:`Split.views`), val as the samples are (view 0).

    Raises:
        FeaturesError: a row that augments and features of one view.
    """
    import zarr

    feats = zarr.open_group(str(path), mode="r", zarr_format=3)["features"]
    views = int(feats.shape[1])
    if augment and views != 8:
        raise FeaturesError(f"{path}: {views} view(s); a row that augments trains on the 8 "
                            f"dihedral views")
    ds = open_store(store)
    out = []
    for split, sub in (("train", subset), ("val", None)):
        idx = split_indices(ds, store, split, sub)
        order = np.argsort(idx, kind="stable")  # zarr reads sorted indices in one pass
        x = np.empty((len(idx), *feats.shape[1:]), np.float32)
        x[order] = feats.get_orthogonal_selection((idx[order], slice(None), slice(None)))
        if split == "train" and augment:
            out.append(Split(x, split_labels(ds, idx), views=True))
        else:
            out.append(Split(np.ascontiguousarray(x[:, 0]), split_labels(ds, idx)))
    return out[0], out[1]


__all__ = ["BLOCK", "PROVENANCE", "FeaturesError", "HeadOnFeatures", "check_provenance",
           "compute_features", "encoder_digest", "fit_probe", "load_feature_splits",
           "logistic_regression", "pooled", "read_provenance"]
