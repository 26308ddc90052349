"""Preparation: a raw dataset (embedded or real, in its published layout) -> one zarr store.

Every source (``geopeft.data.sources.<name>``) lists its samples and reads one sample with the
requested bands; :func:`prepare` does the rest the same way for all of them: reads in parallel
threads (rasterio and numpy release the GIL), writes sample-chunked blocks through
:class:`~geopeft.data.store.StoreWriter`, computes the band statistics on the **train split
only**, fingerprints the content, and renames the store into place only when complete.

Store layout: ``image (sample, band, y, x)`` or ``(sample, time, band, y, x)``, ``label``,
``split`` ("train" | "val" | "test"), ``name``, ``band``; attributes ``dataset``, ``classes``,
``task``, ``value_scale``, ``norm_mean``/``norm_std`` (raw units), ``fingerprint``, ``counts``,
``skipped``. Samples skipped on request (``skip_corrupt``) are counted in ``skipped`` and listed
with the reason in ``skipped_samples``; without it, the first bad sample is an error.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.sources import DataError, get_source
from geopeft.data.store import StoreWriter
from geopeft.io import atomic_dir
from geopeft.limits import DEFAULT, Limits

log = logging.getLogger(__name__)
CHUNK = 256


def _first_readable(src: Any, items: list[Any], bands: list[str], options: dict[str, Any],
                    skip: bool, limits: Limits) -> Any:
    """The first sample (its shape defines the store); with ``skip``, the first readable one."""
    for item in items:
        try:
            return src.read(item, bands, options, limits=limits)
        except DataError:
            if not skip:
                raise
    raise DataError(f"no readable sample among {len(items)} ({src.name})")


def prepare(dataset: str, raw_dir: Path, bands: list[str], out: Path, threads: int = 1,
            options: dict[str, Any] | None = None, limits: Limits = DEFAULT) -> dict[str, Any]:
    """Convert the raw dataset under ``raw_dir`` into the store ``out``; returns its attributes.

    Args:
        dataset: the source's name (:data:`geopeft.data.sources.REGISTRY`).
        raw_dir: the raw folder in the publisher's layout.
        bands: the band selection, by name, in store order.
        out: the zarr store to write (replaced whole, never half-written).
        threads: reader threads.
        options: source options (resampling, folds, skip_corrupt, ...).
        limits: the study's limits: a file whose header declares more values than
            ``max_raster_values`` is refused (or skipped, with ``skip_corrupt``) unread.
    """
    src = get_source(dataset)
    options = dict(options or {})
    src.check_bands(bands)
    items = src.scan(Path(raw_dir), options)
    if not items:
        raise DataError(f"{raw_dir}: no samples found for {dataset}")
    skip = bool(options.get("skip_corrupt", False))
    first = _first_readable(src, items, bands, options, skip, limits)
    skipped: list[tuple[str, str]] = []
    names: list[str] = []
    splits: list[str] = []

    def load(item: Any) -> Any:
        try:
            sample = src.read(item, bands, options, limits=limits)
        except DataError as err:
            if skip:
                return err
            raise
        if sample.image.shape != first.image.shape:
            err = DataError(f"{item.path}: shape {sample.image.shape}, the dataset has "
                            f"{first.image.shape}")
            if skip:
                return err
            raise err
        return sample

    # chunks of ~16 MB: a training batch reads one or two of them, and blocks of that size keep
    # reading and (compressed) writing overlapped
    chunk = int(max(1, min(CHUNK, (16 << 20) // max(1, first.image.nbytes))))
    with atomic_dir(out) as tmp:
        w = StoreWriter(tmp, len(items), bands, first.image.shape, src.dims, str(first.image.dtype),
                        first.label.shape, src.label_dims, str(first.label.dtype), chunk)
        written = 0
        pending: Any = None  # the previous block's write, overlapping the next block's reads

        def write_block(start: int, block: list[tuple[Any, Any]]) -> None:
            valid = np.stack([s.valid for _, s in block]) if block[0][1].valid is not None else None
            w.write(start, np.stack([s.image for _, s in block]), np.stack([s.label for _, s in block]),
                    np.array([it.split for it, _ in block]), valid)

        with ThreadPoolExecutor(max(1, threads)) as pool, ThreadPoolExecutor(1) as writer:
            for start in range(0, len(items), chunk):
                block_items = items[start : start + chunk]
                good = []
                for item, sample in zip(block_items, pool.map(load, block_items), strict=True):
                    if isinstance(sample, DataError):
                        skipped.append((item.name, str(sample)))
                        continue
                    good.append((item, sample))
                    names.append(item.name)
                    splits.append(item.split)
                if pending is not None:
                    pending.result()
                    pending = None
                if good:
                    pending = writer.submit(write_block, written, good)
                    written += len(good)
            if pending is not None:
                pending.result()
        if written < len(items):
            w.truncate(written)
        for name, value in src.extra_arrays(items, names, options).items():
            w.add_array(name, value[0], value[1])
        attrs = w.close(np.array(names, dtype=object), np.array(splits, dtype=object), {
            "dataset": dataset, "classes": list(src.classes), "task": src.task,
            "value_scale": src.value_scale, "raw_dir": str(raw_dir), "skipped": len(skipped),
            "skipped_samples": [list(x) for x in skipped], **src.extra_attrs(options),
        })
        if skipped:
            log.warning("%s: skipped %d unreadable samples (store attribute skipped_samples)",
                        dataset, len(skipped))
    log.info("prepared %s: %d samples %s -> %s", dataset, written, attrs["counts"], out)
    return attrs


def open_store(path: Path) -> Any:
    """Open a prepared store lazily (xarray Dataset); a clear error if it is missing."""
    import warnings

    import xarray as xr

    if not Path(path).is_dir():
        raise DataError(f"{path}: prepared store not found (run the prepare rule)")
    with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp inside directory outputs
        warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp")
        return xr.open_zarr(path, zarr_format=3, consolidated=False)
