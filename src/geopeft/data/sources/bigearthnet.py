"""BigEarthNet-S2 v2.0 (reBEN) and v1.0: 120x120 patches, 12 L2A bands, 19-class multi-label.

v2 layout: ``BigEarthNet-S2/<tile product>/<tile product>_<row>_<col>/<patch_id>_<band>.tif``
with ``metadata.parquet`` (patch_id, labels as 19-class names, split train/validation/test, ...)
and ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` (excluded).
v1 layout: ``BigEarthNet-v1.0/<patch>/<patch>_<band>.tif`` + ``<patch>_labels_metadata.json``
with 43 CORINE labels, mapped to the 19 classes (Sumbul et al. 2021); v1 has no official split
file in the archive, so the split comes from v2's metadata (``s2v1_name``) when given, else a
seeded 50/25/25 draw.

Bands are stored per file at their native resolution (B02 B03 B04 B08: 120x120 at 10 m; B05 B06
B07 B8A B11 B12: 60x60 at 20 m; B01 B09: 20x20 at 60 m) and resampled on read to the 10 m grid
of 120x120 (``resampling``: nearest, bilinear or cubic; default bilinear). Labels are multi-hot
over :data:`CLASSES` in the original order below.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.download import Remote
from geopeft.data.sources.base import DataError, Item, Sample, Source
from geopeft.limits import DEFAULT, Limits

#: ESA order of the 12 L2A bands.
BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                          "B11", "B12")
SIZES = {"B02": 120, "B03": 120, "B04": 120, "B08": 120, "B05": 60, "B06": 60, "B07": 60,
         "B8A": 60, "B11": 60, "B12": 60, "B01": 20, "B09": 20}
log = logging.getLogger(__name__)
#: The 19 classes in their original order.
CLASSES: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)
#: CORINE level-3 names of the 43 v1 labels, with their codes.
CLC43: dict[str, int] = {
    "Continuous urban fabric": 111, "Discontinuous urban fabric": 112,
    "Industrial or commercial units": 121, "Road and rail networks and associated land": 122,
    "Port areas": 123, "Airports": 124, "Mineral extraction sites": 131, "Dump sites": 132,
    "Construction sites": 133, "Green urban areas": 141, "Sport and leisure facilities": 142,
    "Non-irrigated arable land": 211, "Permanently irrigated land": 212, "Rice fields": 213,
    "Vineyards": 221, "Fruit trees and berry plantations": 222, "Olive groves": 223,
    "Pastures": 231, "Annual crops associated with permanent crops": 241,
    "Complex cultivation patterns": 242,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": 243,
    "Agro-forestry areas": 244, "Broad-leaved forest": 311, "Coniferous forest": 312,
    "Mixed forest": 313, "Natural grassland": 321, "Moors and heathland": 322,
    "Sclerophyllous vegetation": 323, "Transitional woodland/shrub": 324,
    "Beaches, dunes, sands": 331, "Bare rock": 332, "Sparsely vegetated areas": 333,
    "Burnt areas": 334, "Inland marshes": 411, "Peatbogs": 412, "Salt marshes": 421,
    "Salines": 422, "Intertidal flats": 423, "Water courses": 511, "Water bodies": 512,
    "Coastal lagoons": 521, "Estuaries": 522, "Sea and ocean": 523,
}
#: CORINE code -> 19-class index; codes absent here are dropped (122-142 but 121, 332, 334, 423).
CODE_TO_19: dict[int, int] = {
    **dict.fromkeys((111, 112), 0), 121: 1, **dict.fromkeys((211, 212, 213), 2),
    **dict.fromkeys((221, 222, 223, 241), 3), 231: 4, 242: 5, 243: 6, 244: 7, 311: 8, 312: 9,
    313: 10, **dict.fromkeys((321, 333), 11), **dict.fromkeys((322, 323), 12), 324: 13, 331: 14,
    **dict.fromkeys((411, 412), 15), **dict.fromkeys((421, 422), 16),
    **dict.fromkeys((511, 512), 17), **dict.fromkeys((521, 522, 523), 18),
}
METADATA_COLUMNS = ("patch_id", "labels", "split")
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
_Z2 = "https://zenodo.org/records/10891137/files"


def labels43_to_19(names: list[str], where: str = "") -> np.ndarray:
    """Multi-hot (19,) from v1 CORINE label names; unknown names are an error."""
    out = np.zeros(len(CLASSES), np.uint8)
    for n in names:
        if n not in CLC43:
            raise DataError(f"{where}: label {n!r} is not one of the 43 BigEarthNet v1 labels")
        idx = CODE_TO_19.get(CLC43[n])
        if idx is not None:
            out[idx] = 1
    return out


def labels19(names: list[str], where: str = "") -> np.ndarray:
    """The multi-hot vector (19 classes) of a patch's class names; ``where`` names it in errors."""
    out = np.zeros(len(CLASSES), np.uint8)
    for n in names:
        if n not in CLASSES:
            raise DataError(f"{where}: label {n!r} is not one of the 19 BigEarthNet classes")
        out[CLASSES.index(n)] = 1
    return out


def read_metadata(path: Path, exclude: Path | None = None,
                  columns: tuple[str, ...] = METADATA_COLUMNS) -> Any:
    """metadata.parquet without snow/cloud/shadow patches; ``columns`` checked."""
    import pandas as pd

    if not Path(path).is_file():
        raise DataError(f"{path}: BigEarthNet v2 metadata.parquet not found")
    try:
        meta = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types
        raise DataError(f"{path}: cannot be read as parquet ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: not a BigEarthNet v2 metadata file: missing column(s) "
                        f"{missing}; has {list(meta.columns)}")
    drop = np.zeros(len(meta), bool)
    for col in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
        if col in meta.columns:
            drop |= meta[col].fillna(False).to_numpy(bool)
    if exclude is not None and Path(exclude).is_file():
        try:
            bad = set(pd.read_parquet(exclude, columns=["patch_id"]).patch_id)
        except Exception as err:  # pyarrow raises several types
            raise DataError(f"{exclude}: no readable patch_id column ({type(err).__name__}: "
                            f"{err})") from None
        drop |= meta.patch_id.isin(bad).to_numpy()
    return meta[~drop].reset_index(drop=True)


def read_bands(folder: Path, stem: str, bands: list[str], size: int, resampling: str) -> np.ndarray:
    """Read ``<folder>/<stem>_<band>.tif`` for each band, resampled to ``size`` x ``size``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError

    method = getattr(Resampling, resampling)
    out = np.empty((len(bands), size, size), np.uint16)
    for i, band in enumerate(bands):
        path = folder / f"{stem}_{band}.tif"
        if not path.is_file():
            raise DataError(f"{folder}: band {band} missing ({path.name})")
        try:
            with rasterio.open(path) as src:
                native = SIZES[band]
                if src.shape != (native, native):
                    raise DataError(f"{path}: size {src.shape[0]}x{src.shape[1]}, {band} is "
                                    f"{native}x{native} in BigEarthNet")
                if src.count != 1:
                    raise DataError(f"{path}: {src.count} bands; a BigEarthNet band file holds "
                                    f"one band ({band})")
                if src.dtypes[0] != "uint16":
                    raise DataError(f"{path}: dtype {src.dtypes[0]}, expected uint16")
                out[i] = src.read(1, out_shape=(size, size), resampling=method)
        except RasterioIOError as err:
            raise DataError(f"{path}: cannot be read as GeoTIFF ({err})") from None
    return out


def patch_stem(folder: Path) -> str:
    """The patch id of a folder of band files ``<patch_id>_<band>.tif`` (one patch only)."""
    return _stem([f.name for f in folder.iterdir()], folder)


def _stem(names: list[str], where: Path) -> str:
    """The one patch id of band file names ``<patch_id>_<band>.tif`` found in ``where``."""
    import re

    pattern = re.compile(r"^(.+)_(" + "|".join(BANDS) + r")\.tif$")
    stems = {m.group(1) for name in names if (m := pattern.match(name))}
    if len(stems) != 1:
        found = f"patches {sorted(stems)[:3]}" if stems else "no <patch>_<band>.tif file"
        raise DataError(f"{where}: a BigEarthNet patch is one folder of <patch>_<band>.tif "
                        f"files ({', '.join(BANDS)}); found {found}")
    return stems.pop()


def unpack_patch(archive: Path, dest: Path, bands: list[str], max_bytes: int) -> str:
    """The files of ``bands`` of a zipped patch, extracted flat into ``dest`` (member paths
    dropped, so nothing lands outside it), and nothing else; returns the patch id.

    Args:
        archive: the zipped patch.
        dest: the folder to extract into.
        bands: the bands whose files are extracted.
        max_bytes: the most they may unpack to (``limits.max_upload_extract_bytes``): checked
            on their declared sizes and the free disk space before writing, and as written.

    Raises:
        DataError: not a zip, not one patch, or over the limit or the free disk space.
    """
    import os
    import zipfile

    from geopeft.data.extract import ArchiveError, Budget, check_size

    limit = "limits.max_upload_extract_bytes"
    try:
        with zipfile.ZipFile(archive) as z:
            files = {Path(i.filename).name: i for i in z.infolist() if not i.is_dir()}
            stem = _stem(list(files), archive)
            needed = [(name, files[name]) for b in bands if (name := f"{stem}_{b}.tif") in files]
            check_size(archive, sum(i.file_size for _, i in needed), dest, max_bytes, limit)
            budget = Budget(archive, max_bytes, limit)
            for name, info in needed:
                fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o644)
                try:
                    with z.open(info) as src:
                        budget.copy(name, src, fd, dest)
                finally:
                    os.close(fd)
    except ArchiveError as err:
        raise DataError(str(err)) from None
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: cannot be read as a zip archive ({err})") from None
    return stem


class _BigEarthNet(Source):
    """What v1 and v2 share: classes, bands, multi-hot labels, per-band files of a patch."""

    classes = CLASSES
    task = "multilabel"
    file_bands = BANDS
    label_dims = ("class",)
    native_size = 120  # the 10 m bands; the 20 m and 60 m ones are resampled to it
    input_format = "a BigEarthNet-S2 patch: its per-band GeoTIFFs in a `.zip`"

    def read_input(self, path: Path, bands: list[str], options: dict[str, Any],
                   dates: list[int] | None = None, *, limits: Limits = DEFAULT,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int] | None]:
        """A patch as published: its folder of per-band GeoTIFFs, or that folder zipped; the
        bands resampled to the study's side (``data.options.size``) as preparation does. Each
        band file's side is checked against BigEarthNet's from its header before it is read,
        which keeps it far under ``limits``."""
        import tempfile

        from geopeft import limits

        path = Path(path)
        size, resampling = int(options.get("size", 120)), options.get("resampling", "bilinear")
        self.check_bands(bands)
        if path.is_dir():
            return read_bands(path, patch_stem(path), bands, size, resampling), None
        if path.suffix.lower() != ".zip":
            raise DataError(f"{path}: a BigEarthNet patch is a folder of per-band GeoTIFFs or "
                            f"that folder as a .zip")
        with tempfile.TemporaryDirectory(prefix="geopeft-patch-") as tmp:
            folder = Path(tmp)
            stem = unpack_patch(path, folder, bands, limits.DEFAULT.max_upload_extract_bytes)
            try:
                return read_bands(folder, stem, bands, size, resampling), None
            except DataError as err:  # name the archive, not the temporary folder
                raise DataError(str(err).replace(str(folder), str(path))) from None

    def example_input(self, item: Item, cache: Path) -> tuple[Path, list[int] | None]:
        """The patch folder zipped into ``cache`` (uploads are files)."""
        if not item.path.is_dir():
            return item.path, None
        import shutil

        return Path(shutil.make_archive(str(Path(cache) / item.name), "zip", item.path)), None

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        if not item.path.is_dir():
            raise DataError(f"{item.path}: patch folder missing")
        img = read_bands(item.path, item.name, bands, int(options.get("size", 120)),
                         options.get("resampling", "bilinear"))
        return Sample(img, item.label)


class BigEarthNetV2(_BigEarthNet):
    name = "bigearthnet_s2"
    layout = "BigEarthNet-S2"
    embedded = True
    world = "geopeft.data.synthetic_bigearthnet:write_world"
    fixtures = "geopeft.data.synthetic_bigearthnet:write_fixtures"
    fixture_samples = 24
    remotes = (
        Remote("BigEarthNet-S2.tar.zst", (f"{_Z2}/BigEarthNet-S2.tar.zst?download=1",),
               md5="2245ed2d1a93f6ce637d839bc856396e", size=63_251_710_377),
        Remote("metadata.parquet", (f"{_Z2}/metadata.parquet?download=1",),
               md5="55687065e77b6d0b0f1ff604a6e7b49c", size=3_616_349),
        Remote("metadata_for_patches_with_snow_cloud_or_shadow.parquet",
               (f"{_Z2}/metadata_for_patches_with_snow_cloud_or_shadow.parquet?download=1",),
               md5="fe31856f4986d446c9468b59d6387c91", size=710_162),
    )

    #: Patches per split of v2.0's metadata.parquet (md5 55687065e77b6d0b0f1ff604a6e7b49c),
    #: counted from its ``split`` column: 480,038 patches.
    published_splits = {"train": 237_871, "val": 122_342, "test": 119_825}
    published_splits_source = ("the split column of BigEarthNet v2.0's metadata.parquet (md5 "
                               "55687065...), counted")

    def split_sizes(self, options: dict[str, Any]) -> dict[str, int] | None:
        """The published split; unknown when ``data.options.limit`` keeps only the first patches."""
        return None if options.get("limit") else super().split_sizes(options)

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        meta = read_metadata(raw / "metadata.parquet",
                             raw / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
        base = raw / "BigEarthNet-S2"
        if not base.is_dir():
            raise DataError(f"{base}: patch folder not found")
        items = []
        for pid, labels, split in zip(meta.patch_id, meta.labels, meta.split, strict=True):
            if split not in SPLIT_NAMES:
                raise DataError(f"{raw / 'metadata.parquet'}: patch {pid} has split {split!r}")
            tile = pid.rsplit("_", 2)[0]
            items.append(Item(pid, SPLIT_NAMES[split], base / tile / pid,
                              labels19(list(labels), f"{raw / 'metadata.parquet'}: patch {pid}")))
        limit = options.get("limit")
        return items[: int(limit)] if limit else items


class BigEarthNetV1(_BigEarthNet):
    name = "bigearthnet_s2_v1"
    input_format = "a BigEarthNet-S2 v1 patch: its per-band GeoTIFFs in a `.zip`"
    layout = "BigEarthNet-v1.0"
    remotes = (
        Remote("BigEarthNet-S2-v1.0.tar.gz",
               ("https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz?download=1",),
               md5="5a64e9ce38deb036a435a7b59494924c"),
    )

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        base = raw / self.layout if (raw / self.layout).is_dir() else raw
        folders = sorted(p for p in base.iterdir() if p.is_dir())
        if not folders:
            raise DataError(f"{base}: no BigEarthNet v1 patch folders")
        split_of: dict[str, str] | None = None
        meta_path = options.get("v2_metadata")
        if meta_path:
            split_of = _v2_splits(Path(meta_path))
        rng = np.random.default_rng(int(options.get("split_seed", 0)))
        items, excluded = [], []
        for f in folders:
            if split_of is not None and f.name not in split_of:
                excluded.append(f.name)
                continue
            meta = f / f"{f.name}_labels_metadata.json"
            if not meta.is_file():
                raise DataError(f"{f}: {meta.name} missing")
            try:
                labels = json.loads(meta.read_text())["labels"]
            except (json.JSONDecodeError, KeyError) as err:
                raise DataError(f"{meta}: no readable 'labels' ({err})") from None
            split = split_of[f.name] if split_of is not None else str(
                rng.choice(["train", "train", "val", "test"]))
            items.append(Item(f.name, split, f, labels43_to_19(labels, str(meta))))
        if excluded:
            log.warning("%s: %d of %d v1 patches excluded, as in BigEarthNet v2 (not in %s: "
                        "seasonal snow, cloud or shadow, or dropped): %s", self.name, len(excluded),
                        len(folders), meta_path, ", ".join(excluded))
        if not items:
            raise DataError(f"{base}: none of the {len(folders)} v1 patches is in {meta_path}")
        return items


def _v2_splits(path: Path) -> dict[str, str]:
    """v1 patch name -> split of every patch BigEarthNet v2 keeps (``data.options.v2_metadata``,
    the v2 ``metadata.parquet``; its snow/cloud/shadow file beside it, when present, is excluded)."""
    if not path.is_file():
        raise DataError(f"data.options.v2_metadata: {path} not found (the BigEarthNet v2 "
                        f"metadata.parquet, e.g. from the v2 download)")
    meta = read_metadata(path, path.with_name("metadata_for_patches_with_snow_cloud_or_shadow.parquet"),
                         columns=("s2v1_name", "split"))
    bad = sorted(set(meta.split) - set(SPLIT_NAMES))
    if bad:
        raise DataError(f"{path}: split value(s) {bad} are not train/validation/test")
    return dict(zip(meta.s2v1_name, meta.split.map(SPLIT_NAMES), strict=True))


SOURCES: dict[str, Source] = {"bigearthnet_s2": BigEarthNetV2(), "bigearthnet_s2_v1": BigEarthNetV1()}
