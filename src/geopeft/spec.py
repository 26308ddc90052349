"""The typed configuration every layer below the study takes, and the error of a bad one.

:mod:`geopeft.config` reads, merges and validates the study files once; what it hands on to
data, models, training and evaluation is described here.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The configuration (or a study row) is invalid; the message names file, key and value."""


__all__ = ["ConfigError"]
