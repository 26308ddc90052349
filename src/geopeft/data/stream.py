"""Images read from the zarr store as they are needed: the splits too large to hold in memory.

A prepared store keeps its images in sample chunks of about 16 MB (:mod:`geopeft.data.store`).
:class:`StoreImages` stands for a split's images like an array (``len``, ``shape``, ``dtype``,
indexing by a slice or by positions) and reads whole chunks, keeping the last few decompressed
(least recently used first out), so a job holds a few chunks and one batch, not the dataset.
Time series are cut to their dates (:func:`geopeft.data.temporal.temporal_indices`) per sample as
they are read. :func:`chunk_order` draws a training epoch's sample order that visits the chunks
in a random order and shuffles the samples within a window of a few chunks, so that the
chunks a batch needs are still in the cache: throughput of sequential reads, a fresh order
every epoch, from the run's data generator (a resumed run redraws nothing: the order is part of
its saved state).

Which splits stream is decided once per job, by size (:func:`stream_decision`): a split that
fits in a share of the job's memory (its cgroup or SLURM limit, else the machine's available
memory) is loaded whole, as before; the decision and the sizes are logged.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geopeft.data.sources import DataError
from geopeft.data.temporal import PAD

log = logging.getLogger(__name__)

#: Chunks of the store a :class:`StoreImages` keeps decompressed (two windows of
#: :data:`WINDOW_CHUNKS`: a batch may straddle two windows).
CACHE_CHUNKS = 8
#: Chunks whose samples a training epoch shuffles together (:func:`chunk_order`).
WINDOW_CHUNKS = 4
#: Share of the job's memory the splits it trains and validates on may take whole.
WHOLE_SHARE = 0.5


class StoreImages:
    """The images of one split in the store, read chunk by chunk when indexed.

    Args:
        path: the zarr store.
        idx: the split's samples, as indices into the store's ``sample`` dimension.
        select: per sample, the dates to keep of a time series (``PAD``: an empty date), or None.
        cache_chunks: decompressed chunks kept.
    """

    def __init__(self, path: Path, idx: np.ndarray, select: list[np.ndarray] | None = None,
                 cache_chunks: int = CACHE_CHUNKS):
        import zarr

        self.path, self.idx, self.select = Path(path), np.asarray(idx, dtype=np.int64), select
        arr = zarr.open_array(self.path / "image", mode="r")
        self.chunk = int(arr.chunks[0])
        self.dtype = np.dtype(arr.dtype)
        inner = tuple(arr.shape[1:])
        if select is not None:  # (T, C, H, W) -> (length, C, H, W)
            inner = (len(select[0]), *inner[1:])
        self.shape = (len(self.idx), *inner)
        self.cache_chunks = max(1, cache_chunks)
        self._arr: Any = None  # opened in the process that reads (a forked worker opens its own)
        self._pid = -1
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reads = 0
        """Chunks read and decompressed so far (by this process)."""

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def chunk_of(self) -> np.ndarray:
        """The store chunk of each sample of the split."""
        return self.idx // self.chunk

    def _chunk(self, c: int) -> np.ndarray:
        if self._arr is None or self._pid != os.getpid():
            import zarr

            self._arr, self._pid, self._cache = (zarr.open_array(self.path / "image", mode="r"),
                                                 os.getpid(), OrderedDict())
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        try:
            data = np.asarray(self._arr[c * self.chunk : (c + 1) * self.chunk])
        except Exception as err:  # a missing or corrupt chunk: name the store and the samples
            first = c * self.chunk
            raise DataError(f"{self.path}: cannot read image chunk {c} (samples {first}-"
                            f"{first + self.chunk - 1}): {err}") from err
        self.reads += 1
        self._cache[c] = data
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            pos = np.arange(len(self.idx))[key]
        elif isinstance(key, torch.Tensor):
            pos = key.numpy()
        else:
            pos = np.asarray(key)
        if pos.ndim == 0:
            return self[pos[None]][0]
        store = self.idx[pos]
        out = np.empty((len(pos), *self.shape[1:]), dtype=self.dtype)
        for c in np.unique(store // self.chunk):  # each chunk once, in store order
            rows = np.flatnonzero(store // self.chunk == c)
            data = self._chunk(int(c))[store[rows] - c * self.chunk]
            if self.select is None:
                out[rows] = data
                continue
            for r, series in zip(rows, data, strict=True):
                s = self.select[pos[r]]
                real = s != PAD  # padded dates (pad: mask) are empty images
                out[r, real] = series[s[real]]
                out[r, ~real] = 0
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole split in memory (what a small split or a caller that needs it all gets)."""
        out = self[slice(None)]
        return out.astype(dtype) if dtype is not None else out


def chunk_order(chunks: np.ndarray, gen: torch.Generator,
                window: int = WINDOW_CHUNKS) -> torch.Tensor:
    """An epoch's order of the samples whose store chunks are ``chunks``: the chunks in a random
    order, then the samples of each window of ``window`` consecutive chunks shuffled together.

    Args:
        chunks: the store chunk of each sample (:meth:`StoreImages.chunk_of`).
        gen: the run's data generator (every draw comes from it).
        window: chunks shuffled together.

    Returns:
        Positions 0..len(chunks)-1, each once.
    """
    ids = np.unique(chunks)
    perm = torch.randperm(len(ids), generator=gen).numpy()  # positions into ids
    by_chunk = np.argsort(chunks, kind="stable")  # the samples grouped by chunk, ascending
    bounds = np.searchsorted(chunks[by_chunk], ids, side="left"), \
        np.searchsorted(chunks[by_chunk], ids, side="right")
    parts = []
    for start in range(0, len(perm), window):
        members = np.sort(np.concatenate([by_chunk[bounds[0][k] : bounds[1][k]]
                                          for k in perm[start : start + window]]))
        parts.append(members[torch.randperm(len(members), generator=gen).numpy()])
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))


def memory_budget_mb() -> tuple[float, str]:
    """The memory this job may use, in MB, and where the figure comes from: the cgroup's limit
    (what SLURM and containers enforce), else SLURM's allocation, else the machine's available
    memory, else its total."""
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw) / 2**20, f"cgroup limit ({f})"
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU"):
        if os.environ.get(var, "").isdigit():
            return float(os.environ[var]), f"SLURM allocation ({var})"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024, "available memory (/proc/meminfo)"
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages / 2**20, "physical memory"


def stream_decision(nbytes: int, where: str, budget: tuple[float, str] | None = None,
                    share: float = WHOLE_SHARE) -> bool:
    """Whether splits of ``nbytes`` together (in the store's dtype) stream from the store: when
    they exceed ``share`` of the job's memory. The decision is logged with the sizes.

    Args:
        nbytes: the images the job would load whole.
        where: the store, for the log.
        budget: (MB, source) of the job's memory (default :func:`memory_budget_mb`).
        share: the part of it whole splits may take.
    """
    mb, source = budget if budget is not None else memory_budget_mb()
    need = nbytes / 2**20
    stream = need > share * mb
    log.info("%s: %s (the splits' images take %.0f MB; %.0f%% of this job's %.0f MB, %s, is "
             "%.0f MB)", where, "streaming batches from the store" if stream else
             "loading the splits whole", need, 100 * share, mb, source, share * mb)
    return stream


__all__ = ["StoreImages", "chunk_order", "memory_budget_mb", "stream_decision"]
