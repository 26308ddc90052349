"""The base of the errors ``geopeft`` reports as one line instead of a traceback.

Each layer defines its own errors next to the code that raises them (``DataError`` in the data
sources, ``WeightsError`` with the weights, ...); they all derive from :class:`GeopeftError`,
so the command line catches them without importing the modules that define them (and torch
with them). :class:`ConfigError` lives here because every layer that reads settings raises it
(the spec, the strategies, the study's resolution).
"""

from __future__ import annotations


class GeopeftError(Exception):
    """An error that names the file, key or value at fault; ``geopeft`` prints it as one line
    and exits with status 2."""


class ConfigError(GeopeftError, ValueError):
    """The configuration (or a study row) is invalid; the message names file, key and value."""
