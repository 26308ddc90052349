"""Label-fraction subsets of the train split: stratified, nested and seeded.

For a seed, each class's train samples are put in one random order; a fraction keeps the first
``max(1, round(fraction * n_class))`` of every class. The same seed therefore gives nested subsets
(1 % in 10 % in 50 % in 100 %), every class keeps its share, and different seeds give different
subsets. ``random`` keeps a prefix of one permutation of the whole train split instead.
Multi-label samples are stratified by their rarest positive class; segmentation patches by the
classes present in their label map (:func:`class_presence`: the rarest class the patch shows,
void ignored). Subsets are cached on disk by (method, fraction, seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.strata import strata
from geopeft.io import write_json
from geopeft.layout import subset_name

METHODS = ("stratified", "random")


def label_fraction_subset(labels: np.ndarray, fraction: float, seed: int,
                          method: str = "stratified") -> np.ndarray:
    """Positions (into ``labels``) of the subset, sorted.

    Args:
        labels: class index of every train sample.
        fraction: share to keep, in (0, 1].
        seed: the run seed; the order drawn from it makes fractions nested.
        method: ``stratified`` (per class) or ``random``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction!r} is not in (0, 1]")
    if method not in METHODS:
        raise ValueError(f"subset method {method!r} is not one of {METHODS}")
    labels = strata(labels)
    rng = np.random.default_rng([seed, 0x5B5E7])
    if method == "random":
        order = rng.permutation(len(labels))
        return np.sort(order[: max(1, int(round(fraction * len(labels))))])
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        keep.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(keep))


def class_presence(maps: np.ndarray, n_classes: int, ignore: int | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch class distribution of label maps (N, H, W): (presence (N, n_classes) as 0/1,
    pixel counts (N, n_classes)); the ``ignore`` label (void) is not counted.

    Raises:
        ValueError: a label is outside 0..n_classes-1 and is not ``ignore``.
    """
    flat = np.asarray(maps).reshape(len(maps), -1).astype(np.int64)
    bad = (flat < 0) | ((flat >= n_classes) & (flat != (ignore if ignore is not None else -1)))
    if bad.any():
        raise ValueError(f"label maps hold values outside 0..{n_classes - 1}: "
                         f"{np.unique(flat[bad])[:5].tolist()}")
    counts = np.stack([np.bincount(r[r != ignore] if ignore is not None else r,
                                   minlength=n_classes)[:n_classes] for r in flat])
    return (counts > 0).astype(np.int8), counts


def subset_file_name(method: str, fraction: float, seed: int) -> str:
    """Cache file name keyed by (method, fraction, seed)."""
    return subset_name(method, fraction, seed)


def write_subset(store: Path, fraction: float, seed: int, method: str, out: Path) -> dict[str, Any]:
    """Draw the label-fraction subset of a store's train split and write it as JSON.

    Args:
        store: the prepared zarr store.
        fraction: share of the training labels to keep, in (0, 1].
        seed: the run's seed.
        method: ``stratified`` or ``random`` (:data:`METHODS`).
        out: the subset file: the chosen samples (store positions), the samples (or, for label
            maps, pixels) per class, the train split's size and the store's fingerprint.

    Returns:
        What was written.
    """
    from geopeft.data.prepare import open_store

    ds = open_store(Path(store))
    train = np.flatnonzero(ds["split"].values == "train")
    labels = ds["label"].values[train]
    n_cls = len(ds.attrs["classes"])
    if labels.ndim == 3:  # segmentation: stratify on the classes each patch shows (not void)
        void = ds.attrs.get("void_class")
        labels, weights = class_presence(labels, n_cls - (void is not None), void)
    else:  # counted per sample: class occurrences
        weights = labels if labels.ndim == 2 else np.eye(n_cls, dtype=np.int64)[labels]
    pos = label_fraction_subset(labels, fraction, seed, method)
    counts = weights[pos].sum(axis=0)  # samples per class, or pixels per class for maps
    record = {"method": method, "fraction": fraction, "seed": seed,
              "samples": train[pos].tolist(), "class_counts": counts.tolist(),
              "train_size": int(len(train)), "store_fingerprint": ds.attrs["fingerprint"]}
    write_json(out, record)
    return record
