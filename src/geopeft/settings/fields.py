"""The field helpers of the settings' dataclasses and the constants several sections share."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any

from geopeft.data.sources import REGISTRY
from geopeft.spec import TrainArgs

#: Datasets a study may train on (the schema's ``dataset``), asked of the source registry.
DATASETS = tuple(n for n, s in REGISTRY.items() if s.study_dataset)
#: Where the raw data come from (``data.source``).
DATA_SOURCES = ("synthetic", "local", "download")
#: How BigEarthNet's 20/60 m bands reach the 10 m grid (``data.options.resampling``).
RESAMPLINGS = ("nearest", "bilinear", "cubic")
#: Input normalisation of a backbone (``backbone.normalize``).
NORMALIZATIONS = ("auto", "backbone", "dataset")
#: Study, run and paper-study names.
NAME_PATTERN = "^[A-Za-z0-9_.-]+$"
SHA256_PATTERN = "^[0-9a-f]{64}$"
MD5_PATTERN = "^[0-9a-f]{32}$"


def setting(default: Any = MISSING, **schema: Any) -> Any:
    """A key with a default (a list, mapping or section class is copied per instance)."""
    if isinstance(default, type):
        return field(default_factory=default, metadata=schema)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=schema)
    return field(default=default, metadata=schema)


def optional(**schema: Any) -> Any:
    """A key that may be left out; no default is filled in."""
    return field(default=None, metadata={**schema, "optional": True})


def required(**schema: Any) -> Any:
    """A key every study sets."""
    return field(metadata=schema)


def train_override() -> Any:
    """A training setting a strategy or row may override (as :class:`TrainArgs`')."""
    return optional(like=TrainArgs)
