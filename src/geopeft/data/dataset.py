"""In-memory access to a prepared store for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geopeft.data.prepare import open_store
from geopeft.data.sources import DataError
from geopeft.io import read_json


@dataclass
class Split:
    """Raw images (N, C, H, W) as float32 and labels (N,) of one split or subset."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class StoreInfo:
    path: Path
    dataset: str
    classes: list[str]
    bands: list[str]
    value_scale: float
    norm_mean: list[float]
    norm_std: list[float]
    fingerprint: str
    image_size: tuple[int, int] | None = None


def store_info(path: Path) -> StoreInfo:
    ds = open_store(path)
    a = ds.attrs
    return StoreInfo(Path(path), a["dataset"], list(a["classes"]), [str(b) for b in ds.band.values],
                     float(a["value_scale"]), list(a["norm_mean"]), list(a["norm_std"]),
                     a["fingerprint"], (int(ds.sizes["y"]), int(ds.sizes["x"])))


def load_split(path: Path, split: str, subset_file: Path | None = None) -> Split:
    """Load one split into memory; with ``subset_file``, only the samples it lists.

    Raises:
        DataError: the split is empty, or the subset lists samples outside the split.
    """
    ds = open_store(path)
    split_arr = ds["split"].values
    idx = np.flatnonzero(split_arr == split)
    if subset_file is not None:
        sub = np.asarray(read_json(subset_file)["samples"], dtype=np.int64)
        outside = np.setdiff1d(sub, idx)
        if len(outside):
            raise DataError(f"{subset_file}: samples {outside[:5].tolist()} are not in the "
                            f"{split} split of {path}")
        idx = sub
    if len(idx) == 0:
        raise DataError(f"{path}: the {split} split is empty")
    x = ds["image"].values[idx].astype(np.float32)
    label = ds["label"].values[idx]
    # multi-hot labels (multi-label tasks) train with BCE on float targets
    y = label.astype(np.float32) if label.ndim == 2 else label.astype(np.int64)
    return Split(x, y)
