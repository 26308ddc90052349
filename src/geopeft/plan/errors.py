"""The error of ``geopeft plan``'s inputs."""

from __future__ import annotations

from geopeft.errors import GeopeftError


class PlanError(GeopeftError, ValueError):
    """A plan input is missing or malformed; the message names the file and key."""
