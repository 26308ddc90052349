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
from collections.abc import Callable, Iterator
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
#: Chunks each reader process reads ahead (:meth:`StoreImages.batches`).
PREFETCH = 2
#: Seconds the job waits for one chunk from a reader process before it stops with an error.
READ_TIMEOUT_S = 600
#: Share of the job's memory the splits it trains and validates on may take whole.
WHOLE_SHARE = 0.5


class _ChunkReads(torch.utils.data.Dataset):
    """Item ``c``: (c, data) of store chunk ``c`` as a reader process reads it; a chunk that
    cannot be read gives its :class:`DataError`, raised by the consumer with the store's message
    (not as a worker's traceback)."""

    def __init__(self, images: StoreImages):
        self.images = images

    def __len__(self) -> int:
        return -(-int(self.images.idx.max(initial=0) + 1) // self.images.chunk)

    def __getitem__(self, c: int) -> tuple[int, Any]:
        try:
            return c, torch.from_numpy(self.images._read(c))  # via shared memory
        except DataError as err:
            return c, err


class _Plan(torch.utils.data.Sampler[int]):
    """The chunks to read next, in order (set before each pass of the reader processes)."""

    def __init__(self) -> None:
        self.plan: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


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
        """Chunks read and decompressed so far (by this process or its reader processes)."""
        self.workers = 0
        """Reader processes of :meth:`batches` (``train.workers`` of the job)."""
        self._loader: Any = None
        self._loader_pid = -1
        self._plan: Any = None

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

    def _read(self, c: int) -> np.ndarray:
        """Store chunk ``c``, read and decompressed (no cache)."""
        if self._arr is None or self._pid != os.getpid():
            import zarr

            self._arr, self._pid, self._cache = (zarr.open_array(self.path / "image", mode="r"),
                                                 os.getpid(), OrderedDict())
        try:
            data = np.asarray(self._arr[c * self.chunk : (c + 1) * self.chunk])
        except Exception as err:  # a missing or corrupt chunk: name the store and the samples
            first = c * self.chunk
            raise DataError(f"{self.path}: cannot read image chunk {c} (samples {first}-"
                            f"{first + self.chunk - 1}): {err}") from err
        self.reads += 1
        return data

    def _chunk(self, c: int) -> np.ndarray:
        if self._pid == os.getpid() and c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        data = self._read(c)
        self._keep(self._cache, {c: data}, [c])
        return data

    def _keep(self, cache: OrderedDict[int, np.ndarray], got: dict[int, np.ndarray],
              need: list[int]) -> None:
        """Put a batch's chunks ``need`` (``got``: those just read) last in ``cache``, then drop
        the least recently used beyond :attr:`cache_chunks`."""
        for c in need:
            if c in got:
                cache[c] = got[c]
            cache.move_to_end(c)
        while len(cache) > self.cache_chunks:
            cache.popitem(last=False)

    def _positions(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(len(self.idx))[key]
        if isinstance(key, torch.Tensor):
            return key.numpy()
        return np.asarray(key)

    def _needs(self, pos: np.ndarray) -> list[int]:
        """The store chunks of the samples at ``pos``, each once, in store order."""
        return [int(c) for c in np.unique(self.idx[pos] // self.chunk)]

    def __getitem__(self, key: Any) -> np.ndarray:
        pos = self._positions(key)
        if pos.ndim == 0:
            return self[pos[None]][0]
        return self._assemble(pos, self._needs(pos), self._chunk)

    def _assemble(self, pos: np.ndarray, needs: list[int],
                  chunk: Callable[[int], np.ndarray]) -> np.ndarray:
        """The samples at ``pos``, taken from their store chunks ``needs`` one chunk at a time
        (``chunk(c)``: the decompressed chunk ``c``), so a large read holds one chunk beside
        its output, not every chunk it needs."""
        store = self.idx[pos]
        out = np.empty((len(pos), *self.shape[1:]), dtype=self.dtype)
        for c in needs:
            rows = np.flatnonzero(store // self.chunk == c)
            if not len(rows):
                continue
            data = chunk(c)[store[rows] - c * self.chunk]
            if self.select is None:
                out[rows] = data
                continue
            for r, series in zip(rows, data, strict=True):
                s = self.select[pos[r]]
                real = s != PAD  # padded dates (pad: mask) are empty images
                out[r, real] = series[s[real]]
                out[r, ~real] = 0
        return out

    def batches(self, positions: list[Any], workers: int | None = None) -> Iterator[np.ndarray]:
        """The batches at ``positions`` (each a slice or positions into the split), in order.

        With ``workers`` > 0 (default :attr:`workers`), that many reader processes
        (a :class:`torch.utils.data.DataLoader` over the chunks, in the order the batches first
        need them) decompress chunks ahead while this process assembles the batches; which
        chunks are read, kept and dropped is planned before the first read, so the batches are
        the same with any number of workers. Memory holds :attr:`cache_chunks` chunks, plus
        ``workers`` x :data:`PREFETCH` in flight, plus one batch.

        Raises:
            DataError: a chunk cannot be read (store, chunk and samples named) or a reader
                process died (killed, out of memory): the job stops, it does not hang.
        """
        workers = self.workers if workers is None else workers
        pos = [self._positions(p) for p in positions]
        if workers <= 0:
            for p in pos:
                yield self[p]
            return
        needs = [self._needs(p) for p in pos]
        plan: list[int] = []  # the chunk reads, in order: what an LRU cache of this size misses
        sim: OrderedDict[int, Any] = OrderedDict()
        for need in needs:
            plan += [c for c in need if c not in sim]
            self._keep(sim, dict.fromkeys(need), need)
        self.start_readers(workers)
        self._plan.plan = plan
        reads = self._pass()
        cache: OrderedDict[int, np.ndarray] = OrderedDict()
        for p, need in zip(pos, needs, strict=True):
            got = {c: self._next_read(reads, c) for c in need if c not in cache}
            have = {c: got[c] if c in got else cache[c] for c in need}
            self._keep(cache, got, need)  # (a batch may need more chunks than are kept)
            yield self._assemble(p, need, have.__getitem__)

    def start_readers(self, workers: int | None = None) -> None:
        """Start the reader processes of :meth:`batches` now, if not yet started. They last as
        long as this object (one start per job): started before the model is built, as
        :func:`~geopeft.data.dataset.load_splits` does, the forked processes share none of the
        pages training writes (no copy-on-write of weights and optimiser state)."""
        workers = self.workers if workers is None else workers
        if workers <= 0 or (self._loader is not None and self._loader_pid == os.getpid()):
            return
        self._plan, self._loader_pid = _Plan(), os.getpid()
        self._loader = torch.utils.data.DataLoader(
            _ChunkReads(self), sampler=self._plan, batch_size=None, num_workers=workers,
            prefetch_factor=PREFETCH, persistent_workers=True, timeout=READ_TIMEOUT_S,
            generator=torch.Generator())  # its own: the workers' seeds come not from torch's
        # global generator, whose stream (dropout) must not depend on the workers
        self._pass()  # fork them now (nothing to read yet)

    def _pass(self) -> Iterator[Any]:
        """A pass of the reader processes over the current plan (chunks still queued from an
        unfinished pass are dropped)."""
        try:
            return iter(self._loader)
        except RuntimeError as err:
            raise self._reader_failed(err) from None

    def _reader_failed(self, err: Exception) -> DataError:
        # stop the other readers now: left running, their pids stay registered with torch's
        # SIGCHLD handler, which raises at a random later point of the job when they die
        try:
            self.close()
        except Exception as stop:  # a reader already gone: nothing more to stop
            log.debug("%s: stopping the readers after a failure: %s", self.path, stop)
        return DataError(f"{self.path}: a reader process of the image chunks failed ({err}). "
                         f"Out of memory? Lower train.workers or raise the job's mem_mb")

    def close(self) -> None:
        """Stop the reader processes (they also stop with this object or the process)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and self._loader_pid == os.getpid():
            it._shutdown_workers()
        self._loader = None

    def __getstate__(self) -> dict[str, Any]:  # (a copy for another process holds no readers)
        return {**self.__dict__, "_loader": None, "_plan": None, "_arr": None, "_cache": {}}

    def _next_read(self, reads: Iterator[Any], c: int) -> np.ndarray:
        try:
            got_c, data = next(reads)
        except RuntimeError as err:  # a worker killed or timed out: DataLoader's own message
            raise self._reader_failed(err) from None
        if isinstance(data, DataError):  # raised in the worker: its message, no traceback
            raise data
        assert got_c == c, (got_c, c)  # the plan is followed in order
        self.reads += 1
        return data.numpy() if isinstance(data, torch.Tensor) else data

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


def memory_budget_mb(configured_mb: float | None = None, ranks: int = 1) -> tuple[float, str]:
    """The memory this job may use, in MB, and where the figure comes from: the least of the
    cgroup's limit (what SLURM and containers enforce), SLURM's allocation, the job's
    configured ``mem_mb`` and the machine's available memory. Under DDP each of the ``ranks``
    processes of the job gets its share.

    Args:
        configured_mb: the job's ``resources.mem_mb`` (``geopeft train --mem-mb``), or None.
        ranks: processes of the job that each hold their splits.
    """
    limits: list[tuple[float, str]] = [c] if (c := _cgroup_limit_mb()) else []
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU"):
        if os.environ.get(var, "").isdigit():
            limits.append((float(os.environ[var]), f"SLURM allocation ({var})"))
            break
    if configured_mb:
        limits.append((float(configured_mb), "the job's resources.mem_mb"))
    mb, source = min([*limits, _machine_memory_mb()])
    if ranks > 1:
        return mb / ranks, f"{source}, shared by {ranks} processes"
    return mb, source


CGROUP_MEMORY = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _cgroup_limit_mb(files: tuple[str, ...] = CGROUP_MEMORY) -> tuple[float, str] | None:
    """The memory limit of this process's cgroup (v2, else v1), in MB, if it has one."""
    for f in files:
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw) / 2**20, f"cgroup limit ({f})"
    return None


def _machine_memory_mb() -> tuple[float, str]:
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
