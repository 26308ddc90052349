"""A prepared store's splits for training and evaluation: loaded whole, or read from the store
batch by batch (:mod:`geopeft.data.stream`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.prepare import open_store
from geopeft.data.sources import DataError
from geopeft.data.temporal import PAD, ShortSeriesError, days_since, temporal_indices
from geopeft.io import read_json
from geopeft.spec import Temporal


@dataclass
class Split:
    """Raw images and labels of one split or subset.

    Images: (N, C, H, W), or for time series (N, T, C, H, W) with ``dates`` (N, T) in days since
    the reference date, in the store's dtype (uint8, uint16, int16: a quarter or half of float32's
    memory), converted to float32 per batch, on the device (training, prediction); in memory, or
    left in the store and read chunk by chunk when indexed
    (:class:`~geopeft.data.stream.StoreImages`). Labels: (N,) class, (N, K) multi-hot, or
    (N, H, W) class maps.
    """

    x: Any
    y: np.ndarray
    dates: np.ndarray | None = None
    ignore_index: int | None = None
    """Label of pixels that count nowhere (PASTIS void, 19)."""
    views: bool = False
    """``x`` holds an encoder's features (N, 8, D) of each sample's 8 dihedral views (view 0:
    the sample as it is): training's augmentation picks a view instead of transforming an
    image (:mod:`geopeft.train.features`)."""

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
    void_class: int | None = None
    """The label that marks void pixels (segmentation), excluded from loss and metrics."""
    generic: dict[str, Any] | None = None
    """A dataset of your own: its declaration (``data.generic``, as prepared), which registers
    it wherever the store or a run's record is read (:meth:`register`)."""

    def register(self) -> None:
        """Make a dataset of your own known to this process (a built-in one is known)."""
        if self.generic is not None:
            from geopeft.data.sources import register_generic

            register_generic(self.dataset, self.generic)


def store_info(path: Path) -> StoreInfo:
    """The description of a prepared store (dataset, classes, bands, scale, statistics, size);
    a dataset of your own is registered from the declaration the store carries."""
    ds = open_store(path)
    a = ds.attrs
    info = StoreInfo(Path(path), a["dataset"], list(a["classes"]), [str(b) for b in ds.band.values],
                     float(a["value_scale"]), list(a["norm_mean"]), list(a["norm_std"]),
                     a["fingerprint"], (int(ds.sizes["y"]), int(ds.sizes["x"])),
                     None if a.get("void_class") is None else int(a["void_class"]),
                     a.get("generic"))
    info.register()
    return info


def load_split(path: Path, split: str, subset_file: Path | None = None,
               temporal: Temporal | None = None, stream: bool = False) -> Split:
    """Load one split into memory; with ``subset_file``, only the samples it lists.

    Args:
        path: the zarr store.
        split: ``train``, ``val`` or ``test``.
        subset_file: a label-fraction subset (:mod:`geopeft.data.subsets`).
        temporal: how a time-series store's series are cut (see
            :func:`geopeft.data.temporal.temporal_indices`): each to its ``length``-date subset
            while loading, block by block, so memory holds the selected dates only.
        stream: leave the images in the store (:class:`~geopeft.data.stream.StoreImages`, read
            chunk by chunk when indexed); labels and dates are loaded.

    Raises:
        DataError: the split is empty, the subset lists samples outside the split, or a series is
            too short for the sequence length under ``pad: error``.
    """
    ds = open_store(path)
    idx = split_indices(ds, path, split, subset_file)
    if "time" in ds["image"].dims:
        return _load_series(ds, path, idx, temporal, stream)
    if stream:
        from geopeft.data.stream import StoreImages

        x: Any = StoreImages(Path(path), idx)
    else:
        x = _read_samples(Path(path), idx)
    return Split(x, split_labels(ds, idx))


def split_indices(ds: Any, path: Path, split: str, subset_file: Path | None = None) -> np.ndarray:
    """The store's samples of ``split`` (or of its label-fraction subset ``subset_file``).

    Args:
        ds: the open store (:func:`open_store`).
        path: its path, named in errors.
        split: ``train``, ``val`` or ``test``.
        subset_file: a label-fraction subset (:mod:`geopeft.data.subsets`).

    Raises:
        DataError: the split is empty, or the subset lists samples outside it.
    """
    idx = np.flatnonzero(ds["split"].values == split)
    if subset_file is not None:
        sub = np.asarray(read_json(subset_file)["samples"], dtype=np.int64)
        outside = np.setdiff1d(sub, idx)
        if len(outside):
            raise DataError(f"{subset_file}: samples {outside[:5].tolist()} are not in the "
                            f"{split} split of {path}")
        idx = sub
    if len(idx) == 0:
        raise DataError(f"{path}: the {split} split is empty")
    return idx


def split_labels(ds: Any, idx: np.ndarray) -> np.ndarray:
    """The labels of the samples ``idx`` as training takes them: class indices (int64), or
    multi-hot labels (multi-label tasks) as float32 for BCE."""
    label = ds["label"].values[idx]
    return label.astype(np.float32) if label.ndim == 2 else label.astype(np.int64)


def load_splits(path: Path, requests: list[tuple[str, Path | None]],
                temporal: Temporal | None = None,
                budget: tuple[float, str] | None = None, workers: int = 0) -> list[Split]:
    """A job's splits, loaded whole when their images fit in a share of the job's memory, else
    left in the store and read batch by batch (one decision for the job, logged:
    :func:`geopeft.data.stream.stream_decision`).

    Args:
        path: the zarr store.
        requests: (split, label-fraction subset file or None) of each split the job uses.
        temporal: how a time-series store's series are cut.
        budget: (MB, source) of the job's memory (default:
            :func:`~geopeft.data.stream.memory_budget_mb`).
        workers: reader processes of streamed splits (``train.workers``).
    """
    from geopeft.data.stream import stream_decision

    lazy = [load_split(path, split, sub, temporal, stream=True) for split, sub in requests]
    if stream_decision(sum(sp.x.nbytes for sp in lazy), str(path), budget):
        for sp in lazy:  # the reader processes start now, before the job builds its model
            sp.x.workers = workers
            sp.x.start_readers()
        return lazy
    # whole: read each split's chunks once (labels and dates are already loaded)
    return [replace(sp, x=sp.x[slice(None)]) for sp in lazy]


def _read_samples(path: Path, idx: np.ndarray,
                  select: list[np.ndarray] | None = None) -> np.ndarray:
    """The samples ``idx`` of a store's image array (series cut to their dates ``select``), in
    the store's dtype, read whole chunks at a time (each once): memory holds the selected samples
    and one chunk, never the array of every split."""
    from geopeft.data.stream import StoreImages

    return StoreImages(Path(path), idx, select, cache_chunks=1)[slice(None)]


def series_selection(ds: Any, path: Path, idx: np.ndarray, temporal: Temporal | None,
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """The dates a time-series row keeps of the samples ``idx``: per sample, their positions
    in the store's series (``PAD``: an empty date; :func:`~geopeft.data.temporal.
    temporal_indices`), and their days since ``temporal.reference`` (N, length).

    Raises:
        DataError: no sequence length, or a series too short under ``pad: error``.
    """
    if temporal is None:
        raise DataError(f"{path}: a time-series store; the run needs a sequence length")
    length, ladder, pad = temporal.length, temporal.ladder, temporal.pad
    n_dates = ds["n_dates"].values[idx].astype(np.int64)
    names = ds["name"].values[idx]
    try:
        sel = [temporal_indices(int(n), length, ladder, pad, where=f"{path}: patch {name}")
               for n, name in zip(n_dates, names, strict=True)]
    except ShortSeriesError as err:
        raise DataError(str(err)) from None
    all_dates = ds["dates"].values
    dates = np.stack([np.where(s == PAD, 0, all_dates[i, s]) for i, s in zip(idx, sel, strict=True)])
    return sel, days_since(dates, temporal.reference)


def _load_series(ds: Any, path: Path, idx: np.ndarray, temporal: Temporal | None,
                 stream: bool = False) -> Split:
    sel, days = series_selection(ds, path, idx, temporal)
    if stream:
        from geopeft.data.stream import StoreImages

        x: Any = StoreImages(Path(path), idx, sel)
    else:
        x = _read_samples(Path(path), idx, sel)
    y = ds["label"].values[idx].astype(np.int64)
    void = ds.attrs.get("void_class")
    return Split(x, y, days, None if void is None else int(void))
