"""PASTIS (and the S2 part of PASTIS-R/-HD): Sentinel-2 time series of 128x128 patches.

Layout: ``DATA_S2/S2_<ID>.npy`` (T x 10 x 128 x 128, int16 reflectance x 10000, bands
B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, 38-61 dates), ``ANNOTATIONS/TARGET_<ID>.npy`` (3 x 128 x 128,
channel 0 the semantic class 0-19, 19 = void), ``metadata.geojson`` (ID_PATCH, Fold 1-5,
``dates-S2`` index -> YYYYMMDD).

The store keeps the time axis and the dates: ``image (sample, time, band, y, x)`` padded with
zeros to the longest series, ``dates (sample, time)`` as YYYYMMDD (0 = padding), ``n_dates``,
``fold``, ``label (sample, y, x)``. Splits come from folds (default train 1-3, val 4, test 5;
``folds`` option for the five-fold rotation). Dates must be strictly increasing; a target label
outside 0-19 is an error naming the file. Band statistics skip padded time steps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.download import Remote
from geopeft.data.sources.base import (
    DataError,
    Item,
    Sample,
    Source,
    check_side,
    check_values,
)
from geopeft.limits import DEFAULT, Limits

log = logging.getLogger(__name__)

BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
CLASSES: tuple[str, ...] = (
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
    "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
    "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard",
    "Mixed cereal", "Sorghum", "Void label",
)
VOID = 19
DEFAULT_FOLDS = {"train": [1, 2, 3], "val": [4], "test": [5]}
#: Patches per ``Fold`` of ``metadata.geojson`` (2,433 in all, the published count; folds 1-3 are
#: the 1,455 training patches of the default split). Unverified: not counted from the archive
#: here, the plan says so; a prepared store holds the real counts.
FOLD_SIZES: dict[int, int] = {1: 487, 2: 488, 3: 480, 4: 497, 5: 481}
FOLD_SIZES_SOURCE = ("patches per Fold of PASTIS's metadata.geojson (unverified; 2,433 in all, "
                     "the published count)")


def read_geojson(path: Path) -> list[dict[str, Any]]:
    """Patch id, fold and (strictly increasing) acquisition dates of every patch in ``metadata.geojson``."""
    if not path.is_file():
        raise DataError(f"{path}: metadata.geojson not found")
    try:
        feats = json.loads(path.read_text())["features"]
    except (json.JSONDecodeError, KeyError) as err:
        raise DataError(f"{path}: not a GeoJSON FeatureCollection ({err})") from None
    out = []
    for i, f in enumerate(feats):
        p = f.get("properties", {})
        for key in ("ID_PATCH", "Fold", "dates-S2"):
            if key not in p:
                which = f"patch {p['ID_PATCH']}" if "ID_PATCH" in p else f"feature {i}"
                raise DataError(f"{path}: {which} lacks property {key!r}")
        d = p["dates-S2"]
        if isinstance(d, str):
            d = json.loads(d)
        dates = [int(d[k]) for k in sorted(d, key=int)]
        if any(b <= a for a, b in zip(dates, dates[1:], strict=False)):
            raise DataError(f"{path}: patch {p['ID_PATCH']}: dates-S2 are not strictly increasing")
        try:
            fold = int(p["Fold"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: patch {p['ID_PATCH']} has Fold {p['Fold']!r}, not a fold "
                            f"number") from None
        out.append({"id": int(p["ID_PATCH"]), "fold": fold, "dates": dates})
    return out


class Pastis(Source):
    name = "pastis"
    classes = CLASSES
    task = "segmentation"
    file_bands = BANDS
    dims = ("time", "band", "y", "x")
    label_dims = ("y", "x")
    layout = "PASTIS"
    embedded = True
    world = "geopeft.data.synthetic_pastis:write_world"
    fixtures = "geopeft.data.synthetic_pastis:write_fixtures"
    fixture_samples = 10  # two per fold
    native_size = 128
    dtype = np.dtype(np.int16)
    remotes = (
        Remote("PASTIS.zip", ("https://zenodo.org/records/5012942/files/PASTIS.zip?download=1",)),
    )

    published_splits_source = FOLD_SIZES_SOURCE

    def split_sizes(self, options: dict[str, Any]) -> dict[str, int] | None:
        """Patches per split from :data:`FOLD_SIZES` and the ``folds`` option (default
        :data:`DEFAULT_FOLDS`)."""
        folds = options.get("folds") or DEFAULT_FOLDS
        return {part: sum(FOLD_SIZES[int(f)] for f in folds.get(part, [])) for part in
                ("train", "val", "test")}

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        base = raw / self.layout if (raw / self.layout / "metadata.geojson").is_file() else raw
        meta = read_geojson(base / "metadata.geojson")
        folds = options.get("folds") or DEFAULT_FOLDS
        split_of = {f: part for part, fs in folds.items() for f in fs}
        options.setdefault("t_max", max((len(m["dates"]) for m in meta), default=0))
        size = self.declared_size(base)
        items, left_out = [], []
        for m in sorted(meta, key=lambda m: m["id"]):
            if m["fold"] not in FOLD_SIZES:  # PASTIS has five folds; another is a broken file
                raise DataError(f"{base / 'metadata.geojson'}: patch {m['id']} has Fold "
                                f"{m['fold']}; PASTIS's folds are {sorted(FOLD_SIZES)}")
            if m["fold"] not in split_of:  # a fold the study's folds leave out of every split
                left_out.append(m["fold"])
                continue
            items.append(Item(str(m["id"]), split_of[m["fold"]], base, None,
                              {"fold": m["fold"], "dates": m["dates"], "size": size}))
        if left_out:
            log.warning("%s: %d patches of fold(s) %s are in no split (data.options.folds %s); "
                        "left out", base, len(left_out), sorted(set(left_out)), folds)
        for part in ("train", "val", "test"):
            if part in folds and not any(i.split == part for i in items):
                raise DataError(f"{base}: fold(s) {folds[part]} of the {part} split hold no patch")
        return items

    max_dates = 61  # 38-61 dates per series (the published archive and the synthetic world)
    input_format = "a PASTIS `S2_<ID>.npy` (T x 10 x H x W, int16) and its T dates"
    input_needs_dates = True
    input_metadata = "PASTIS metadata.geojson, whose dates-S2 give each S2_<ID>.npy's dates"

    def input_dates(self, metadata: Path, samples: Sequence[Path]) -> list[list[int]]:
        """Each ``S2_<ID>.npy``'s ``dates-S2`` in ``metadata.geojson`` (the patch id is the file
        name's ``<ID>``)."""
        by_id = {str(m["id"]): m["dates"] for m in read_geojson(Path(metadata))}
        out = []
        for f in samples:
            pid = Path(f).stem.removeprefix("S2_")
            if pid not in by_id:
                raise DataError(f"{f}: patch {pid} is not in {metadata}")
            out.append(by_id[pid])
        return out

    def example_input(self, item: Item, cache: Path) -> tuple[Path, list[int] | None]:
        """The patch's ``DATA_S2/S2_<ID>.npy`` in the dataset folder, with its dates."""
        return item.path / "DATA_S2" / f"S2_{item.name}.npy", list(item.extra.get("dates", []))

    def read_input(self, path: Path, bands: list[str], options: dict[str, Any],
                   dates: list[int] | None = None, *, limits: Limits = DEFAULT,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int] | None]:
        """A patch's ``S2_<ID>.npy`` (T x 10 x H x W, int16) with its T dates (YYYYMMDD, as
        ``dates-S2`` of metadata.geojson lists them); mapped, its shape checked before a value
        is read."""
        path = Path(path)
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: cannot be read as .npy ({err})") from None
        if data.ndim != 4 or data.shape[1] != len(BANDS):
            raise DataError(f"{path}: shape {data.shape}, a PASTIS patch is T x {len(BANDS)} x H x "
                            f"W ({' '.join(BANDS)})")
        if data.dtype != self.dtype:
            raise DataError(f"{path}: dtype {data.dtype}, PASTIS DATA_S2 is int16 (reflectance "
                            f"x 10000); convert it explicitly, nothing is cast")
        check_values(path, f"shape {data.shape}", data.size, data.dtype, limits)
        check_side(path, data.shape[2:], size, self.name)
        if not dates:
            raise DataError(f"{path}: a time series needs its {data.shape[0]} acquisition dates "
                            f"(YYYYMMDD, as metadata.geojson's dates-S2)")
        dates = [int(d) for d in dates]
        if len(dates) != data.shape[0]:
            raise DataError(f"{path}: {data.shape[0]} images but {len(dates)} dates")
        for d in dates:
            if not (19000101 <= d <= 21001231 and 1 <= d // 100 % 100 <= 12 and 1 <= d % 100 <= 31):
                raise DataError(f"{path}: date {d} is not YYYYMMDD")
        if any(b <= a for a, b in zip(dates, dates[1:], strict=False)):
            raise DataError(f"{path}: the dates are not strictly increasing")
        return np.asarray(data[:, self.check_bands(bands)]), dates

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        sid = item.name
        data_path = item.path / "DATA_S2" / f"S2_{sid}.npy"
        target_path = item.path / "ANNOTATIONS" / f"TARGET_{sid}.npy"
        for p in (data_path, target_path):
            if not p.is_file():
                raise DataError(f"{p}: missing")
        try:
            data = np.load(data_path, mmap_mode="r")  # mapped: nothing read before the checks
            target = np.load(target_path, mmap_mode="r")
        except ValueError as err:
            raise DataError(f"{data_path}: cannot be read as .npy ({err})") from None
        check_values(data_path, f"shape {data.shape}", data.size, data.dtype, limits)
        check_values(target_path, f"shape {target.shape}", target.size, target.dtype, limits)
        target = np.array(target)  # the labels, small once checked
        dates = item.extra["dates"]
        size = item.extra.get("size")
        hw = "H x W" if size is None else f"{size} x {size}"
        if (data.ndim != 4 or data.shape[1] != len(BANDS)
                or (size is not None and data.shape[2:] != (size, size))):
            raise DataError(f"{data_path}: shape {data.shape}, PASTIS DATA_S2 is T x 10 x {hw}")
        if data.dtype != self.dtype:
            raise DataError(f"{data_path}: dtype {data.dtype}, PASTIS DATA_S2 is int16 "
                            f"(reflectance x 10000); convert it explicitly, nothing is cast")
        if data.shape[0] != len(dates):
            raise DataError(f"{data_path}: {data.shape[0]} dates, metadata.geojson lists "
                            f"{len(dates)}")
        sem = target[0] if target.ndim == 3 else target
        if sem.shape != data.shape[2:]:
            raise DataError(f"{target_path}: label shape {sem.shape}, the image is "
                            f"{data.shape[2]} x {data.shape[3]}")
        if sem.min() < 0 or sem.max() > VOID:
            raise DataError(f"{target_path}: labels outside 0-{VOID} ({sem.min()}..{sem.max()})")
        t_max = int(options.get("t_max") or data.shape[0])
        img = np.zeros((t_max, len(bands), *data.shape[2:]), np.int16)
        img[: data.shape[0]] = np.asarray(data)[:, self.check_bands(bands)]
        valid = np.zeros(t_max, bool)
        valid[: data.shape[0]] = True
        return Sample(img, sem.astype(np.uint8), valid)

    def extra_arrays(self, items: list[Item], kept: list[str],
                     options: dict[str, Any]) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
        by = {i.name: i for i in items}
        t_max = int(options["t_max"])
        dates = np.zeros((len(kept), t_max), np.int32)
        for k, name in enumerate(kept):
            d = by[name].extra["dates"]
            dates[k, : len(d)] = d
        n = (dates > 0).sum(1).astype(np.int16)
        fold = np.array([by[n_].extra["fold"] for n_ in kept], np.int8)
        return {"dates": (dates, ("sample", "time")), "n_dates": (n, ("sample",)),
                "fold": (fold, ("sample",))}

    def extra_attrs(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"void_class": VOID, "folds": options.get("folds") or DEFAULT_FOLDS,
                "date_format": "YYYYMMDD, 0 = padding"}


SOURCES: dict[str, Source] = {"pastis": Pastis()}
