"""Preparation: raw files -> one zarr store per (dataset, band selection).

Store layout (xarray on zarr v3)::

    image  (sample, band, y, x)  raw values (uint16 DN or uint8), chunked by sample
    label  (sample,)             class index into attrs["classes"]
    split  (sample,)             "train" | "val" | "test"
    name   (sample,)             source file stem
    band   (band,)               Sentinel-2 band names, in model input order
    attrs: dataset, classes, value_scale, norm_mean/norm_std (per band, raw units, **train split
           only**), fingerprint (sha256 of names, labels, splits and pixels), counts

The store is written to a temporary sibling and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import band_indices
from geopeft.data.eurosat import FORMATS, DataError, scan
from geopeft.io import atomic_dir

log = logging.getLogger(__name__)
CHUNK = 256


def norm_stats(images: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over the **train split only** (float64 accumulation)."""
    train = images[split == "train"]
    if len(train) == 0:
        raise DataError("the train split is empty: norm statistics cannot be computed")
    x = train.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return mean, np.maximum(std, 1e-6)


def fingerprint(images: np.ndarray, labels: np.ndarray, split: np.ndarray,
                names: np.ndarray, bands: list[str]) -> str:
    h = hashlib.sha256()
    h.update(" ".join(bands).encode())
    for arr in (labels.astype(np.int64), split.astype(str), names.astype(str)):
        h.update("\n".join(map(str, arr.tolist())).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def prepare(dataset: str, raw_dir: Path, bands: list[str], out: Path, threads: int = 1) -> dict:
    """Convert a raw EuroSAT-layout dataset into the zarr store at ``out``.

    Returns the store's attributes.
    """
    import xarray as xr

    if dataset not in FORMATS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[dataset]
    idx = band_indices(bands, fmt.file_bands, where=dataset)
    items = scan(Path(raw_dir), fmt)
    if not items:
        raise DataError(f"{raw_dir}: the split files list no samples")

    def load(item: tuple[Path, int, str]) -> np.ndarray:
        arr = fmt.read(item[0])
        if arr.shape[1:] != first_shape:
            raise DataError(f"{item[0]}: size {arr.shape[1:]}, the dataset has {first_shape}")
        return arr[idx]

    first_shape = fmt.read(items[0][0]).shape[1:]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        images = np.stack(list(pool.map(load, items)))
    labels = np.array([i[1] for i in items], dtype=np.int16)
    split = np.array([i[2] for i in items])
    names = np.array([i[0].stem for i in items])
    mean, std = norm_stats(images, split)
    counts = {p: int((split == p).sum()) for p in ("train", "val", "test")}
    attrs: dict[str, Any] = {
        "dataset": dataset,
        "classes": list(fmt.classes),
        "value_scale": fmt.value_scale,
        "norm_mean": mean.tolist(),
        "norm_std": std.tolist(),
        "norm_split": "train",
        "fingerprint": fingerprint(images, labels, split, names, bands),
        "counts": counts,
        "raw_dir": str(raw_dir),
    }
    ds = xr.Dataset(
        {
            "image": (("sample", "band", "y", "x"), images),
            "label": (("sample",), labels),
            "split": (("sample",), split.astype(object)),
            "name": (("sample",), names.astype(object)),
        },
        coords={"band": np.array(bands, dtype=object), "sample": np.arange(len(items))},
        attrs=attrs,
    )
    enc = {"image": {"chunks": (CHUNK, len(bands), *images.shape[2:])}}
    with atomic_dir(out) as tmp:
        ds.to_zarr(tmp, mode="w", encoding=enc, zarr_format=3, consolidated=False)
    log.info("prepared %s: %d samples %s -> %s", dataset, len(items), counts, out)
    return attrs


def open_store(path: Path) -> Any:
    """Open a prepared store lazily (xarray Dataset); a clear error if it is missing."""
    import xarray as xr

    if not Path(path).is_dir():
        raise DataError(f"{path}: prepared store not found (run the prepare rule)")
    return xr.open_zarr(path, zarr_format=3, consolidated=False)
