"""Streaming writer of prepared stores (zarr v3, readable with ``xarray.open_zarr``).

Converters read samples in parallel and hand them over in blocks; the writer puts each block into
sample-chunked arrays (a training batch reads one chunk, not one per band per sample), updates
the train-split band statistics and the fingerprint on the fly, and never holds the dataset in
memory. Arrays carry their dimension names, so xarray sees::

    image  (sample, band, y, x)  or  (sample, time, band, y, x)
    label  (sample,) | (sample, class) | (sample, y, x)
    split, name (sample,)        band (band,)        [dates, n_dates for time series]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.sources.base import SPLITS


class StoreWriter:
    """Write ``n`` samples of ``sample_shape`` (dims ``dims``) into a new zarr store at ``path``."""

    def __init__(self, path: Path, n: int, bands: list[str], sample_shape: tuple[int, ...],
                 dims: tuple[str, ...], dtype: str, label_shape: tuple[int, ...] = (),
                 label_dims: tuple[str, ...] = (), label_dtype: str = "int16", chunk: int = 256):
        import zarr

        if n == 0:
            raise ValueError("a store needs at least one sample")
        self.n = n
        self.dims = dims
        self.band_axis = 1 + dims.index("band")
        self.root = zarr.open_group(str(path), mode="w", zarr_format=3)
        self.chunk = chunk
        from zarr.codecs import BloscCodec

        # lz4 with byte shuffle: several times faster than zstd for a modest size cost, so
        # conversion runs close to the speed of reading the source files
        fast = BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
        self.image = self.root.create_array(
            "image", shape=(n, *sample_shape), chunks=(min(chunk, n), *sample_shape), dtype=dtype,
            dimension_names=("sample", *dims), fill_value=0, compressors=fast)
        self.label = self.root.create_array(
            "label", shape=(n, *label_shape), chunks=(min(chunk, n), *label_shape),
            dtype=label_dtype, dimension_names=("sample", *label_dims), fill_value=0)
        band = self.root.create_array("band", shape=(len(bands),), dtype=str,
                                      dimension_names=("band",))
        band[:] = np.array(bands, dtype=object)
        self.bands = bands
        self._sum = np.zeros(len(bands))
        self._sumsq = np.zeros(len(bands))
        self._count = 0
        self._hash = hashlib.blake2b(" ".join(bands).encode(), digest_size=32)

    def add_array(self, name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
        arr = self.root.create_array(name, shape=data.shape, dtype=data.dtype if data.dtype != object
                                     else str, dimension_names=dims,
                                     chunks=(min(self.chunk, len(data)), *data.shape[1:]))
        arr[...] = data

    def write(self, start: int, images: np.ndarray, labels: np.ndarray, splits: np.ndarray,
              valid: np.ndarray | None = None) -> None:
        """Store a block of samples from index ``start``; ``valid`` masks padded time steps."""
        stop = start + len(images)
        self.image[start:stop] = images
        self.label[start:stop] = labels
        self._hash.update(np.ascontiguousarray(images).tobytes())
        self._hash.update(np.ascontiguousarray(labels).tobytes())
        train = splits == "train"
        if train.any():
            x = images[train]
            if valid is not None:  # (n, time) mask of real acquisitions -> (n_valid, band, ...)
                x = x[valid[train]]
            band_axis = 1 if valid is not None else self.band_axis
            self._accumulate(np.moveaxis(x, band_axis, 0))
            self._count += x.size // len(self.bands)

    def _accumulate(self, x: np.ndarray) -> None:
        """Add per-band sums and sums of squares of ``x`` (band first), exactly for integers."""
        for b in range(x.shape[0]):
            v = x[b].ravel()
            if v.dtype.kind in "ui" and v.dtype.itemsize <= 2:
                # a histogram gives exact sums and is much faster than float conversion
                offset = -int(np.iinfo(v.dtype).min)
                hist = np.bincount(v.astype(np.int64) + offset if offset else v,
                                   minlength=1 << (8 * v.dtype.itemsize)).astype(np.float64)
                vals = np.arange(len(hist), dtype=np.float64) - offset
                self._sum[b] += hist @ vals
                self._sumsq[b] += hist @ (vals * vals)
            else:
                f = v.astype(np.float64)
                self._sum[b] += f.sum()
                self._sumsq[b] += f @ f

    def truncate(self, n: int) -> None:
        """Shrink to the first ``n`` samples (after skipped samples)."""
        self.n = n
        for arr in (self.image, self.label):
            arr.resize((n, *arr.shape[1:]))

    def close(self, names: np.ndarray, splits: np.ndarray, attrs: dict[str, Any]) -> dict[str, Any]:
        """Write names and splits, statistics and attributes; returns the attributes."""
        if self._count == 0:
            raise ValueError("the train split is empty: norm statistics cannot be computed")
        self.add_array("split", np.asarray(splits, dtype=object), ("sample",))
        self.add_array("name", np.asarray(names, dtype=object), ("sample",))
        for arr in (names, splits):
            self._hash.update("\n".join(map(str, arr)).encode())
        mean = self._sum / self._count
        std = np.sqrt(np.maximum(self._sumsq / self._count - mean**2, 0))
        attrs = dict(attrs, norm_mean=mean.tolist(), norm_std=np.maximum(std, 1e-6).tolist(),
                     norm_split="train", fingerprint=self._hash.hexdigest(),
                     counts={p: int((np.asarray(splits) == p).sum()) for p in SPLITS})
        self.root.attrs.update(attrs)
        return attrs
