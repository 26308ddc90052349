"""EuroSAT on-disk format (MS GeoTIFF and RGB JPEG), as the Zenodo archives unpack.

Layout: ``<root>/EuroSAT_MS/<Class>/<Class>_<n>.tif`` (13 bands, uint16, file order B01..B12
then **B8A last**) or ``<root>/EuroSAT_RGB/<Class>/<Class>_<n>.jpg``, with the standard split
files ``eurosat-{train,val,test}.txt`` (file names with ``.jpg``, as published) in ``<root>``.
The same layout with other class folders holds the synthetic pretraining source set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import EUROSAT_MS_FILE_ORDER, EUROSAT_RGB_FILE_ORDER
from geopeft.data.download import Remote
from geopeft.data.sources.base import (
    SPLITS,
    DataError,
    Item,
    Sample,
    Source,
    check_side,
    check_values,
)
from geopeft.limits import DEFAULT, Limits

#: EuroSAT's ten classes (folder names) in the order used for label indices.
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
#: Class sizes of the real EuroSAT (27,000 patches); the synthetic world keeps the proportions.
EUROSAT_COUNTS: dict[str, int] = {
    "AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
    "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
    "River": 2500, "SeaLake": 3000,
}
#: Coarse groups used to label the pretraining source set differently from the target task.
SOURCE_GROUPS: dict[str, tuple[str, ...]] = {
    "Water": ("River", "SeaLake"),
    "Woodland": ("Forest",),
    "Grassland": ("HerbaceousVegetation", "Pasture"),
    "Cropland": ("AnnualCrop", "PermanentCrop"),
    "BuiltUp": ("Highway", "Industrial", "Residential"),
}
_HF = "https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c"
#: Standard 16,200 / 5,400 / 5,400 split files (file names with .jpg) beside the mirror's zip.
SPLIT_REMOTES = (
    Remote("eurosat-train.txt", (f"{_HF}/eurosat-train.txt",), md5="908f142e73d6acdf3f482c5e80d851b1"),
    Remote("eurosat-val.txt", (f"{_HF}/eurosat-val.txt",), md5="95de90f2aa998f70a3b2416bfe0687b4"),
    Remote("eurosat-test.txt", (f"{_HF}/eurosat-test.txt",), md5="7ae5ab94471417b6e315763121e67c5f"),
)

#: Samples per split of the standard split files (60 / 20 / 20 % of the 27,000 patches).
SPLIT_SIZES: dict[str, int] = {"train": 16_200, "val": 5_400, "test": 5_400}
SPLIT_SIZES_SOURCE = ("the standard split files eurosat-{train,val,test}.txt (16,200 / 5,400 / "
                      "5,400 lines; torchgeo/eurosat on Hugging Face)")


class EuroSAT(Source):
    """One EuroSAT-style dataset: sub-folder, extension, band order, dtype, classes."""

    def __init__(self, name: str, subdir: str, ext: str, file_bands: tuple[str, ...], dtype: str,
                 classes: tuple[str, ...], value_scale: float, remotes: tuple[Remote, ...] = (),
                 study_dataset: bool = True):
        self.name, self.subdir, self.ext, self.dtype = name, subdir, ext, dtype
        self.study_dataset = study_dataset
        self.embedded = True  # the synthesize rule writes both datasets and both source sets
        self.file_bands, self.classes, self.value_scale = file_bands, classes, value_scale
        self.remotes = remotes
        self.layout = subdir
        self.native_size = 64
        self.input_format = ("a EuroSAT-MS 13-band GeoTIFF (`.tif`, B8A last)" if ext == ".tif"
                             else "a EuroSAT-RGB JPEG or PNG")
        self.pretrain_source = f"{name}_source" if study_dataset else name
        if study_dataset:  # the synthetic source sets have no published split
            self.published_splits = dict(SPLIT_SIZES)
            self.published_splits_source = SPLIT_SIZES_SOURCE
            self.fixtures = "geopeft.data.synthetic:write_fixtures"  # rehearsal downloads
            self.fixture_samples = 40

    def read_file(self, path: Path, limits: Limits = DEFAULT,
                  check: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Read one file as (bands, H, W) in file band order, checking count, dtype, its size
        against ``limits`` and its side (H, W) with ``check``, all from its header before a pixel
        is read."""
        reader = read_tif if self.ext == ".tif" else read_jpg
        return reader(path, self, limits, check)

    def read_input(self, path: Path, bands: list[str], options: dict[str, Any],
                   dates: list[int] | None = None, *, limits: Limits = DEFAULT,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int] | None]:
        """A EuroSAT file (MS: the 13-band GeoTIFF, B8A last; RGB: a JPEG or PNG), bands picked
        by name."""
        path = Path(path)
        side = None if size is None else lambda h, w: check_side(path, (h, w), size, self.name)
        return self.read_file(path, limits, side)[self.check_bands(bands)], None

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        size = self.declared_size(raw)
        return [Item(p.stem, part, p, label, {"size": size}) for p, label, part in scan(raw, self)]

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        size = item.extra.get("size")

        def side(h: int, w: int) -> None:
            if size is not None and (h, w) != (size, size):
                raise DataError(f"{item.path}: size {h}x{w}, {self.name} patches are "
                                f"{size}x{size}")

        arr = self.read_file(item.path, limits, side)
        return Sample(arr[self.check_bands(bands)], np.int16(item.label))


_MS = dict(subdir="EuroSAT_MS", ext=".tif", file_bands=EUROSAT_MS_FILE_ORDER, dtype="uint16",
           value_scale=1e-4)
_RGB = dict(subdir="EuroSAT_RGB", ext=".jpg", file_bands=EUROSAT_RGB_FILE_ORDER, dtype="uint8",
            value_scale=1 / 255)
_ZENODO = "https://zenodo.org/records/7711810/files"
SOURCES: dict[str, EuroSAT] = {
    "eurosat_ms": EuroSAT("eurosat_ms", classes=EUROSAT_CLASSES, remotes=(  # type: ignore[arg-type]
        Remote("EuroSAT_MS.zip", (f"{_ZENODO}/EuroSAT_MS.zip?download=1",),
               md5="091174add3c8e680a49244acf185b9f0", size=2_065_402_329), *SPLIT_REMOTES), **_MS),
    "eurosat_rgb": EuroSAT("eurosat_rgb", classes=EUROSAT_CLASSES, remotes=(  # type: ignore[arg-type]
        Remote("EuroSAT_RGB.zip", (f"{_ZENODO}/EuroSAT_RGB.zip?download=1",),
               md5="f46e308c4d50d4bf32fedad2d3d62f3b", size=94_658_721), *SPLIT_REMOTES), **_RGB),
    "eurosat_ms_source": EuroSAT("eurosat_ms_source", classes=tuple(SOURCE_GROUPS),
                                 study_dataset=False, **_MS),  # type: ignore[arg-type]
    "eurosat_rgb_source": EuroSAT("eurosat_rgb_source", classes=tuple(SOURCE_GROUPS),
                                  study_dataset=False, **_RGB),  # type: ignore[arg-type]
}


def read_tif(path: Path, fmt: EuroSAT, limits: Limits = DEFAULT,
             check: Callable[[int, int], None] | None = None) -> np.ndarray:
    """One EuroSAT-MS GeoTIFF as (13, H, W) in file band order (B8A last); count, dtype, size
    (:func:`~geopeft.data.sources.base.check_values`) and side (``check(H, W)``) checked from
    its header before a pixel is read."""
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
            check_values(path, f"{src.height}x{src.width} px x {src.count} bands",
                         src.height * src.width * src.count, src.dtypes[0], limits)
            if check is not None:
                check(src.height, src.width)
            return src.read()
    except RasterioIOError as err:
        raise DataError(f"{path}: cannot be read as GeoTIFF ({err})") from None


def read_jpg(path: Path, fmt: EuroSAT, limits: Limits = DEFAULT,
             check: Callable[[int, int], None] | None = None) -> np.ndarray:
    """One EuroSAT-RGB JPEG (or PNG) as (3, H, W) uint8, bands R, G, B; mode, size and side
    checked from its header before it is decoded (as :func:`read_tif`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DataError(f"{path}: image mode {im.mode}, {fmt.name} needs RGB")
            w, h = im.size
            check_values(path, f"{h}x{w} px x 3 bands", h * w * 3, np.uint8, limits)
            if check is not None:
                check(h, w)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as err:
        raise DataError(f"{path}: cannot be read as a JPEG or PNG image ({err})") from None
    return arr.transpose(2, 0, 1).copy()


def scan(root: Path, fmt: EuroSAT) -> list[tuple[Path, int, str]]:
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
        entries = f.read_text().split()
        if not entries and part == "test" and fmt.name.endswith("_source"):
            continue  # pretraining source sets have no test split
        if not entries:
            raise DataError(f"{f}: split file is empty (the {part} split holds no sample)")
        for line in entries:
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
