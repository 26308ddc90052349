"""The settings of the study's data: the dataset and its source, bands, downloads, source
options, the embedded world and label-fraction subsets."""

from __future__ import annotations

from dataclasses import dataclass

from geopeft.data.sources.generic import SPLIT_METHODS as GENERIC_SPLITS
from geopeft.data.sources.generic import TASKS as GENERIC_TASKS
from geopeft.data.subsets import METHODS as SUBSET_METHODS
from geopeft.data.synthetic import WorldSpec
from geopeft.layout import DATA
from geopeft.settings.fields import (
    DATA_SOURCES,
    MD5_PATTERN,
    RESAMPLINGS,
    SHA256_PATTERN,
    optional,
    required,
    setting,
)

#: What a band name may be: a Sentinel-2 name, or a dataset of your own's name for a band
#: (letters, digits, underscores: band selections are joined by "-" in file names).
BAND_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_]*$"
#: The data types a dataset of your own may declare.
GENERIC_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
#: The embedded world's defaults.
_WORLD = WorldSpec()

@dataclass(kw_only=True)
class RemoteFile:
    """A file to download, replacing the registry's of that name."""

    name: str = required(pattern="^[^/]+$")
    """The file's name (its archive name on the mirrors)."""
    dataset: str | None = optional(ref="dataset")
    """Only for this dataset of the study (default: every dataset)."""
    urls: list[str] = required(minItems=1)
    """Where to download it, tried in order."""
    md5: str | None = optional(nullable=True, pattern=MD5_PATTERN)
    """Its MD5 checksum."""
    sha256: str | None = optional(nullable=True, pattern=SHA256_PATTERN)
    """Its SHA-256 checksum."""
    size: int | None = optional(nullable=True, minimum=0)
    """Its size in bytes."""


@dataclass(kw_only=True)
class Folds:
    """PASTIS: folds per split (default train 1-3, val 4, test 5)."""

    train: list[int] | None = optional(items={"minimum": 1, "maximum": 5})
    """Folds of the training split."""
    val: list[int] | None = optional(items={"minimum": 1, "maximum": 5})
    """Folds of the validation split."""
    test: list[int] | None = optional(items={"minimum": 1, "maximum": 5})
    """Folds of the test split."""


@dataclass(kw_only=True)
class Options:
    """Source options for prepare."""

    resampling: str | None = optional(enum=RESAMPLINGS)
    """BigEarthNet: how 20/60 m bands reach the 10 m grid (default bilinear)."""
    size: int | None = optional(minimum=8)
    """BigEarthNet: output side in pixels (default 120)."""
    skip_corrupt: bool | None = optional()
    """Skip unreadable samples (counted and listed in the store) instead of failing."""
    v2_metadata: str | None = optional()
    """BigEarthNet v1: metadata.parquet of v2 for the official split."""
    folds: Folds | None = optional()


@dataclass(kw_only=True)
class Synthetic:
    """Parameters of the embedded synthetic world."""

    # the world's own defaults (geopeft.data.synthetic.WorldSpec), written once there
    seed: int = setting(_WORLD.seed, minimum=0)
    """Master seed of the world."""
    n_samples: int = setting(_WORLD.n_samples, minimum=30)
    """Target scenes (EuroSAT class proportions)."""
    source_samples: int = setting(_WORLD.source_samples, minimum=30)
    """Scenes in the pretraining source set."""
    size: int = setting(_WORLD.size, minimum=16, maximum=256)
    """Scene side in pixels."""
    cloud_fraction: float = setting(_WORLD.cloud_fraction, minimum=0, maximum=1)
    """Share of cloudy scenes."""
    noise: float = setting(_WORLD.noise, minimum=0)
    """Sensor noise (reflectance units)."""


@dataclass(kw_only=True)
class GenericSplit:
    """How a dataset of your own is split into train, val and test."""

    method: str | None = optional(enum=GENERIC_SPLITS)
    """table = the table's split_column (train / val / test); stratified = each class's samples
    shuffled with the seed and cut by the fractions (multi-label: by the rarest positive class;
    segmentation: by the mask's most frequent class); spatial = whole square blocks of `block`
    metres of the samples' coordinates (x_column, y_column, else the centre of each chip's
    bounds) go to one split, so that neighbouring chips never straddle train and test.
    Default: table when split_column is given, else stratified."""
    fractions: list[float] = setting([0.6, 0.2, 0.2], minItems=3, maxItems=3,
                                     items={"type": "number", "exclusiveMinimum": 0})
    """Shares of train, val and test (stratified, spatial), normalised to their sum."""
    seed: int = setting(0, minimum=0)
    """Seed of the shuffle (stratified, spatial)."""
    block: float = setting(1000.0, exclusiveMinimum=0)
    """Side of a spatial block, in the units of the coordinates (metres in a projected CRS)."""


@dataclass(kw_only=True)
class Generic:
    """A dataset of your own: raster chips (GeoTIFF or any raster rasterio reads) in data.raw_dir
    listed in a table, one row per chip, or per chip and date for a time series (data.source:
    local; data.dataset: any name not a built-in dataset)."""

    task: str = required(enum=GENERIC_TASKS)
    """multiclass = one class per chip (label_column); multilabel = several (label_column with
    label_separator, or label_columns: one 0/1 column per class); segmentation = a mask raster per
    sample (mask_column or mask_pattern), one class per pixel, its samples one image or a time
    series (sample_column, date_column, date_pattern)."""
    table: str = required()
    """The table, relative to data.raw_dir: .csv, .parquet or .geojson (a FeatureCollection;
    Point geometries give the coordinates)."""
    classes: list[str] = required(minItems=2, uniqueItems=True)
    """The class names, in the order of the model's outputs."""
    bands: list[str] = required(minItems=1, uniqueItems=True,
                                items={"type": "string", "pattern": BAND_NAME_PATTERN})
    """The chips' band names in file order, your names (e.g. [blue, green, red, nir, ndvi]); a
    band band_map does not map keeps its name, and data.bands selects it by that name."""
    band_map: dict[str, str] = setting({})
    """Your band name -> its Sentinel-2 name (e.g. {nir: B08}), so that pretrained encoders get
    the right channels; data.bands selects bands by these Sentinel-2 names. A band named as a
    Sentinel-2 band needs no entry."""
    path_column: str = setting("path")
    """The column of each chip's path, relative to data.raw_dir."""
    label_column: str = setting("label")
    """The column of the class name (multilabel: class names joined by label_separator)."""
    label_separator: str = setting(";")
    """multilabel, one column: what separates the class names."""
    label_columns: list[str] | None = optional(minItems=2)
    """multilabel: one 0/1 column per class, in the order of classes (instead of label_column)."""
    split_column: str | None = optional()
    """The column of each chip's split (train, val, test): split.method table."""
    x_column: str | None = optional()
    """The column of each chip's x coordinate (split.method spatial; default: the centre of the
    chip's georeferenced bounds)."""
    y_column: str | None = optional()
    """The column of each chip's y coordinate (split.method spatial; default: as x_column)."""
    dtype: str | None = optional(enum=GENERIC_DTYPES)
    """The chips' data type, checked on every chip (default: the first chip's)."""
    size: int | None = optional(minimum=8)
    """The chips' side in pixels, checked on every chip (default: the first chip's)."""
    mask_column: str | None = optional()
    """segmentation: the column of each sample's mask raster (one band of class indices 0, 1, ...
    in the order of classes), relative to data.raw_dir."""
    mask_pattern: str | None = optional()
    """segmentation, instead of mask_column: the mask's path made from the image's, e.g.
    masks/{stem}.tif ({stem}: the image file's name without suffix, {name}: with it, {sample}:
    the sample_column's value)."""
    ignore_value: int | None = optional(minimum=0, maximum=255)
    """segmentation: the mask value of unlabelled pixels (void: out of the loss and the metrics);
    any other value outside the classes is an error."""
    sample_column: str | None = optional()
    """Time series of per-date rasters: rows with the same value are the dates of one sample (they
    share its mask, split and coordinates)."""
    date_column: str | None = optional()
    """Each raster's acquisition date (YYYYMMDD or YYYY-MM-DD); a raster stacking several dates
    (dates x bands, date-major) lists them joined by ';'. Default: date_pattern, else each
    raster's TIFFTAG_DATETIME tag, else undated (one image per sample)."""
    date_pattern: str | None = optional()
    """A regular expression whose first group finds the date (YYYYMMDD or YYYY-MM-DD) in each
    raster's file name, e.g. '_(\\d{8})\\.tif$'."""
    nodata: float | None = optional()
    """The chips' nodata value (a pixel is nodata when every band holds it); default: each
    raster's own nodata value, if it declares one."""
    max_nodata: float = setting(0.0, minimum=0, maximum=1)
    """The share of a chip's pixels that may be nodata; a chip with more is refused, naming it
    and its share. Segmentation: pixels without data on every date are void (out of the loss
    and the metrics)."""
    value_scale: float = setting(1e-4, exclusiveMinimum=0)
    """What turns a value into reflectance: 1e-4 for Sentinel-2 digital numbers (L2A/L1C DN),
    1 for reflectance already."""
    split: GenericSplit = setting(GenericSplit)


@dataclass(kw_only=True)
class Data:
    """The dataset, its source and bands."""

    dataset: str = required(ref="dataset")
    """Dataset (its published layout decides the reader). Training covers the multi-class EuroSAT
    datasets; BigEarthNet (multi-label) and PASTIS (segmentation) are fetched and prepared, and
    trained by the Fusion-LoRA and time-series studies."""
    source: str = setting("synthetic", enum=DATA_SOURCES)
    """synthetic = generate the embedded synthetic Sentinel-2 world; download = fetch the real
    archives (checksummed, resumable), extract and prepare them; local = the real dataset already
    unpacked in its published layout at raw_dir."""
    raw_dir: str | None = None
    """Folder holding the unpacked dataset (source local); default <root>/raw/<source>/<dataset>."""
    mirrors: list[str] = setting([])
    """Base URLs tried before the publisher's (each serves files under their archive name)."""
    remotes: list[RemoteFile] = setting([])
    """Replace the registry's files to download (name, urls, md5/sha256, size)."""
    options: Options = setting(Options)
    root: str = DATA
    """Data root; raw files go to <root>/raw/<source>/, prepared stores to <root>/prepared/."""
    bands: list[str] = required(minItems=1, uniqueItems=True,
                                items={"type": "string", "pattern": BAND_NAME_PATTERN})
    """Bands to select, in model input order: Sentinel-2 names (B01 ... B12, B8A); a dataset of
    your own also by its own names for bands without a Sentinel-2 one (data.generic.bands)."""
    synthetic: Synthetic = setting(Synthetic)
    generic: Generic | None = optional()


@dataclass(kw_only=True)
class Subsets:
    """Label-fraction subsets of the training split."""

    method: str = setting(SUBSET_METHODS[0], enum=SUBSET_METHODS)
    """How label-fraction subsets of the train split are drawn (nested, seeded by the run seed)."""
