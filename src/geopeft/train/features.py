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
from geopeft.data.temporal import PAD
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
    (encoder weights, normalisation buffers) but its head's or decoder's, by name and value."""
    import hashlib

    from geopeft.strategies.base import is_new

    if is_segmenter(model):  # its decoder (new modules) reads the features
        new = list(model.new_modules())
        skip = {id(t) for n, t in model.state_dict(keep_vars=True).items() if is_new(n, new)}
    else:
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
    if is_segmenter(model):
        return _compute_series(model, store, out, views, provenance, batch_size, device)
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


def is_segmenter(model: nn.Module) -> bool:
    """A segmentation model whose decoder reads its encoder's levels (UPerNet + L-TAE)."""
    return hasattr(model, "encode_series")


def flat_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """The encoder's levels (each (B, T, C, h, w)) as one tensor (B, T, F): each level
    flattened, in order (:func:`unflat_levels` undoes it)."""
    return torch.cat([lv.flatten(2) for lv in levels], dim=2)


def unflat_levels(f: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """(B, T, F) -> the levels, each (B, T, C, h, w), of ``shapes`` (C, h, w)."""
    sizes = [int(np.prod(sh)) for sh in shapes]
    return [part.reshape(*f.shape[:2], *sh)
            for part, sh in zip(f.split(sizes, dim=2), shapes, strict=True)]


def series_features(model: nn.Module, raw: torch.Tensor, batch_size: int,
                    device: torch.device) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """The levels (B, T, F) of raw series (B, T, C, H, W), batch by batch (dates holding only
    zeros are padding: their features are 0), and the levels' shapes (C, h, w)."""
    parts, shapes = [], []
    for j in range(0, len(raw), batch_size):
        levels, _ = model.encode_series(raw[j : j + batch_size].to(device))
        shapes = [tuple(int(d) for d in lv.shape[2:]) for lv in levels]
        parts.append(flat_levels(levels).float().cpu())
    return torch.cat(parts), shapes


#: Samples of a series store encoded at a time (their raw dates and features in memory).
SERIES_BLOCK = 16


def _compute_series(model: nn.Module, store: Path, out: Path, views: int,
                    provenance: dict[str, Any], batch_size: int,
                    device: torch.device) -> dict[str, Any]:
    """:func:`compute_features` of a segmenter on a time-series store: ``features (sample, 1,
    time, F)``, every date of the store's series (all of a study's sequence lengths read them),
    each sample in one chunk. One view: a time-series row that augments trains on images
    (:meth:`geopeft.spec.JobSpec.features_reason`)."""
    import zarr

    from geopeft.data.stream import StoreImages

    if views != 1:
        raise FeaturesError(f"{out}: {views} views; a time series's features hold one (the "
                            f"series as they are)")

    ds = open_store(store)
    n = int(ds.sizes["sample"])
    images = StoreImages(Path(store), np.arange(n), cache_chunks=1)
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arr: Any = None
        shapes: list[tuple[int, ...]] = []
        for i in range(0, n, SERIES_BLOCK):
            raw = torch.from_numpy(np.ascontiguousarray(images[slice(i, i + SERIES_BLOCK)]))
            raw = raw.float()
            feats, shapes = series_features(model, raw, batch_size, device)
            if arr is None:
                _check_decoder(model, raw[:batch_size], feats[:batch_size], shapes,
                               ds, i, store, device)
                arr = group.create_array("features", shape=(n, 1, *feats.shape[1:]),
                                         chunks=(1, 1, *feats.shape[1:]), dtype="float32")
            arr[i : i + len(feats), 0] = feats.numpy()
        attrs = {**provenance, "views": views, "samples": n,
                 "dim": int(arr.shape[-1]) if arr is not None else 0,
                 "levels": [list(sh) for sh in shapes], "precision": "float32",
                 "seconds": round(time.perf_counter() - start, 3), "device": str(device)}
        group.attrs.update(attrs)
    log.info("%s: features of %d series x %d dates (dim %d) in %.1f s", out, n,
             int(arr.shape[2]) if arr is not None else 0, attrs["dim"], attrs["seconds"])
    return attrs


def _check_decoder(model: nn.Module, raw: torch.Tensor, f: torch.Tensor,
                   shapes: list[tuple[int, ...]], ds: Any, start: int, store: Path,
                   device: torch.device) -> None:
    """The decoder on the features gives the model's own logits on the raw series (with every
    date of the store: the same encoder, the same decoder)."""
    from geopeft.data.temporal import days_since

    days = torch.from_numpy(days_since(ds["dates"].values[start : start + len(raw)])).to(device)
    want = model(raw.to(device), days).float().cpu()
    on = DecoderOnFeatures(model, shapes, tuple(raw.shape[-2:])).eval()
    got = on(f.to(device), days).float().cpu()
    scale = float(want.abs().max()) or 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > LOGIT_TOLERANCE * scale:
        raise FeaturesError(f"{store}: the decoder of {type(model).__name__} on its encoder's "
                            f"levels does not give its own output; its rows train on images")


class DecoderOnFeatures(nn.Module):
    """A segmenter's decoder on features: holds the segmenter's encoder (frozen) and new
    modules (adaptor, L-TAE, neck, UPerNet) under their names, so its trainable parameters have
    the names, order and initial values of the image path's; forward takes the levels (B, T, F)
    of :func:`series_features` and the days (B, T) and gives the logits at the images' size
    ``size``. A date whose features are all 0 is padding (masked, as on images)."""

    def __init__(self, segmenter: nn.Module, shapes: list[tuple[int, ...]],
                 size: tuple[int, int]):
        super().__init__()
        self.encoder = segmenter.encoder
        self._new = list(segmenter.new_modules())
        for name in self._new:
            setattr(self, name, getattr(segmenter, name))
        self._decode = segmenter.decode  # a bound method: the same modules
        self.shapes = [tuple(sh) for sh in shapes]
        self.size = (int(size[0]), int(size[1]))
        Strategy.record(self, Strategy.added_parameters(segmenter))

    def new_modules(self) -> list[str]:
        """The segmenter's new modules, by the same names."""
        return list(self._new)

    def forward(self, f: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        pad = (f == 0).all(dim=-1)
        return self._decode(unflat_levels(f, self.shapes), days,
                            pad if bool(pad.any()) else None, self.size)


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


class FeaturesTooLarge(FeaturesError):
    """A row's features would take more memory than its job may hold: it trains on images."""


def load_feature_splits(path: Path, store: Path, subset: Path | None, augment: bool,
                        temporal: Any = None, budget_mb: float | None = None,
                        ) -> tuple[Split, Split]:
    """The train (or its label-fraction subset) and val splits as features: train with every
    view when the row augments (:attr:`Split.views`), val as the samples are (view 0); a time
    series's cut to the row's dates (``temporal``: :func:`geopeft.data.dataset.
    series_selection`; a padded date's features are 0), with their days.

    Args:
        path: the features store.
        store: the prepared store.
        subset: the label-fraction subset file (None: every training label).
        augment: the row augments (its train split keeps the 8 views).
        temporal: a time-series row's :class:`~geopeft.spec.Temporal`.
        budget_mb: the memory the splits may take (checked before any is read).

    Raises:
        FeaturesError: a row that augments and features of one view.
        FeaturesTooLarge: the splits' features exceed ``budget_mb`` (named with both sizes).
    """
    import zarr

    from geopeft.data.dataset import series_selection

    feats = zarr.open_group(str(path), mode="r", zarr_format=3)["features"]
    views = int(feats.shape[1])
    if augment and views != 8:
        raise FeaturesError(f"{path}: {views} view(s); a row that augments trains on the 8 "
                            f"dihedral views")
    ds = open_store(store)
    series = feats.ndim == 4
    idxs = {split: split_indices(ds, store, split, sub)
            for split, sub in (("train", subset), ("val", None))}
    per_view = int(np.prod(feats.shape[3 if series else 2:])) * 4
    length = temporal.length if series and temporal is not None else 1
    need_mb = ((len(idxs["train"]) * (views if augment else 1) + len(idxs["val"]))
               * length * per_view / 2**20)
    if budget_mb is not None and need_mb > budget_mb:
        raise FeaturesTooLarge(f"{path}: the train and val features take {need_mb:,.0f} MB, "
                               f"more than the job's {budget_mb:,.0f} MB")
    out = []
    for split, idx in idxs.items():
        keep = slice(None) if split == "train" and augment else slice(0, 1)
        labels = split_labels(ds, idx)
        if not series:
            order = np.argsort(idx, kind="stable")  # zarr reads sorted indices in one pass
            x = np.empty((len(idx), *feats.shape[1:]), np.float32)
            x[order] = feats.get_orthogonal_selection((idx[order], slice(None), slice(None)))
            out.append(Split(x, labels, views=True) if keep == slice(None)
                       else Split(np.ascontiguousarray(x[:, 0]), labels))
            continue
        sel, days = series_selection(ds, store, idx, temporal)
        x = np.zeros((len(idx), len(sel[0]), feats.shape[-1]), np.float32)
        for j, (i, s) in enumerate(zip(idx, sel, strict=True)):
            real = s != PAD
            x[j, real] = feats[int(i), 0][s[real]]
        void = ds.attrs.get("void_class")
        out.append(Split(x, labels, days, None if void is None else int(void)))
    return out[0], out[1]


__all__ = ["BLOCK", "PROVENANCE", "DecoderOnFeatures", "FeaturesError", "FeaturesTooLarge",
           "HeadOnFeatures", "check_provenance", "compute_features", "encoder_digest",
           "fit_probe", "flat_levels", "is_segmenter", "load_feature_splits",
           "logistic_regression", "pooled", "read_provenance", "series_features",
           "unflat_levels"]
