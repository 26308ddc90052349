"""Temporal subsampling of satellite image time series: nested, evenly spaced, in date order.

A study compares sequence lengths (35, 25, 15, 6, 1 dates). Every length of a series is drawn
from the next longer one of the study's ladder, evenly spaced over it, so the selections are
nested (the 6 dates are among the 15, the 15 among the 25, ...) and always in date order:

* ``k`` of ``m`` dates: positions ``round(linspace(0, m - 1, k))`` (first and last kept);
* ``T = 1``: the median date of the next longer selection (position ``(m - 1) // 2``), i.e. a
  mid-season acquisition for a one-year series.

A series shorter than the requested length follows the ``pad`` rule: ``mask`` (default, as the
reference implementations) keeps all its dates and pads the series at the end with empty dates
(position -1: all-zero images on day 0), which the models find and mask out of their attention
and aggregation; ``repeat`` takes ``length`` evenly spaced positions with repetition (every date
kept at least once, still in date order, the model sees a repeated date); ``error`` raises
:class:`ShortSeriesError` naming the patch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

#: The study's default ladder of sequence lengths.
LADDER: tuple[int, ...] = (35, 25, 15, 6, 1)
PAD_RULES = ("mask", "repeat", "error")
#: Position of a padded date in :func:`temporal_indices` (``pad: mask``).
PAD = -1
#: Dates become days since this reference (the PASTIS convention), for the temporal encodings.
REFERENCE_DATE = "2018-09-01"


class ShortSeriesError(ValueError):
    """A series holds fewer dates than the requested sequence length (``pad: error``)."""


def evenly_spaced(m: int, k: int) -> np.ndarray:
    """``k`` evenly spaced positions among ``m`` (``k <= m``); ``k = 1`` gives the median."""
    if not 1 <= k <= m:
        raise ValueError(f"cannot pick {k} of {m} positions")
    if k == 1:
        return np.array([(m - 1) // 2])
    return np.rint(np.linspace(0, m - 1, k)).astype(np.int64)


def temporal_indices(n: int, length: int, ladder: Sequence[int] = LADDER, pad: str = "mask",
                     where: str = "series") -> np.ndarray:
    """Positions (sorted, into a series of ``n`` dates) of the ``length``-date subset.

    Args:
        n: dates in the series (its valid, date-sorted acquisitions).
        length: dates to keep.
        ladder: the study's sequence lengths; shorter selections are drawn from longer ones, so
            the selections of all lengths of the ladder are nested.
        pad: rule for ``n < length``: ``mask`` (all ``n`` dates, then :data:`PAD` positions),
            ``repeat`` or ``error``.
        where: names the series in errors (e.g. the patch id).
    """
    if length < 1:
        raise ValueError(f"sequence length {length} must be >= 1")
    if n < 1:
        raise ShortSeriesError(f"{where}: the series holds no date")
    if pad not in PAD_RULES:
        raise ValueError(f"pad rule {pad!r} is not one of {PAD_RULES}")
    if n < length:
        if pad == "error":
            raise ShortSeriesError(f"{where}: {n} dates, shorter than the sequence length {length} "
                                   f"(set temporal.pad: mask to pad and mask it)")
        if pad == "mask":
            return np.concatenate([np.arange(n), np.full(length - n, PAD)]).astype(np.int64)
        return np.floor(np.linspace(0, n - 1e-9, length)).astype(np.int64)
    cur = np.arange(n)
    for step in sorted({int(x) for x in ladder if length < x < n}, reverse=True) + [length]:
        cur = cur[evenly_spaced(len(cur), step)]
    return cur


def days_since(dates: np.ndarray, reference: str = REFERENCE_DATE) -> np.ndarray:
    """YYYYMMDD integers -> days since ``reference`` (float32; 0-valued padding stays 0)."""
    d = np.asarray(dates, dtype=np.int64)
    ref = np.datetime64(dt.date.fromisoformat(reference))
    valid = d > 0
    out = np.zeros(d.shape, np.float32)
    if valid.any():
        v = d[valid]
        iso = np.array([f"{x // 10000:04d}-{x // 100 % 100:02d}-{x % 100:02d}" for x in v],
                       dtype="datetime64[D]")
        out[valid] = (iso - ref).astype(np.float32)
    return out


__all__ = ["LADDER", "PAD", "PAD_RULES", "REFERENCE_DATE", "ShortSeriesError", "days_since",
           "evenly_spaced", "temporal_indices"]
