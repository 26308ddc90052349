"""Your own data, declared in the study file (``data.generic``): raster chips listed in a table.

A folder (``data.raw_dir``) holds chips that rasterio reads (GeoTIFF or any GDAL raster), all of
one size, band count, dtype and CRS, and a table (CSV, Parquet or GeoJSON) with a row per chip:
its path (relative to the folder), its label(s), and optionally its split and its coordinates.
Labels: one column of class names (multi-class), the same with a separator, or one 0/1 column per
class (multi-label). Bands have the user's names in file order, each mapped to its Sentinel-2 name
where it has one (``band_map``), so that pretrained encoders get the right channels; a study
selects bands by their Sentinel-2 names.

**Segmentation**: each sample has a mask raster (one band of class indices 0, 1, ... in the
order of ``classes``; ``ignore_value`` marks unlabelled pixels, stored as the void class that
loss and metrics leave out; any other value is an error naming the mask), from the table
(``mask_column``) or paired by name (``mask_pattern``). Its sample is one image or a **time
series**: per-date rasters, one table row each, grouped by ``sample_column``, or one raster
stacking the dates (dates x bands, date-major). Dates come from ``date_column``, from the file
name (``date_pattern``) or from each raster's ``TIFFTAG_DATETIME``; a sample without dates is
one image (its date stored as 0, unknown). The store then has PASTIS's layout: ``image (sample,
time, band, y, x)`` padded to the longest series, ``dates``, ``n_dates``, ``label (sample, y,
x)``, ``void_class``; the time-series models (U-TAE, UPerNet + L-TAE) train on it.

Splits come from the table's split column, or are made here: **stratified** (each class's
samples shuffled with the seed, then cut by the fractions; multi-label by the rarest positive
class; segmentation by the mask's most frequent class) or **spatially blocked** (samples grouped
into square blocks of ``split.block`` metres of their coordinates, from the table or else the
centre of each chip's bounds, whole blocks assigned to splits, so that neighbouring chips never
straddle train and test). Every file is checked as it is read: a missing or unreadable file is named with
its table row, a chip unlike the first is named with what was expected and from which file.

The declaration travels with the data: preparation writes it into the store's attributes
(``generic``), so training, evaluation, ``geopeft predict`` and the app know the dataset from the
store or the run alone; the workflow's jobs also get the study's declarations in the environment
(:data:`ENV`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import S2_BANDS
from geopeft.data.sources.base import (
    SPLITS,
    DataError,
    Item,
    Sample,
    Source,
    check_values,
)
from geopeft.limits import DEFAULT, Limits

#: The environment variable holding the study's declared datasets (JSON: name -> declaration),
#: set by the workflow for its jobs.
ENV = "GEOPEFT_DATASETS"
#: Tasks a generic source may declare.
TASKS = ("multiclass", "multilabel", "segmentation")
#: The name of the class a segmentation dataset's ignored pixels get (``ignore_value``).
VOID = "void"
#: What joins the dates of a raster stacking several (``date_column``).
DATE_SEPARATOR = ";"
#: The keys only a segmentation task takes (masks, and the dates of time series).
SEGMENTATION_KEYS = ("mask_column", "mask_pattern", "ignore_value", "sample_column",
                     "date_column", "date_pattern")
#: How a generic source's splits are made.
SPLIT_METHODS = ("table", "stratified", "spatial")
#: The tables a generic source reads, by file suffix.
TABLE_FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def _where(name: str, key: str) -> str:
    return f"data.generic.{key}" if name == "" else f"{name}: data.generic.{key}"


class GenericSource(Source):
    """A dataset declared in a study (``data.generic``): see the module's text.

    Args:
        name: the dataset's name (``data.dataset``), not one of the built-in datasets.
        decl: the declaration, as the schema fills it (:class:`geopeft.settings.data.Generic`).

    Raises:
        DataError: the declaration contradicts itself (named by its key).
    """

    def __init__(self, name: str, decl: dict[str, Any]):
        self.name = name
        self.decl = json.loads(json.dumps(decl))  # a plain copy (the store keeps it)
        d = self.decl
        self.task = d["task"]
        if self.task not in TASKS:
            raise DataError(f"{_where(name, 'task')}: {self.task!r} is not one of {TASKS}")
        self.classes = tuple(d["classes"])
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise DataError(f"{_where(name, 'classes')}: two or more distinct class names")
        self.segmentation = self.task == "segmentation"
        #: the void class of a segmentation dataset (its ignored pixels): the last
        self.void_class: int | None = None
        if self.segmentation:
            self._init_segmentation(name, d)
        elif any(d.get(k) is not None for k in SEGMENTATION_KEYS):
            key = next(k for k in SEGMENTATION_KEYS if d.get(k) is not None)
            raise DataError(f"{_where(name, key)}: is for a segmentation task (the task is "
                            f"{self.task})")
        if d.get("date_pattern"):
            try:
                self.date_re: re.Pattern | None = re.compile(d["date_pattern"])
            except re.error as err:
                raise DataError(f"{_where(name, 'date_pattern')}: {d['date_pattern']!r} is not a "
                                f"regular expression ({err})") from None
            if self.date_re.groups < 1:
                raise DataError(f"{_where(name, 'date_pattern')}: {d['date_pattern']!r} has no "
                                f"group around the date")
        else:
            self.date_re = None
        bands = list(d["bands"])
        mapping = dict(d.get("band_map") or {})
        unknown = sorted(set(mapping) - set(bands))
        if unknown:
            raise DataError(f"{_where(name, 'band_map')}: {unknown} are not among "
                            f"data.generic.bands ({', '.join(bands)})")
        bad = {k: v for k, v in mapping.items() if v not in S2_BANDS}
        if bad:
            raise DataError(f"{_where(name, 'band_map')}: {bad} map to no Sentinel-2 band "
                            f"({', '.join(S2_BANDS)})")
        self.file_bands = tuple(mapping.get(b, b) for b in bands)
        if len(set(self.file_bands)) != len(self.file_bands):
            raise DataError(f"{_where(name, 'band_map')}: two bands map to one name "
                            f"({', '.join(self.file_bands)})")
        self.user_bands = tuple(bands)
        self.value_scale = float(d["value_scale"])
        self.dtype = d.get("dtype") or "uint16"
        self.native_size = d.get("size")
        self.label_dims = (("class",) if self.task == "multilabel" else ("y", "x")
                           if self.segmentation else ())
        self.embedded = False
        self.study_dataset = True
        self.input_format = (f"a raster chip of {len(bands)} bands "
                             f"({', '.join(bands)}), as the dataset's own")
        if self.segmentation:
            self.input_format = (f"a raster of {len(bands)} bands ({', '.join(bands)}), or of "
                                 f"dates x {len(bands)} (date-major) with its dates")
        split = d["split"]
        #: how the splits are made: split.method, else table when the table has a split column
        self.split_method = split.get("method") or ("table" if d.get("split_column")
                                                    else "stratified")
        if self.split_method == "table" and not d.get("split_column"):
            raise DataError(f"{_where(name, 'split.method')}: table needs data.generic."
                            f"split_column (the column of train / val / test)")
        if bool(d.get("x_column")) != bool(d.get("y_column")):
            raise DataError(f"{_where(name, 'x_column')}: x_column and y_column go together "
                            f"(else each chip's bounds give its centre)")
        if self.task == "multiclass" and d.get("label_columns"):
            raise DataError(f"{_where(name, 'label_columns')}: one column per class is for a "
                            f"multilabel task; a multiclass task names its label_column")

    def _init_segmentation(self, name: str, d: dict[str, Any]) -> None:
        if bool(d.get("mask_column")) == bool(d.get("mask_pattern")):
            raise DataError(f"{_where(name, 'mask_column')}: a segmentation task needs its masks: "
                            f"mask_column (the table's column of mask paths) or mask_pattern "
                            f"(e.g. masks/{{stem}}.tif), one of them")
        if d.get("label_columns"):
            raise DataError(f"{_where(name, 'label_columns')}: a segmentation task's labels are "
                            f"its masks (mask_column or mask_pattern)")
        if VOID in self.classes:
            raise DataError(f"{_where(name, 'classes')}: {VOID!r} is the name of the ignored "
                            f"pixels' class; name yours otherwise")
        if len(self.classes) > 254:
            raise DataError(f"{_where(name, 'classes')}: {len(self.classes)} classes; a mask "
                            f"holds at most 254 and the void class")
        ignore = d.get("ignore_value")
        if ignore is not None and int(ignore) < len(self.classes):
            raise DataError(f"{_where(name, 'ignore_value')}: {ignore} is the index of class "
                            f"{self.classes[int(ignore)]!r}; the ignored value is another")
        self.void_class = len(self.classes)
        self.classes = (*self.classes, VOID)
        self.dims = ("time", "band", "y", "x")
        # whether the samples have dates (predictions then need them): declared, or known
        # once scanned (TIFFTAG_DATETIME tags; a prepared store's declaration says ``dated``)
        self.input_needs_dates = bool(d.get("date_column") or d.get("date_pattern")
                                      or d.get("sample_column") or d.get("dated"))

    @property
    def band_aliases(self) -> dict[str, str]:
        """Your band names -> their Sentinel-2 names (``band_map``): a scene whose band
        descriptions are your names is read as the run selects its bands."""
        return {u: f for u, f in zip(self.user_bands, self.file_bands, strict=True) if u != f}

    def file_dates(self, files: Sequence[Path]) -> list[int] | None:
        """Each file's date as ``date_pattern`` finds it in its name (None: no pattern, or a
        name it does not match)."""
        if self.date_re is None:
            return None
        found = [self.date_re.search(Path(f).name) for f in files]
        if not all(found):
            return None
        return [parse_date(m.group(1), str(f)) for m, f in zip(found, files, strict=True)
                if m is not None]

    #: the folder the study reads it from (``data.raw_dir``), set when a study is validated:
    #: ``geopeft plan`` counts its splits there (:meth:`split_sizes`)
    raw: Path | None = None

    def split_sizes(self, options: dict[str, Any]) -> dict[str, int] | None:
        """Samples per split as the table and ``split`` make them in :attr:`raw` (for
        ``geopeft plan``); None when the folder is not known or cannot be read."""
        if self.raw is None:
            return None
        try:
            items = self.scan(self.raw, options)
        except DataError:
            return None
        self.published_splits_source = (f"{self.table_path(self.raw)} "
                                        f"({self.split_method} split)")
        return {part: sum(it.split == part for it in items) for part in SPLITS}

    # -- the table ------------------------------------------------------------------------------

    def table_path(self, raw: Path) -> Path:
        return Path(raw) / self.decl["table"]

    def read_table(self, raw: Path) -> list[dict[str, Any]]:
        """The table's rows (dicts), with ``_row``: its row number as a user counts it (the
        first data row is 1).

        Raises:
            DataError: naming the table: missing, unreadable, of an unknown format, or without a
                declared column.
        """
        path = self.table_path(raw)
        kind = TABLE_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{path}: data.generic.table must be one of "
                            f"{', '.join(sorted(TABLE_FORMATS))} ({path.suffix or 'no suffix'})")
        if not path.is_file():
            raise DataError(f"{path}: table not found (data.generic.table, under data.raw_dir)")
        try:
            if kind == "GeoJSON":
                rows = _geojson_rows(path, self.decl)
            else:
                import pandas as pd

                df = (pd.read_csv(path, dtype=str, keep_default_na=False) if kind == "CSV"
                      else pd.read_parquet(path))
                rows = df.to_dict("records")
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise DataError(f"{path}: cannot be read as {kind} ({err})") from None
        if not rows:
            raise DataError(f"{path}: the table has no rows")
        needed = [self.decl["path_column"]]
        if not self.segmentation:
            needed += (list(self.decl["label_columns"]) if self.decl.get("label_columns")
                       else [self.decl["label_column"]])
        needed += [self.decl[k] for k in ("split_column", "x_column", "y_column", "mask_column",
                                          "sample_column", "date_column") if self.decl.get(k)]
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (declared in "
                            f"data.generic; the table has {', '.join(map(str, rows[0]))})")
        for i, row in enumerate(rows, start=1):
            row["_row"] = i
        return rows

    def _label(self, row: dict[str, Any], where: str) -> Any:
        d = self.decl
        if self.task == "multiclass":
            value = str(row[d["label_column"]]).strip()
            if value not in self.classes:
                raise DataError(f"{where}: label {value!r} is not one of the declared classes "
                                f"(data.generic.classes: {', '.join(self.classes)})")
            return self.classes.index(value)
        hot = np.zeros(len(self.classes), np.uint8)
        if d.get("label_columns"):
            for i, col in enumerate(d["label_columns"]):
                value = str(row[col]).strip()
                if value not in ("0", "1", "0.0", "1.0", "True", "False", "true", "false"):
                    raise DataError(f"{where}: column {col!r} holds {value!r}, not 0 or 1")
                hot[i] = value in ("1", "1.0", "True", "true")
            return hot
        text = str(row[d["label_column"]])
        sep = d.get("label_separator") or ";"
        for value in (v.strip() for v in text.split(sep)):
            if not value:
                continue
            if value not in self.classes:
                raise DataError(f"{where}: label {value!r} is not one of the declared classes "
                                f"(data.generic.classes: {', '.join(self.classes)})")
            hot[self.classes.index(value)] = 1
        return hot

    # -- Source ---------------------------------------------------------------------------------

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        """Every row of the table as a sample (segmentation: every sample of the rows), its split
        given or made; rows are checked (file present, label declared, path not repeated) and
        named by their row on error."""
        raw = Path(raw)
        table = self.table_path(raw)
        rows = self.read_table(raw)
        d = self.decl
        items: list[Item] = []
        seen: dict[str, int] = {}
        for row in rows:
            where = f"{table}, row {row['_row']}"
            rel = str(row[d["path_column"]]).strip()
            if not rel:
                raise DataError(f"{where}: no path in column {d['path_column']!r}")
            key = os.path.normpath(rel)
            if key in seen:
                raise DataError(f"{where}: {rel} is listed twice (first in row {seen[key]})")
            seen[key] = row["_row"]
            path = raw / rel
            if not path.is_file():
                raise DataError(f"{where}: {path} not found")
            split = ""
            if self.split_method == "table":
                split = str(row[d["split_column"]]).strip()
                if split not in SPLITS:
                    raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)} "
                                    f"(column {d['split_column']!r})")
            xy = None
            if d.get("x_column"):
                try:
                    xy = (float(row[d["x_column"]]), float(row[d["y_column"]]))
                except (TypeError, ValueError):
                    if self.split_method == "spatial":
                        raise DataError(f"{where}: coordinates {row[d['x_column']]!r}, "
                                        f"{row[d['y_column']]!r} are not numbers") from None
            label = None if self.segmentation else self._label(row, where)
            items.append(Item(key, split, path, label,
                              {"row": row["_row"], "table": str(table), "xy": xy}))
        if self.segmentation:
            items = self._series(raw, items, rows, table)
            options.setdefault("t_max", max(len(it.extra["dates"]) for it in items))
        method = self.split_method
        if method != "table":
            fractions = tuple(d["split"]["fractions"])
            seed = int(d["split"]["seed"])
            if method == "stratified":
                labels = (np.array([self._dominant(it) for it in items]) if self.segmentation
                          else np.stack([np.asarray(it.label) for it in items]))
                assigned = stratified_split(labels, fractions, seed)
            else:
                xy = np.array([self._centre(it) for it in items], np.float64)
                assigned = spatial_split(xy, float(d["split"]["block"]), fractions, seed)
            for it, part in zip(items, assigned, strict=True):
                it.split = part
        for part in SPLITS:
            if not any(it.split == part for it in items):
                raise DataError(f"{table}: the {part} split holds no sample "
                                f"(data.generic.split: {method})")
        self.reference(items)
        return items

    def _centre(self, item: Item) -> tuple[float, float]:
        """A sample's coordinates: the table's, else the centre of its raster's bounds."""
        if item.extra.get("xy") is not None:
            return item.extra["xy"]
        import rasterio
        from rasterio.errors import RasterioIOError

        where = f"{item.extra['table']}, row {item.extra['row']}"
        try:
            with rasterio.open(item.path) as src:
                if src.crs is None or src.transform.is_identity:
                    raise DataError(f"{where}: {item.path} is not georeferenced; split.method "
                                    f"spatial needs its coordinates (data.generic.x_column, "
                                    f"y_column)")
                b = src.bounds
        except RasterioIOError as err:
            raise DataError(f"{where}: {item.path} cannot be read as a raster ({err})") from None
        return ((b.left + b.right) / 2, (b.bottom + b.top) / 2)

    # -- segmentation: masks and series ---------------------------------------------------------

    def _date(self, row: dict[str, Any], path: Path, where: str) -> list[int]:
        """A raster's dates (YYYYMMDD): the date column's (several for a stacked raster), the
        file name's (date_pattern), its TIFFTAG_DATETIME tag, or none (undated)."""
        d = self.decl
        if d.get("date_column"):
            text = str(row[d["date_column"]]).strip()
            parts = [t.strip() for t in text.split(DATE_SEPARATOR) if t.strip()]
            if not parts:
                raise DataError(f"{where}: no date in column {d['date_column']!r}")
            return [parse_date(t, f"{where}: column {d['date_column']!r}") for t in parts]
        if self.date_re is not None:
            m = self.date_re.search(path.name)
            if m is None:
                raise DataError(f"{where}: {path.name} has no date that data.generic."
                                f"date_pattern {self.date_re.pattern!r} finds")
            return [parse_date(m.group(1), f"{where}: {path.name}")]
        tag = raster_date(path, where)
        return [] if tag is None else [tag]

    def _mask_path(self, raw: Path, row: dict[str, Any], image: Path, sample: str,
                   where: str) -> Path:
        d = self.decl
        if d.get("mask_column"):
            rel = str(row[d["mask_column"]]).strip()
            if not rel:
                raise DataError(f"{where}: no mask in column {d['mask_column']!r}")
        else:
            try:
                rel = d["mask_pattern"].format(stem=image.stem, name=image.name, sample=sample)
            except (KeyError, IndexError, ValueError) as err:
                raise DataError(f"data.generic.mask_pattern: {d['mask_pattern']!r} cannot be "
                                f"filled ({err}; it may use {{stem}}, {{name}}, "
                                f"{{sample}})") from None
        path = raw / rel
        if not path.is_file():
            raise DataError(f"{where}: mask {path} not found")
        return path

    def _series(self, raw: Path, rows_items: list[Item], rows: list[dict[str, Any]],
                table: Path) -> list[Item]:
        """The samples of a segmentation table: each row its own (one image or a stacked
        series), or the rows of one ``sample_column`` value, ordered by date; the mask, split
        and coordinates of a sample's rows must agree."""
        d = self.decl
        groups: dict[str, list[tuple[Item, dict[str, Any]]]] = {}
        for it, row in zip(rows_items, rows, strict=True):
            sample = str(row[d["sample_column"]]).strip() if d.get("sample_column") else it.name
            if not sample:
                raise DataError(f"{table}, row {row['_row']}: no sample in column "
                                f"{d['sample_column']!r}")
            groups.setdefault(sample, []).append((it, row))
        out = []
        masks: dict[str, str] = {}
        for sample, members in groups.items():
            first, row0 = members[0]
            where0 = f"{table}, row {row0['_row']}"
            mask = self._mask_path(raw, row0, first.path, sample, where0)
            files, dates = [], []
            for it, row in members:
                where = f"{table}, row {row['_row']}"
                if self._mask_path(raw, row, it.path, sample, where) != mask:
                    raise DataError(f"{where}: sample {sample} has mask "
                                    f"{self._mask_path(raw, row, it.path, sample, where)}, its "
                                    f"row {row0['_row']} {mask}: one mask per sample")
                if it.split != first.split:
                    raise DataError(f"{where}: sample {sample} is in {it.split}, its row "
                                    f"{row0['_row']} in {first.split}: one split per sample")
                got = self._date(row, it.path, where)
                if len(members) > 1 and len(got) != 1:
                    raise DataError(f"{where}: {len(got)} dates for {it.path.name} of sample "
                                    f"{sample}; a series of per-date rasters takes one date per "
                                    f"row (data.generic.date_column, date_pattern, or each "
                                    f"raster's TIFFTAG_DATETIME tag)")
                files.append((it.path, row["_row"], len(got)))
                dates += got
            if len(files) > 1 or len(dates) > 1:
                order = np.argsort(dates, kind="stable")
                if any(dates[a] == dates[b] for a, b in zip(order, order[1:], strict=False)):
                    dup = next(dates[a] for a, b in zip(order, order[1:], strict=False)
                               if dates[a] == dates[b])
                    raise DataError(f"{where0}: sample {sample} has date {dup} twice")
                if len(files) > 1:
                    files = [files[i] for i in order]
                elif list(order) != list(range(len(dates))):
                    raise DataError(f"{where0}: the dates of {first.path.name} "
                                    f"({DATE_SEPARATOR.join(map(str, dates))}) are not in "
                                    f"increasing order, as its bands are stacked")
                dates = sorted(dates)
            if not dates:
                dates = [0]  # undated: one image, its date unknown
            key = str(mask)
            if key in masks:
                raise DataError(f"{where0}: mask {mask} is sample {masks[key]}'s too")
            masks[key] = sample
            out.append(Item(sample, first.split, first.path, mask,
                            {"row": row0["_row"], "table": str(table), "xy": first.extra["xy"],
                             "files": files, "dates": dates}))
        undated = [it for it in out if it.extra["dates"] == [0]]
        if undated and len(undated) < len(out):
            it = undated[0]
            raise DataError(f"{it.extra['table']}, row {it.extra['row']}: sample {it.name} has no "
                            f"date, others have: date every raster, or none")
        self.input_needs_dates = not undated
        return out

    def _dominant(self, item: Item) -> int:
        """The most frequent labelled class of a sample's mask (the stratum of its split)."""
        mask = self._read_mask(item, None)
        counts = np.bincount(mask.ravel(), minlength=len(self.classes))[: self.void_class]
        return int(counts.argmax())

    def _read_mask(self, item: Item, side: tuple[int, int] | None,
                   limits: Limits = DEFAULT) -> np.ndarray:
        """A sample's mask as class indices, its ignored value as the void class.

        Raises:
            DataError: naming the mask: unreadable, not one band of integers, another side than
                the image's, or values outside the classes (listed).
        """
        import rasterio
        from rasterio.errors import RasterioIOError

        path = Path(item.label)
        where = f"{item.extra.get('table', self.name)}, row {item.extra.get('row', '?')}"
        try:
            with rasterio.open(path) as src:
                if src.count != 1:
                    raise DataError(f"{where}: mask {path} has {src.count} bands, a mask has one "
                                    f"(class indices)")
                if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
                    raise DataError(f"{where}: mask {path} is {src.dtypes[0]}, not integers "
                                    f"(class indices)")
                check_values(path, f"{src.height}x{src.width} px", src.height * src.width,
                             src.dtypes[0], limits)
                if side is not None and (src.height, src.width) != tuple(side):
                    raise DataError(f"{where}: mask {path} is {src.height}x{src.width}, its image "
                                    f"{side[0]}x{side[1]}")
                values = src.read(1)
        except RasterioIOError as err:
            raise DataError(f"{where}: mask {path} cannot be read as a raster ({err})") from None
        n = self.void_class
        assert n is not None
        ignore = self.decl.get("ignore_value")
        out = values.astype(np.int64)
        if ignore is not None:
            out[values == int(ignore)] = n
        bad = np.unique(out[(out < 0) | (out > n) | ((out == n) & (values != (ignore or -1)))])
        if bad.size:
            named = ", ".join(f"{i}: {c}" for i, c in enumerate(self.classes[:n]))
            raise DataError(f"{where}: mask {path} holds values {bad[:8].tolist()} outside the "
                            f"classes ({named}" + (f"; ignored: {ignore}" if ignore is not None
                                                   else "; no data.generic.ignore_value") + ")")
        return out.astype(np.uint8)

    def _read_file(self, path: Path, limits: Limits, where: str,
                   check: Callable[[Any], None] | None = None, dates: int = 1) -> np.ndarray:
        """A raster's values (bands, H, W): ``dates`` x the dataset's bands, checked."""
        return self._read_raster(path, limits, where, check, dates)[0]

    def _read_raster(self, path: Path, limits: Limits, where: str,
                     check: Callable[[Any], None] | None = None,
                     dates: int = 1) -> tuple[np.ndarray, float | None]:
        """:meth:`_read_file`, and the raster's nodata value: ``data.generic.nodata``, else
        the raster's own (None: it has none)."""
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            with rasterio.open(path) as src:
                if src.count != dates * len(self.user_bands):
                    raise DataError(f"{where}: {path} has {src.count} bands, the dataset's "
                                    f"{len(self.user_bands)} ({', '.join(self.user_bands)})"
                                    + (f" x {dates} dates" if dates > 1 else ""))
                check_values(path, f"{src.height}x{src.width} px x {src.count} bands",
                             src.height * src.width * src.count, src.dtypes[0], limits)
                if check is not None:
                    check(src)
                declared = self.decl.get("nodata")
                return src.read(), (float(declared) if declared is not None else src.nodata)
        except RasterioIOError as err:
            raise DataError(f"{where}: {path} cannot be read as a raster ({err})") from None

    def _nodata(self, arr: np.ndarray, value: float | None, path: Path, where: str) -> np.ndarray:
        """The pixels (H, W) where every band of ``arr`` (..., bands, H, W) is ``value``
        (none when None), refused when they are more than ``data.generic.max_nodata`` of the
        raster."""
        if value is None:
            return np.zeros(arr.shape[-2:], bool)
        flat = arr.reshape(-1, *arr.shape[-2:])
        hit = np.isnan(flat) if np.isnan(value) else flat == value
        mask = hit.all(axis=0)
        share, most = float(mask.mean()), float(self.decl.get("max_nodata") or 0.0)
        if share > most:
            raise DataError(f"{where}: {path}: {share:.1%} of its pixels are nodata ({value:g} in "
                            f"every band), over data.generic.max_nodata {most:g}")
        return mask

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        """One chip, checked against the first chip read (:meth:`first_chip`) or the declared
        dtype and size; bands picked by their Sentinel-2 names."""
        ref = item.extra.get("reference")

        def checker(path: Path, where: str) -> Callable[[Any], None]:
            def check(src: Any) -> None:
                got = {"dtype": src.dtypes[0], "size": f"{src.height}x{src.width}",
                       "CRS": str(src.crs) if src.crs else "none"}
                for key, want in (ref or {}).items():
                    if got[key] != want[0]:
                        raise DataError(f"{where}: {path} has {key} {got[key]}, expected "
                                        f"{want[0]} ({want[1]})")
            return check

        picked = self.check_bands(bands)
        if self.segmentation:
            return self._read_series(item, picked, options, limits, checker)
        where = f"{item.extra.get('table', self.name)}, row {item.extra.get('row', '?')}"
        arr, nodata = self._read_raster(item.path, limits, where, checker(item.path, where))
        self._nodata(arr, nodata, item.path, where)
        label = (np.asarray(item.label, np.uint8) if self.task == "multilabel"
                 else np.int16(item.label))
        return Sample(arr[picked], label)

    def _read_series(self, item: Item, picked: list[int], options: dict[str, Any],
                     limits: Limits, checker: Callable[[Path, str], Callable[[Any], None]],
                     ) -> Sample:
        """A segmentation sample: its rasters stacked by date (time, bands, H, W), padded with
        empty dates to the longest series (``t_max``), and its mask."""
        frames, empty = [], None
        for path, row, n in item.extra["files"]:
            where = f"{item.extra.get('table', self.name)}, row {row}"
            arr, nodata = self._read_raster(Path(path), limits, where,
                                            checker(Path(path), where), max(n, 1))
            frames.append(arr.reshape(max(n, 1), len(self.user_bands), *arr.shape[1:]))
            # pixels without data on every date so far (each raster within max_nodata)
            mask = self._nodata(frames[-1], nodata, Path(path), where)
            empty = mask if empty is None else empty & mask
        series = np.concatenate(frames)[:, picked]
        t_max = int(options.get("t_max") or len(series))
        img = np.zeros((t_max, *series.shape[1:]), series.dtype)
        img[: len(series)] = series
        valid = np.zeros(t_max, bool)
        valid[: len(series)] = True
        label = self._read_mask(item, series.shape[-2:], limits)
        if empty is not None and empty.any():  # no data on any date: nothing to learn there
            label[empty] = self.void_class
        return Sample(img, label, valid)

    def reference(self, items: list[Item]) -> None:
        """Fix what every chip must share, from the declaration or else the first chip's header:
        dtype, size and CRS, each with where it comes from; every item is checked against it
        when read (:meth:`read`)."""
        import rasterio
        from rasterio.errors import RasterioIOError

        first = items[0]
        where = f"{first.extra['table']}, row {first.extra['row']}"
        try:
            with rasterio.open(first.path) as src:
                if self.segmentation:
                    n = first.extra["files"][0][2]
                    if src.count != max(n, 1) * len(self.user_bands):
                        raise DataError(f"{where}: {first.path} has {src.count} bands, the "
                                        f"dataset's {len(self.user_bands)} "
                                        f"({', '.join(self.user_bands)})"
                                        + (f" x {n} dates" if n > 1 else ""))
                dtype, side, crs = src.dtypes[0], f"{src.height}x{src.width}", src.crs
        except RasterioIOError as err:
            raise DataError(f"{where}: {first.path} cannot be read as a raster ({err})") from None
        name = first.path.name
        ref = {"dtype": (dtype, f"as {name}"), "size": (side, f"as {name}"),
               "CRS": (str(crs) if crs else "none", f"as {name}")}
        if self.decl.get("dtype"):
            ref["dtype"] = (self.decl["dtype"], "data.generic.dtype")
        if self.decl.get("size"):
            ref["size"] = (f"{self.decl['size']}x{self.decl['size']}", "data.generic.size")
        for it in items:
            it.extra["reference"] = ref
        self.dtype = ref["dtype"][0]
        h, w = (int(v) for v in ref["size"][0].split("x"))
        self.native_size = h if h == w else None

    def read_input(self, path: Path, bands: list[str], options: dict[str, Any],
                   dates: list[int] | None = None, *, limits: Limits = DEFAULT,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int] | None]:
        """A chip as the dataset holds them (same bands in the same order), bands picked by
        name."""
        path = Path(path)

        def check(src: Any) -> None:
            if src.dtypes[0] != self.dtype:
                raise DataError(f"{path}: dtype {src.dtypes[0]}, {self.name} is {self.dtype}")
            if size is not None and (src.height, src.width) != tuple(size):
                raise DataError(f"{path}: size {src.height}x{src.width}, the model takes "
                                f"{size[0]}x{size[1]} ({self.name})")

        if not self.segmentation:
            arr = self._read_file(path, limits, str(path), check)
            return arr[self.check_bands(bands)], None
        b = len(self.user_bands)
        if dates is None:
            named = self.file_dates([path])
            tag = named[0] if named else raster_date(path, str(path))
            dates = [tag] if tag is not None else None
        if dates is None:
            if self.input_needs_dates:
                raise DataError(f"{path}: {self.name} is a time series: give the raster's dates "
                                f"(YYYYMMDD; --dates), a TIFFTAG_DATETIME tag"
                                + (f", or a name that data.generic.date_pattern "
                                   f"{self.date_re.pattern!r} finds a date in"
                                   if self.date_re is not None else ""))
            dates = [0]
        dates = [int(x) for x in dates]
        if self.input_needs_dates:
            for x in dates:
                parse_date(str(x), str(path))
            if any(b2 <= a for a, b2 in zip(dates, dates[1:], strict=False)):
                raise DataError(f"{path}: the dates {dates} are not strictly increasing")
        arr = self._read_file(path, limits, str(path), check, len(dates))
        series = arr.reshape(len(dates), b, *arr.shape[1:])
        return series[:, self.check_bands(bands)], dates

    def extra_attrs(self, options: dict[str, Any]) -> dict[str, Any]:
        """The declaration, with the dtype and side the chips have (the store's readers and a
        run's ``geopeft predict`` know the dataset from it)."""
        attrs: dict[str, Any] = {"generic": {**self.decl, "dtype": self.dtype,
                                             "size": self.native_size}}
        if self.segmentation:
            attrs["generic"]["dated"] = self.input_needs_dates
        if self.segmentation:
            attrs.update(void_class=self.void_class,
                         date_format="YYYYMMDD, 0 = padding (or undated, n_dates 1)")
        return attrs

    def extra_arrays(self, items: list[Item], kept: list[str],
                     options: dict[str, Any]) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
        """A series' dates (YYYYMMDD, 0 = padding or undated) and their number."""
        if not self.segmentation:
            return {}
        by = {it.name: it for it in items}
        t_max = int(options["t_max"])
        dates = np.zeros((len(kept), t_max), np.int32)
        n = np.zeros(len(kept), np.int16)
        for k, name in enumerate(kept):
            got = by[name].extra["dates"]
            dates[k, : len(got)] = got
            n[k] = len(got)
        return {"dates": (dates, ("sample", "time")), "n_dates": (n, ("sample",))}

    def example_input(self, item: Item, cache: Path) -> tuple[Path, list[int] | None]:
        """A sample as ``geopeft predict`` takes it: its raster; a series of per-date rasters
        stacked into one GeoTIFF in ``cache`` (dates x bands, date-major), with its dates."""
        files = item.extra.get("files")
        if not self.segmentation or not files:
            return item.path, None
        dates = list(item.extra["dates"])
        undated = dates == [0]
        if len(files) == 1:
            return Path(files[0][0]), None if undated else dates
        import rasterio

        out = Path(cache) / f"{self.name}-{item.name}.tif"
        if not out.is_file():
            arrays, profile = [], None
            for path, _, _ in files:
                with rasterio.open(path) as src:
                    arrays.append(src.read())
                    profile = profile or src.profile
            assert profile is not None
            stack = np.concatenate(arrays)
            profile.update(count=len(stack), driver="GTiff")
            out.parent.mkdir(parents=True, exist_ok=True)
            from geopeft.io import atomic_path

            with atomic_path(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
                dst.write(stack)
        return out, dates


def parse_date(text: str, where: str) -> int:
    """A date written YYYYMMDD or YYYY-MM-DD (a time after it, as TIFF tags write, is ignored)
    as the integer YYYYMMDD.

    Raises:
        DataError: naming ``where`` and the text, when it is no such date.
    """
    t = str(text).strip()
    head = t.replace(":", "-", 2) if re.match(r"^\d{4}:\d{2}:\d{2}", t) else t
    m = re.match(r"^(\d{4})-?(\d{2})-?(\d{2})(?:$|[ T])", head)
    try:
        if m is None:
            raise ValueError
        day = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise DataError(f"{where}: {t!r} is not a date (YYYYMMDD or YYYY-MM-DD)") from None
    return day.year * 10000 + day.month * 100 + day.day


def raster_date(path: Path, where: str) -> int | None:
    """A raster's TIFFTAG_DATETIME as YYYYMMDD (None: it has none)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            tag = src.tags().get("TIFFTAG_DATETIME")
    except RasterioIOError as err:
        raise DataError(f"{where}: {path} cannot be read as a raster ({err})") from None
    return None if not tag else parse_date(tag, f"{where}: {path} TIFFTAG_DATETIME")


def _geojson_rows(path: Path, decl: dict[str, Any]) -> list[dict[str, Any]]:
    """A GeoJSON FeatureCollection's features as rows of their properties; a Point geometry
    gives the declared x and y columns when the properties lack them."""
    doc = json.loads(path.read_text())
    rows = []
    for f in doc["features"]:
        row = dict(f.get("properties") or {})
        geom = f.get("geometry") or {}
        if geom.get("type") == "Point":
            x, y = geom["coordinates"][:2]
            row.setdefault(decl.get("x_column") or "x", x)
            row.setdefault(decl.get("y_column") or "y", y)
        rows.append(row)
    return rows


def _cut(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Sizes of the three splits of ``n`` by ``fractions`` (rounded, summing to ``n``)."""
    total = sum(fractions)
    train = round(n * fractions[0] / total)
    val = round(n * (fractions[0] + fractions[1]) / total) - train
    return [train, val, n - train - val]


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[str]:
    """Each sample's split: every stratum (class; multi-label: rarest positive class) shuffled
    with ``seed`` and cut by ``fractions`` (train, val, test)."""
    from geopeft.data.strata import strata

    groups = strata(labels)
    rng = np.random.default_rng([seed, 0x5711])
    out = [""] * len(groups)
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        sizes = _cut(len(idx), fractions)
        start = 0
        for part, size in zip(SPLITS, sizes, strict=True):
            for i in idx[start : start + size]:
                out[i] = part
            start += size
    return out


def spatial_blocks(xy: np.ndarray, block: float) -> np.ndarray:
    """The block of each coordinate pair: (floor(x / block), floor(y / block)) as one id."""
    cells = np.floor(xy / block).astype(np.int64)
    _, ids = np.unique(cells, axis=0, return_inverse=True)
    return ids.reshape(-1)


def spatial_split(xy: np.ndarray, block: float, fractions: tuple[float, ...],
                  seed: int) -> list[str]:
    """Each sample's split, whole blocks of ``block`` metres at a time: the blocks are shuffled
    with ``seed`` and filled into train, then val, then test until each holds its fraction of
    the samples (a block is never split)."""
    if not block > 0 or not math.isfinite(block):
        raise DataError(f"data.generic.split.block: {block} is not a positive size in metres")
    ids = spatial_blocks(xy, block)
    rng = np.random.default_rng([seed, 0xB10C])
    order = rng.permutation(ids.max() + 1)
    counts = np.bincount(ids)
    goal = np.cumsum(_cut(len(ids), fractions))
    part_of = {}
    filled, p = 0, 0
    for b in order:
        while p < 2 and filled >= goal[p]:
            p += 1
        part_of[int(b)] = SPLITS[p]
        filled += int(counts[b])
    return [part_of[int(b)] for b in ids]


def register(name: str, decl: dict[str, Any], registry: dict[str, Source],
             builtin: frozenset[str]) -> GenericSource:
    """Add the dataset ``name`` declared by ``decl`` to ``registry`` (the source registry; again:
    replaced, when the declaration changed).

    Raises:
        DataError: ``name`` is a built-in dataset (of ``builtin``), or the declaration is
            contradictory.
    """
    if name in builtin:
        raise DataError(f"data.dataset: {name!r} is a built-in dataset; a dataset of your own "
                        f"(data.generic) needs another name")
    known = registry.get(name)
    if isinstance(known, GenericSource) and known.decl == json.loads(json.dumps(decl)):
        return known
    source = GenericSource(name, decl)
    registry[name] = source
    return source


def from_environment() -> dict[str, Any]:
    """The declarations the workflow passed its jobs (:data:`ENV`), name -> declaration."""
    text = os.environ.get(ENV)
    if not text:
        return {}
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError) as err:
        raise DataError(f"${ENV}: not a JSON object of dataset declarations ({err})") from None


__all__ = ["DATE_SEPARATOR", "ENV", "SEGMENTATION_KEYS", "SPLIT_METHODS", "TABLE_FORMATS", "TASKS",
           "VOID", "GenericSource", "from_environment", "parse_date", "raster_date", "register",
           "spatial_blocks", "spatial_split", "stratified_split"]
