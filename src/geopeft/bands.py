"""Sentinel-2 band facts and band-order handling.

The canonical (ESA) order is B01..B08, B8A, B09..B12. Some products store bands in another
order: EuroSAT-MS GeoTIFFs hold B01..B12 and then **B8A last**. Every reader maps file band
order to names through this module, so selection always happens by band name.
"""

from __future__ import annotations

from collections.abc import Sequence

from geopeft.errors import GeopeftError

#: ESA order, L1C (13 bands).
S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: Centre wavelength in nm.
CENTRE_NM: dict[str, float] = {
    "B01": 442.7, "B02": 492.4, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1, "B10": 1373.5, "B11": 1613.7,
    "B12": 2202.4,
}
#: Native ground sampling distance in metres.
NATIVE_RES_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
    "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
#: Band order inside an EuroSAT-MS GeoTIFF: B01..B12, then B8A last.
EUROSAT_MS_FILE_ORDER: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)
#: Band order of an EuroSAT-RGB JPEG (channels R, G, B).
EUROSAT_RGB_FILE_ORDER: tuple[str, ...] = ("B04", "B03", "B02")
RGB: tuple[str, ...] = ("B04", "B03", "B02")


class BandError(GeopeftError, ValueError):
    """A band name is unknown or not available in a product."""


def band_indices(wanted: Sequence[str], available: Sequence[str], where: str = "") -> list[int]:
    """Positions of ``wanted`` band names inside ``available`` (a file's band order).

    Args:
        wanted: band names to select, in the order the output should have.
        available: band names in the order they are stored.
        where: name of the file or dataset, used in error messages.

    A name is a Sentinel-2 band's, or one of ``available`` (a dataset of your own names a band
    that has no Sentinel-2 name, e.g. ``ndvi``, in its own words).

    Raises:
        BandError: a name is neither a Sentinel-2 band nor in ``available``, is repeated, or is
            not in ``available``.
    """
    seen: set[str] = set()
    out = []
    for name in wanted:
        if name not in S2_BANDS and name not in available:
            raise BandError(
                f"unknown band name {name!r}{' for ' + where if where else ''}; "
                f"Sentinel-2 bands are {', '.join(S2_BANDS)}"
            )
        if name in seen:
            raise BandError(f"band {name!r} is selected twice{' for ' + where if where else ''}")
        if name not in available:
            raise BandError(
                f"band {name!r} is not available in {where or 'this product'}; "
                f"it holds {', '.join(available)}"
            )
        seen.add(name)
        out.append(list(available).index(name))
    return out
