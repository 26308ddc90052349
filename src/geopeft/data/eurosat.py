"""EuroSAT on-disk format (MS GeoTIFF and RGB JPEG), as the Zenodo archives unpack.

Layout: ``<root>/EuroSAT_MS/<Class>/<Class>_<n>.tif`` (13 bands, uint16, file order B01..B12
then **B8A last**) or ``<root>/EuroSAT_RGB/<Class>/<Class>_<n>.jpg``, with the standard split
files ``eurosat-{train,val,test}.txt`` (file names with ``.jpg``, as published) in ``<root>``.
The same layout with other class folders holds the synthetic pretraining source set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geopeft.bands import EUROSAT_MS_FILE_ORDER, EUROSAT_RGB_FILE_ORDER
from geopeft.data.synthetic import EUROSAT_CLASSES, SOURCE_GROUPS

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A raw file or folder is missing or malformed; the message names it."""


@dataclass(frozen=True)
class EuroSATFormat:
    """One EuroSAT-style dataset: sub-folder, extension, band order, dtype, classes."""

    name: str
    subdir: str
    ext: str
    file_bands: tuple[str, ...]
    dtype: str
    classes: tuple[str, ...]
    value_scale: float  # raw value * value_scale ~ surface reflectance-like units (0-1)

    def read(self, path: Path) -> np.ndarray:
        """Read one sample as (bands, H, W) in file band order, checking count and dtype."""
        return read_tif(path, self) if self.ext == ".tif" else read_jpg(path, self)


_MS = dict(subdir="EuroSAT_MS", ext=".tif", file_bands=EUROSAT_MS_FILE_ORDER, dtype="uint16",
           value_scale=1e-4)
_RGB = dict(subdir="EuroSAT_RGB", ext=".jpg", file_bands=EUROSAT_RGB_FILE_ORDER, dtype="uint8",
            value_scale=1 / 255)
FORMATS: dict[str, EuroSATFormat] = {
    "eurosat_ms": EuroSATFormat("eurosat_ms", classes=EUROSAT_CLASSES, **_MS),  # type: ignore[arg-type]
    "eurosat_rgb": EuroSATFormat("eurosat_rgb", classes=EUROSAT_CLASSES, **_RGB),  # type: ignore[arg-type]
    "eurosat_ms_source": EuroSATFormat(
        "eurosat_ms_source", classes=tuple(SOURCE_GROUPS), **_MS),  # type: ignore[arg-type]
    "eurosat_rgb_source": EuroSATFormat(
        "eurosat_rgb_source", classes=tuple(SOURCE_GROUPS), **_RGB),  # type: ignore[arg-type]
}


def read_tif(path: Path, fmt: EuroSATFormat) -> np.ndarray:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            if src.count != len(fmt.file_bands):
                raise DataError(
                    f"{path}: has {src.count} bands, {fmt.name} needs {len(fmt.file_bands)} "
                    f"({' '.join(fmt.file_bands)})"
                )
            if src.dtypes[0] != fmt.dtype:
                raise DataError(f"{path}: dtype {src.dtypes[0]}, {fmt.name} needs {fmt.dtype}")
            return src.read()
    except RasterioIOError as err:
        raise DataError(f"{path}: cannot be read as GeoTIFF ({err})") from None


def read_jpg(path: Path, fmt: EuroSATFormat) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DataError(f"{path}: image mode {im.mode}, {fmt.name} needs RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot be read as JPEG ({err})") from None
    return arr.transpose(2, 0, 1).copy()


def scan(root: Path, fmt: EuroSATFormat) -> list[tuple[Path, int, str]]:
    """List ``(file, label, split)`` for every sample named in the split files.

    Raises:
        DataError: missing folder, missing split file, a split entry without its file, a class
            folder outside the class list, or a file listed in two splits.
    """
    base = root / fmt.subdir
    if not base.is_dir():
        raise DataError(f"{base}: raw data folder not found (expected the {fmt.name} layout)")
    unknown = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in fmt.classes)
    if unknown:
        raise DataError(f"{base}: class folder(s) {unknown} are not in the {fmt.name} class list")
    split_of: dict[str, str] = {}
    for part in SPLITS:
        f = root / f"eurosat-{part}.txt"
        if not f.is_file():
            if part == "test" and fmt.name.endswith("_source"):
                continue
            raise DataError(f"{f}: split file not found")
        for line in f.read_text().split():
            stem = Path(line).stem
            if stem in split_of:
                raise DataError(f"{f}: {line} is already listed in the {split_of[stem]} split")
            split_of[stem] = part
    out = []
    for stem, part in sorted(split_of.items(), key=lambda kv: _natural(kv[0])):
        cls = stem.rsplit("_", 1)[0]
        if cls not in fmt.classes:
            raise DataError(f"{root}: split entry {stem} has class {cls!r}, not in the class list")
        path = base / cls / f"{stem}{fmt.ext}"
        if not path.is_file():
            raise DataError(f"{path}: listed in eurosat-{part}.txt but missing")
        out.append((path, fmt.classes.index(cls), part))
    return out


def _natural(stem: str) -> tuple[str, int]:
    cls, _, n = stem.rpartition("_")
    return (cls, int(n)) if n.isdigit() else (stem, -1)
