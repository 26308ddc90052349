"""Your own data, declared in the study file (``data.generic``): raster chips listed in a table.

A folder (``data.raw_dir``) holds chips that rasterio reads (GeoTIFF or any GDAL raster), all of
one size, band count, dtype and CRS, and a table (CSV, Parquet or GeoJSON) with a row per chip:
its path (relative to the folder), its label(s), and optionally its split and its coordinates.
Labels: one column of class names (multi-class), the same with a separator, or one 0/1 column per
class (multi-label). Bands have the user's names in file order, each mapped to its Sentinel-2 name
where it has one (``band_map``), so that pretrained encoders get the right channels; a study
selects bands by their Sentinel-2 names.

Splits come from the table's split column, or are made here: **stratified** (each class's
samples shuffled with the seed, then cut by the fractions; multi-label by the rarest positive
class) or **spatially blocked** (samples grouped into square blocks of ``split.block`` metres of
their coordinates, whole blocks assigned to splits, so that neighbouring chips never straddle
train and test). Every file is checked as it is read: a missing or unreadable file is named with
its table row, a chip unlike the first is named with what was expected and from which file.

The declaration travels with the data: preparation writes it into the store's attributes
(``generic``), so training, evaluation, ``geopeft predict`` and the app know the dataset from the
store or the run alone; the workflow's jobs also get the study's declarations in the environment
(:data:`ENV`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import S2_BANDS
from geopeft.data.sources.base import SPLITS, DataError, Item, Sample, Source, check_values
from geopeft.limits import DEFAULT, Limits

#: The environment variable holding the study's declared datasets (JSON: name -> declaration),
#: set by the workflow for its jobs.
ENV = "GEOPEFT_DATASETS"
#: Tasks a generic source may declare.
TASKS = ("multiclass", "multilabel")
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
        self.label_dims = ("class",) if self.task == "multilabel" else ()
        self.embedded = False
        self.study_dataset = True
        self.input_format = (f"a raster chip of {len(bands)} bands "
                             f"({', '.join(bands)}), as the dataset's own")
        split = d["split"]
        #: how the splits are made: split.method, else table when the table has a split column
        self.split_method = split.get("method") or ("table" if d.get("split_column")
                                                    else "stratified")
        if self.split_method == "table" and not d.get("split_column"):
            raise DataError(f"{_where(name, 'split.method')}: table needs data.generic."
                            f"split_column (the column of train / val / test)")
        if self.split_method == "spatial" and not (d.get("x_column") and d.get("y_column")):
            raise DataError(f"{_where(name, 'split.method')}: spatial needs data.generic."
                            f"x_column and y_column (projected coordinates, metres)")
        if self.task == "multiclass" and d.get("label_columns"):
            raise DataError(f"{_where(name, 'label_columns')}: one column per class is for a "
                            f"multilabel task; a multiclass task names its label_column")

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
        needed += (list(self.decl["label_columns"]) if self.decl.get("label_columns")
                   else [self.decl["label_column"]])
        needed += [self.decl[k] for k in ("split_column", "x_column", "y_column")
                   if self.decl.get(k)]
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
        """Every row of the table as a sample, its split given or made; rows are checked (file
        present, label declared, path not repeated) and named by their row on error."""
        raw = Path(raw)
        table = self.table_path(raw)
        rows = self.read_table(raw)
        d = self.decl
        items: list[Item] = []
        seen: dict[str, int] = {}
        coords: list[tuple[float, float]] = []
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
            split = None
            if self.split_method == "table":
                split = str(row[d["split_column"]]).strip()
                if split not in SPLITS:
                    raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)} "
                                    f"(column {d['split_column']!r})")
            if self.split_method == "spatial":
                try:
                    coords.append((float(row[d["x_column"]]), float(row[d["y_column"]])))
                except (TypeError, ValueError):
                    raise DataError(f"{where}: coordinates {row[d['x_column']]!r}, "
                                    f"{row[d['y_column']]!r} are not numbers") from None
            label = self._label(row, where)
            items.append(Item(key, split or "", path, label,
                              {"row": row["_row"], "table": str(table)}))
        method = self.split_method
        if method != "table":
            labels = np.stack([np.asarray(it.label) for it in items])
            fractions = tuple(d["split"]["fractions"])
            seed = int(d["split"]["seed"])
            if method == "stratified":
                assigned = stratified_split(labels, fractions, seed)
            else:
                assigned = spatial_split(np.array(coords, np.float64), float(d["split"]["block"]),
                                         fractions, seed)
            for it, part in zip(items, assigned, strict=True):
                it.split = part
        for part in SPLITS:
            if not any(it.split == part for it in items):
                raise DataError(f"{table}: the {part} split holds no sample "
                                f"(data.generic.split: {method})")
        self.reference(items)
        return items

    def _read_file(self, path: Path, limits: Limits, where: str,
                   check: Callable[[Any], None] | None = None) -> np.ndarray:
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            with rasterio.open(path) as src:
                if src.count != len(self.user_bands):
                    raise DataError(f"{where}: {path} has {src.count} bands, the dataset's "
                                    f"{len(self.user_bands)} ({', '.join(self.user_bands)})")
                check_values(path, f"{src.height}x{src.width} px x {src.count} bands",
                             src.height * src.width * src.count, src.dtypes[0], limits)
                if check is not None:
                    check(src)
                return src.read()
        except RasterioIOError as err:
            raise DataError(f"{where}: {path} cannot be read as a raster ({err})") from None

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        """One chip, checked against the first chip read (:meth:`first_chip`) or the declared
        dtype and size; bands picked by their Sentinel-2 names."""
        where = f"{item.extra.get('table', self.name)}, row {item.extra.get('row', '?')}"
        ref = item.extra.get("reference")

        def check(src: Any) -> None:
            got = {"dtype": src.dtypes[0], "size": f"{src.height}x{src.width}",
                   "CRS": str(src.crs) if src.crs else "none"}
            for key, want in (ref or {}).items():
                if got[key] != want[0]:
                    raise DataError(f"{where}: {item.path} has {key} {got[key]}, expected "
                                    f"{want[0]} ({want[1]})")

        arr = self._read_file(item.path, limits, where, check)
        label = (np.asarray(item.label, np.uint8) if self.task == "multilabel"
                 else np.int16(item.label))
        return Sample(arr[self.check_bands(bands)], label)

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

        arr = self._read_file(path, limits, str(path), check)
        return arr[self.check_bands(bands)], None

    def extra_attrs(self, options: dict[str, Any]) -> dict[str, Any]:
        """The declaration, with the dtype and side the chips have (the store's readers and a
        run's ``geopeft predict`` know the dataset from it)."""
        return {"generic": {**self.decl, "dtype": self.dtype, "size": self.native_size}}


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


__all__ = ["ENV", "SPLIT_METHODS", "TABLE_FORMATS", "TASKS", "GenericSource", "from_environment",
           "register", "spatial_blocks", "spatial_split", "stratified_split"]
