"""The field helpers of the settings' dataclasses and the constants several sections share."""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any

from geopeft.data.sources import REGISTRY
from geopeft.spec import TRAIN_KEYS, TrainArgs
from geopeft.spec.sections import (  # noqa: F401  (the settings' field helpers)
    NORMALIZATIONS,
    SHA256_PATTERN,
    optional,
    required,
    setting,
)

#: Datasets a study may train on (the schema's ``dataset``), asked of the source registry.
DATASETS = tuple(n for n, s in REGISTRY.items() if s.study_dataset)
#: A dataset's name: a built-in one (:data:`DATASETS`) or one of your own (``data.generic``);
#: lower-case, as the workflow's ``{dataset}`` wildcard takes it.
DATASET_PATTERN = "^[a-z0-9_]+$"
#: Where the raw data come from (``data.source``).
DATA_SOURCES = ("synthetic", "local", "download")
#: How BigEarthNet's 20/60 m bands reach the 10 m grid (``data.options.resampling``).
RESAMPLINGS = ("nearest", "bilinear", "cubic")
#: Study, run and paper-study names.
NAME_PATTERN = "^[A-Za-z0-9_.-]+$"
MD5_PATTERN = "^[0-9a-f]{32}$"


def train_override() -> Any:
    """A training setting a strategy or row may override (as :class:`TrainArgs`')."""
    return optional(like=TrainArgs)


#: The training settings a strategy or a row may override (:data:`geopeft.spec.TRAIN_KEYS`), each
#: as :class:`TrainArgs` declares it: the base of both sections.
TrainOverrides = make_dataclass(
    "TrainOverrides", [(k, Any, train_override()) for k in TRAIN_KEYS], kw_only=True)
