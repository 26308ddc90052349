"""Dataset sources: one module per dataset, each knowing its published layout.

A source lists the samples of a raw folder (:meth:`Source.scan`) and reads one sample with the
requested bands (:meth:`Source.read`); :func:`geopeft.data.prepare.prepare` turns any source into
the same zarr layout. Sources also carry what is needed to fetch the real data: archive URLs
(publisher first, mirrors after), sizes and checksums (:attr:`Source.remotes`).
"""

from __future__ import annotations

from geopeft.data.sources import bigearthnet, eurosat, generic, pastis
from geopeft.data.sources.base import SYNTHETIC_MARKER, DataError, Item, Sample, Source

#: Every dataset geopeft reads, by name: the built-in ones, and those a study declares
#: (``data.generic``, :mod:`geopeft.data.sources.generic`) once registered.
REGISTRY: dict[str, Source] = {**eurosat.SOURCES, **bigearthnet.SOURCES, **pastis.SOURCES}
#: The built-in datasets' names.
BUILTIN = frozenset(REGISTRY)


def get_source(name: str) -> Source:
    """The source registered under ``name``: a built-in dataset, a declared one registered in
    this process (the study's configuration, a store's or a run's record), or one the workflow
    declares to its jobs (:data:`geopeft.data.sources.generic.ENV`).

    Args:
        name: a dataset name.

    Raises:
        DataError: no dataset has that name.
    """
    if name not in REGISTRY:
        declared = generic.from_environment()
        if name in declared:
            return generic.register(name, declared[name], REGISTRY, BUILTIN)
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))} (or "
                        f"a dataset of your own, declared in data.generic)")
    return REGISTRY[name]


def register_generic(name: str, decl: dict) -> Source:
    """Register the dataset ``name`` of a study's ``data.generic`` (see
    :func:`geopeft.data.sources.generic.register`)."""
    return generic.register(name, decl, REGISTRY, BUILTIN)


__all__ = ["BUILTIN", "REGISTRY", "SYNTHETIC_MARKER", "DataError", "Item", "Sample", "Source",
           "get_source", "register_generic"]
