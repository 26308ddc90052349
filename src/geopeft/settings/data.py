"""The settings of the study's data: the dataset and its source, bands, downloads, source
options, the embedded world and label-fraction subsets."""

from __future__ import annotations

from dataclasses import dataclass

from geopeft.bands import S2_BANDS
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
    bands: list[str] = required(minItems=1, uniqueItems=True, items={"enum": S2_BANDS})
    """Sentinel-2 band names to select, in model input order."""
    synthetic: Synthetic = setting(Synthetic)


@dataclass(kw_only=True)
class Subsets:
    """Label-fraction subsets of the training split."""

    method: str = setting(SUBSET_METHODS[0], enum=SUBSET_METHODS)
    """How label-fraction subsets of the train split are drawn (nested, seeded by the run seed)."""
