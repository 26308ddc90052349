"""Strata of labelled samples, for the stratified label-fraction subsets
(:mod:`geopeft.data.subsets`) and the stratified splits of a dataset of your own
(:mod:`geopeft.data.sources.generic`)."""

from __future__ import annotations

import numpy as np


def strata(labels: np.ndarray) -> np.ndarray:
    """Stratum of each sample: its class, or for multi-hot labels its rarest positive class
    (samples without a label form their own stratum, -1)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    freq = labels.sum(axis=0).astype(np.float64)
    rank = np.where(labels > 0, freq[None, :], np.inf)
    out = rank.argmin(axis=1)
    out[~np.isfinite(rank.min(axis=1))] = -1
    return out


__all__ = ["strata"]
