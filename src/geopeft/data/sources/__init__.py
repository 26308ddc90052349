"""Dataset sources: one module per dataset, each knowing its published layout.

A source lists the samples of a raw folder (:meth:`Source.scan`) and reads one sample with the
requested bands (:meth:`Source.read`); :func:`geopeft.data.prepare.prepare` turns any source into
the same zarr layout. Sources also carry what is needed to fetch the real data: archive URLs
(publisher first, mirrors after), sizes and checksums (:attr:`Source.remotes`).
"""

from __future__ import annotations

from geopeft.data.sources import bigearthnet, eurosat, pastis
from geopeft.data.sources.base import SYNTHETIC_MARKER, DataError, Item, Sample, Source

#: Every dataset geopeft reads, by name.
REGISTRY: dict[str, Source] = {**eurosat.SOURCES, **bigearthnet.SOURCES, **pastis.SOURCES}


def get_source(name: str) -> Source:
    """The source registered under ``name``.

    Args:
        name: a dataset name (a key of :data:`REGISTRY`).

    Raises:
        DataError: no dataset has that name.
    """
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "SYNTHETIC_MARKER", "DataError", "Item", "Sample", "Source", "get_source"]
