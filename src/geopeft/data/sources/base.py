"""What every dataset source shares: the base class, the sample records and the data error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import band_indices
from geopeft.errors import GeopeftError
from geopeft.limits import DEFAULT, Limits

#: The splits every source assigns its samples to, in this order.
SPLITS = ("train", "val", "test")
#: The file an embedded (synthetic) world writes at its root: what it is and its sample size.
SYNTHETIC_MARKER = "geopeft-synthetic.json"


class DataError(GeopeftError, ValueError):
    """A raw file or folder is missing or malformed; the message names it."""


def check_values(path: Path, declared: str, values: int, dtype: Any, limits: Limits) -> None:
    """Refuse a raster whose header declares more values than ``limits.max_raster_values``,
    before a pixel of it is read.

    Args:
        path: the file, named in the error.
        declared: its shape as its header declares it, in words (e.g. "8000x8000 px x 13 bands").
        values: the values that shape holds.
        dtype: their data type.
        limits: the limits in force (a study's ``limits`` section, else the defaults).

    Raises:
        DataError: naming the file, its declared shape and size, and the limit.
    """
    if values > limits.max_raster_values:
        dt = np.dtype(dtype)
        raise DataError(f"{path}: declares {declared} of {dt.name} ({values:,} values, "
                        f"{values * dt.itemsize / 2**30:.1f} GiB), over the limit of "
                        f"{limits.max_raster_values:,} values (limits.max_raster_values); "
                        f"nothing was read")


def check_side(path: Path, side: tuple[int, int], size: tuple[int, int] | None,
               dataset: str) -> None:
    """Refuse a sample whose side (H, W) is not the one the model takes (``size``; None: any).

    Raises:
        DataError: naming the file, its side and the model's.
    """
    if size is not None and tuple(side) != tuple(size):
        raise DataError(f"{path}: size {side[0]}x{side[1]}, the model takes {size[0]}x{size[1]} "
                        f"({dataset})")


@dataclass
class Item:
    """One sample of a raw dataset, before reading."""

    name: str
    split: str
    path: Path
    label: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sample read: image (dims of the source), label, and valid time steps if any."""

    image: np.ndarray
    label: np.ndarray
    valid: np.ndarray | None = None


class Source:
    """Base class of a dataset source."""

    name: str = ""
    classes: tuple[str, ...] = ()
    task: str = "multiclass"  # multiclass | multilabel | segmentation
    value_scale: float = 1e-4
    file_bands: tuple[str, ...] = ()
    dims: tuple[str, ...] = ("band", "y", "x")
    label_dims: tuple[str, ...] = ()
    remotes: tuple[Any, ...] = ()
    #: folder (relative to the download folder) that an extracted archive puts the data in
    layout: str = ""
    #: side in pixels of every sample of the published dataset (None: not fixed)
    native_size: int | None = None
    #: the data type of its pixels, kept in the prepared store
    dtype: Any = "uint16"
    #: whether a study may train on it (False: the embedded pretraining source sets)
    study_dataset: bool = True
    #: whether the embedded synthetic world holds it (``data.source: synthetic``)
    embedded: bool = False
    #: ``module:function`` writing this dataset's embedded world alone into a folder,
    #: ``f(out: Path, spec: WorldSpec) -> dict`` (None: EuroSAT, whose world and source sets
    #: one rule writes together)
    world: str | None = None
    #: samples per split (train, val, test) of the published dataset under its default split
    #: (None: not declared); :meth:`split_sizes` gives them for the source options of a study
    published_splits: dict[str, int] | None = None
    #: where :attr:`published_splits` come from (said by ``geopeft plan``)
    published_splits_source: str = ""
    #: the most acquisition dates of one series (time series; None: not declared), which
    #: ``geopeft plan`` sizes a segmentation decoder's features by
    max_dates: int | None = None
    #: what :meth:`read_input` takes, in words (the app says it under the run menu)
    input_format: str = "no single-sample files"
    #: whether :meth:`read_input` needs the sample's acquisition dates (time series)
    input_needs_dates: bool = False
    #: the metadata file :meth:`input_dates` reads a sample's dates from, in words (``geopeft
    #: predict --metadata``; "": none, the dates are given with ``--dates`` if needed)
    input_metadata: str = ""
    #: samples of this dataset's rehearsal fixture (``geopeft rehearse``: a few dozen at the real
    #: sizes; 0: the rehearsal has no fixture of it, else :meth:`write_fixtures` writes it)
    fixture_samples: int = 0
    #: ``module:function`` writing the files this source downloads (:attr:`remotes`), under
    #: their published names and in the publisher's layout, ``f(source, out: Path, work: Path)``
    #: (see :meth:`write_fixtures`; None: no fixture). A string, as :attr:`world`: the writer
    #: depends on the source's facts, never the other way round.
    fixtures: str | None = None
    #: the embedded source set (a source of this registry) the study's embedded backbone is
    #: pretrained on (``backbone.weights: pretrain``): one in this dataset's format when there is
    #: one, else EuroSAT-MS's 13-band set
    pretrain_source: str = "eurosat_ms_source"

    @property
    def band_aliases(self) -> dict[str, str]:
        """Band names a file of this dataset may carry -> the name a study selects it by (a
        dataset of your own: your names -> Sentinel-2's; built-in ones: none)."""
        return {}

    def file_dates(self, files: Sequence[Path]) -> list[int] | None:
        """The acquisition dates (YYYYMMDD) of single-date files, one each, as the dataset's
        file names give them; None when they do not (whole-scene maps then read the rasters'
        tags, or take ``--dates``)."""
        return None

    def split_sizes(self, options: dict[str, Any]) -> dict[str, int] | None:
        """Samples per split (train, val, test) of the published dataset as the study's source
        options (``data.options``) split it, for planning (``geopeft plan``); None when not known.
        The prepared store holds the real counts.

        Args:
            options: the study's ``data.options``.
        """
        return dict(self.published_splits) if self.published_splits else None

    def sample_bytes(self, bands: int, options: dict[str, Any],
                     length: int | None = None) -> int | None:
        """Bytes of one sample's image as a job holds it (the store's dtype), for planning: the
        prepared side (``data.options.size``, else the published one) x bands (x ``length``
        dates of a time series); None when the side is not fixed.

        Args:
            bands: the study's bands.
            options: the study's ``data.options``.
            length: the dates a time-series job keeps (its sequence length).
        """
        size = int(options.get("size") or self.native_size or 0)
        if not size:
            return None
        dates = (length or 1) if self.time_series else 1
        return np.dtype(self.dtype).itemsize * bands * size * size * dates

    @property
    def time_series(self) -> bool:
        """Whether samples are image time series (rows get a sequence length and a
        segmentation model)."""
        return "time" in self.dims

    def declared_size(self, raw: Path) -> int | None:
        """The side every sample under ``raw`` must have: the published dataset's, or the one an
        embedded world declares in its ``geopeft-synthetic.json``. Each file is checked against
        it, so one malformed file is blamed, never the good ones."""
        marker = Path(raw) / SYNTHETIC_MARKER
        if marker.is_file():
            import json

            try:
                return int(json.loads(marker.read_text())["size"])
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{marker}: no readable 'size' ({err})") from None
        return self.native_size

    def read_input(self, path: Path, bands: list[str], options: dict[str, Any],
                   dates: list[int] | None = None, *, limits: Limits = DEFAULT,
                   size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[int] | None]:
        """One sample as a user holds it (``geopeft predict``, the app): a file or folder in
        the published format, read and checked as preparation reads it. Its size is checked
        from its header, against ``limits`` and ``size``, before a pixel is read.

        Args:
            path: the sample's file or folder (:attr:`input_format`).
            bands: the bands to return, in this order (the run's store's).
            options: the study's ``data.options`` (e.g. the side BigEarthNet is resampled to).
            dates: the acquisition dates (YYYYMMDD) of a time series, one per image.
            limits: the limits on what is read (:data:`geopeft.limits.DEFAULT` for a user's file).
            size: the side (H, W) the model takes (:func:`check_side`; None: any).

        Returns:
            The image (bands, H, W), or (time, bands, H, W) with its dates.

        Raises:
            DataError: naming ``path`` and what is wrong with it.
        """
        raise DataError(f"{path}: {self.name} has no single-sample files to predict on")

    def input_dates(self, metadata: Path, samples: Sequence[Path]) -> list[list[int]]:
        """Each sample file's acquisition dates (YYYYMMDD) as the dataset's metadata file lists
        them (``geopeft predict --metadata``, :attr:`input_metadata`).

        Args:
            metadata: the dataset's metadata file.
            samples: the files to predict on, in the format of :meth:`read_input`.

        Returns:
            One list of dates per sample, in order.

        Raises:
            DataError: naming ``metadata`` when the source has no metadata file of dates (the
                default), or naming the sample it does not list.
        """
        raise DataError(f"{metadata}: {self.name} has no metadata file of acquisition dates "
                        f"(--metadata is for a time series that has one)")

    def example_input(self, item: Item, cache: Path) -> tuple[Path, list[int] | None]:
        """A scanned sample (:meth:`scan`) as a user would give it to :meth:`read_input` (the
        app's examples): its file, and its dates if a time series. By default the item's own file,
        no dates.

        Args:
            item: a sample of :meth:`scan`.
            cache: a folder for files made for the purpose (e.g. a patch folder zipped).
        """
        return item.path, None

    def write_fixtures(self, out: Path, work: Path) -> None:
        """Write this dataset's rehearsal fixture: the files of :attr:`remotes`, with
        :attr:`fixture_samples` samples of the embedded world, into ``out`` (the declared
        :attr:`fixtures` writer; a source may override this method instead).

        Args:
            out: the folder the downloadable files go to (exists, empty).
            work: a scratch folder the writer may create and fill (removed afterwards).

        Raises:
            DataError: the source declares no fixture writer, or one that cannot be loaded.
        """
        if not self.fixtures:
            raise DataError(f"{self.name}: no rehearsal fixture writer (fixtures=None, "
                            f"fixture_samples={self.fixture_samples})")
        module, _, func = self.fixtures.partition(":")
        import importlib

        try:
            writer = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError, ValueError) as err:
            raise DataError(f"{self.name}: fixtures={self.fixtures!r} cannot be loaded "
                            f"({err})") from None
        writer(self, Path(out), Path(work))

    def check_bands(self, bands: list[str]) -> list[int]:
        return band_indices(bands, self.file_bands, where=self.name)

    def scan(self, raw: Path, options: dict[str, Any]) -> list[Item]:
        raise NotImplementedError

    def read(self, item: Item, bands: list[str], options: dict[str, Any], *,
             limits: Limits = DEFAULT) -> Sample:
        """One sample of :meth:`scan` with ``bands``; a file whose header declares more than
        ``limits`` allow is refused before it is read (:func:`check_values`)."""
        raise NotImplementedError

    def extra_arrays(self, items: list[Item], kept: list[str],
                     options: dict[str, Any]) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
        return {}

    def extra_attrs(self, options: dict[str, Any]) -> dict[str, Any]:
        return {}
