"""The limits on what geopeft reads and unpacks: declared, with safe defaults, checked before
memory or disk is spent.

A study sets them in its ``limits`` section (:class:`geopeft.settings.Study`), which reaches
``geopeft prepare`` and ``geopeft fetch`` through their command lines; the commands that read
a file a user hands them (``geopeft predict``, the app) take the defaults. Every refusal is one
line that names the file, its size and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Limits on reading rasters and unpacking archives: a file over a limit is refused, naming
    the file, its size and the limit, before any pixel is read or byte written."""

    max_raster_values: int = field(default=1 << 28, metadata={"minimum": 1})
    """Largest raster read into memory, in values (height x width x bands, or dates x bands x
    height x width), checked from its header before a pixel is read: 268,435,456 = a 4,544 x
    4,544 x 13 scene. Chips of the published datasets are a few hundred thousand values, a
    PASTIS series about 6 million; a larger file is refused, naming it and this limit."""
    max_extract_bytes: int = field(default=1024 * GIB, metadata={"minimum": 1})
    """Largest total size, in bytes, that one archive may unpack to (its members' declared
    sizes, and the bytes actually written); 1 TiB, above the largest published archive
    (BigEarthNet-S2 v1: 66 GiB unpacked). Free disk space is checked against it too."""
    max_upload_extract_bytes: int = field(default=GIB, metadata={"minimum": 1})
    """Largest size an archive uploaded to the app may unpack to; only the members the app needs
    are unpacked."""


#: The defaults, for commands that read a user's file outside a study.
DEFAULT = Limits()
