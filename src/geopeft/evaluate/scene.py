"""Whole-scene maps: a trained run applied to a raster of any size, window by window, written as a
georeferenced GeoTIFF (``geopeft predict --model ... scene.tif --out map.tif``).

The scene is cut into tiles of the side the run was trained on (its store's). A classification
or multi-label run gives **one class per tile**: tiles side by side (the last row and column flush
with the scene's edge), and a coarse map whose cells are the tiles (the scene's transform scaled by
the tile). A segmentation run gives **one class per pixel**: tiles overlap by ``overlap`` pixels
and their class probabilities are blended with a separable triangular weight (highest at a
tile's centre, never zero), so seams do not show.

Memory is bounded by the block, not the scene: the output is made block by block
(``block`` x ``block`` pixels of output), each block reading only the window its tiles cover and
running them ``batch_size`` at a time; a pixel's value is the same whatever the block size (the
tiles covering it are summed in one order). Tiles with no valid pixel (every band at the nodata
value, at every date) are not run; their pixels, and nodata pixels, are ``NODATA`` in every band.
A time series is one raster per date, aligned, with its dates; each tile's series is cut as the
run's evaluation cuts a sample. A multi-label run's class band is its most probable class (the
probability bands give every class). The scene is in the units the run was trained on (e.g. DN
for a uint16 store; a float scene for an integer store is refused); its nodata pixels are read as
they are (the model sees the nodata value) and masked in the output.

Output bands, all uint8 with nodata ``NODATA``: 1 the class index (the run's classes, in the
band's tags and a colour table); with ``confidence``, the top class's probability in percent; with
``probabilities``, one band per class, its probability in percent (rounded).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import BandError, band_indices
from geopeft.data.sources import DataError
from geopeft.io import atomic_path

log = logging.getLogger(__name__)

#: File names that hold a scene (``geopeft predict --out map.tif``; an upload to the app larger
#: than the run's chips).
SCENE_SUFFIXES = (".tif", ".tiff")
#: The value of output pixels with no prediction (nodata input, or no tile run over them).
NODATA = 255
#: Output blocks' side in pixels by default (a block of 19 class probabilities: 80 MB).
BLOCK = 1024
#: GDAL's block cache while a scene is mapped, MB.
CACHE_MB = 64
#: The share of a tile's pixels that may be nodata before its cell is left nodata (classification).
MAX_NODATA = 0.5


@dataclass
class SceneMap:
    """What :func:`map_scene` wrote."""

    out: Path
    """The GeoTIFF."""
    per_tile: bool
    """One class per tile (classification, multi-label) rather than per pixel (segmentation)."""
    shape: tuple[int, int]
    """The map's height and width (cells or pixels)."""
    tile: tuple[int, int]
    """The tiles' side (H, W) in scene pixels."""
    tiles: int
    """Tiles the model ran on (a tile over two blocks counts twice)."""
    empty: int
    """Tiles not run: no valid pixel (or, one class per tile, over :data:`MAX_NODATA` nodata)."""
    seconds: float
    """Wall time."""


def origins(size: int, tile: int, stride: int, where: str) -> np.ndarray:
    """The tiles' first pixels along one axis: every ``stride``, the last flush with the edge.

    Raises:
        DataError: ``where``, when the scene is smaller than a tile.
    """
    if size < tile:
        raise DataError(f"{where}: {size} px, smaller than the run's tile of {tile} px")
    out = list(range(0, size - tile + 1, stride))
    if out[-1] != size - tile:
        out.append(size - tile)
    return np.array(out, dtype=np.int64)


def blend_weights(height: int, width: int) -> np.ndarray:
    """The weight of each pixel of a tile when overlapping tiles are blended: a separable
    triangle, 1 at the centre, 1/ceil(n/2) at the edges (never zero)."""

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n)
        return np.minimum(i + 1, n - i) / ((n + 1) // 2)

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def scene_side(path: Path) -> tuple[int, int] | None:
    """A raster's (height, width) from its header; None when GDAL cannot open it (its reader then
    says what is wrong)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            return int(src.height), int(src.width)
    except (RasterioIOError, OSError):
        return None


def tagged_dates(files: list[Path]) -> list[int] | None:
    """Each raster's acquisition date (YYYYMMDD) from its ``TIFFTAG_DATETIME`` tag
    (``YYYY:MM:DD HH:MM:SS``, as GDAL writes it); None unless every raster has one."""
    import rasterio
    from rasterio.errors import RasterioIOError

    out = []
    for f in files:
        try:
            with rasterio.open(f) as src:
                stamp = src.tags().get("TIFFTAG_DATETIME", "")
        except (RasterioIOError, OSError):
            return None  # the scene's reader names the file
        digits = stamp.replace(":", "").replace("-", "")[:8]
        if len(digits) != 8 or not digits.isdigit():
            return None
        out.append(int(digits))
    return out


def scene_bands(path: Path, count: int, descriptions: tuple[str | None, ...],
                given: list[str] | None, file_bands: tuple[str, ...],
                run_bands: list[str]) -> list[str]:
    """The band names of a scene's file, in file order: ``given`` (``--scene-bands``), else the
    raster's band descriptions, else the order of the run's dataset's own files when the scene
    has as many bands (as a chip is read: EuroSAT-MS B01..B12 then B8A).

    Raises:
        DataError: naming the file, when the names are missing or do not match its band count.
    """
    if given:
        if len(given) != count:
            raise DataError(f"{path}: {count} bands, --scene-bands names {len(given)} "
                            f"({','.join(given)})")
        return list(given)
    if all(descriptions):
        return [str(d) for d in descriptions]
    if count == len(file_bands):
        log.info("%s: no band names; taking its %d bands in the dataset's file order (%s)", path,
                 count, ",".join(file_bands))
        return list(file_bands)
    raise DataError(f"{path}: {count} bands without names (band descriptions) and not the "
                    f"{len(file_bands)} of the dataset's files; give their order with "
                    f"--scene-bands, e.g. --scene-bands B01,B02,... (the run takes "
                    f"{','.join(run_bands)})")


class Scene:
    """The rasters of one scene, open: one, or one per date of a time series, aligned and read
    window by window (bands picked by name, in the run's order)."""

    def __init__(self, files: list[Path], run_bands: list[str], dtype: str,
                 file_bands: tuple[str, ...] = (), given_bands: list[str] | None = None,
                 nodata: float | None = None, aliases: dict[str, str] | None = None):
        import rasterio
        from rasterio.errors import RasterioIOError

        self.files = [Path(f) for f in files]
        self.sources: list[Any] = []
        try:
            for f in self.files:
                if not f.is_file():
                    raise DataError(f"{f}: no such file")
                try:
                    self.sources.append(rasterio.open(f))
                except RasterioIOError as err:
                    raise DataError(f"{f}: cannot be read as a raster ({err})") from None
            first = self.sources[0]
            for f, src in zip(self.files[1:], self.sources[1:], strict=True):
                for what, mine, theirs in (
                        ("size", f"{src.height}x{src.width}", f"{first.height}x{first.width}"),
                        ("CRS", src.crs, first.crs),
                        ("transform", tuple(src.transform)[:6], tuple(first.transform)[:6]),
                        ("band count", src.count, first.count), ("dtype", src.dtypes[0],
                                                                 first.dtypes[0])):
                    if mine != theirs:
                        raise DataError(f"{f}: {what} {mine}, {self.files[0]} has {theirs} (the "
                                        f"rasters of a scene's dates must align)")
            self.height, self.width = first.height, first.width
            self.crs, self.transform = first.crs, first.transform
            mine, theirs = np.dtype(first.dtypes[0]), np.dtype(dtype)
            if (mine.kind in "iu", mine.itemsize) != (theirs.kind in "iu", theirs.itemsize):
                raise DataError(f"{self.files[0]}: dtype {first.dtypes[0]}, the run was trained "
                                f"on {dtype} values: give the scene in the same units")
            names = scene_bands(self.files[0], first.count, tuple(first.descriptions),
                                given_bands, file_bands, run_bands)
            # a dataset of your own names its bands (e.g. nir), the run selects them as B08
            names = [(aliases or {}).get(n, n) for n in names]
            try:
                self.indexes = [i + 1 for i in band_indices(run_bands, names,
                                                            where=str(self.files[0]))]
            except BandError as err:
                raise DataError(str(err)) from None
            self.nodata = first.nodata if nodata is None else nodata
        except BaseException:
            self.close()
            raise

    @property
    def series(self) -> bool:
        """Whether the scene is a time series (one raster per date)."""
        return len(self.files) > 1

    def read(self, y0: int, x0: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's pixels, (bands, h, w) or (dates, bands, h, w) in the file's dtype, and
        which pixels are valid (h, w): not at the nodata value in every band and date."""
        from rasterio.windows import Window

        win = Window(x0, y0, width, height)
        data = np.stack([s.read(self.indexes, window=win) for s in self.sources])
        if self.nodata is None:
            valid = np.ones((height, width), bool)
        else:
            valid = ~(data == self.nodata).all(axis=(0, 1))
        return (data if self.series else data[0]), valid

    def thumbnail(self, step: int) -> np.ndarray:
        """The first raster's bands (the run's order) every ``step`` pixels, (bands,
        ceil(H / step), ceil(W / step)), decimated by GDAL as it reads (nearest): a preview
        that never holds the scene."""
        from rasterio.enums import Resampling

        shape = (len(self.indexes), -(-self.height // step), -(-self.width // step))
        return self.sources[0].read(self.indexes, out_shape=shape,
                                    resampling=Resampling.nearest)

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _percent(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 100), 0, 100).astype(np.uint8)


def map_scene(predictor: Any, files: list[Path], out: Path, dates: list[int] | None = None, *,
              given_bands: list[str] | None = None, nodata: float | None = None,
              overlap: int | None = None, batch_size: int = 16, block: int = BLOCK,
              probabilities: bool = False, confidence: bool = False) -> SceneMap:
    """Map a scene with a trained run into a georeferenced GeoTIFF (see the module's text).

    Args:
        predictor: the run (:class:`geopeft.evaluate.predict.Predictor`; its model runs where it
            is, e.g. on the GPU).
        files: the scene's raster, or one raster per date of a time series.
        out: the GeoTIFF to write (replaced whole, never half-written).
        dates: a time series' dates (YYYYMMDD), one per file (default: each raster's
            ``TIFFTAG_DATETIME`` tag, when every raster has one).
        given_bands: the files' band names in file order (default: their band descriptions, or
            the order of the dataset's own files when the count matches).
        nodata: the input value that marks no data (default: the raster's own nodata value).
        overlap: segmentation: pixels by which neighbouring tiles overlap (default a quarter of
            the tile); ignored for one class per tile.
        batch_size: tiles per forward pass.
        block: output block side made at a time, in scene pixels (one class per tile: the
            whole tiles that fit in it, at least one).
        probabilities: add one band per class (probability, percent).
        confidence: add the top class's probability (percent).

    Raises:
        DataError: naming the file, option or date at fault, before anything is written.
    """
    import rasterio
    from rasterio.transform import Affine

    start = time.perf_counter()
    files = [Path(f) for f in files]
    _on_gpu(predictor)
    source = predictor.source
    if source.time_series:
        if dates is None:  # the dataset's file names, else the rasters' tags
            dates = source.file_dates(files) or tagged_dates(files)
        if dates is None and len(files) == 1 and not source.input_needs_dates:
            dates = [0]  # a dataset of undated images: one image, its date unknown
        if dates is None or len(dates) != len(files):
            raise DataError(f"{files[0]}: a time-series run maps one raster per date with its "
                            f"dates (--dates, YYYYMMDD, one per raster, or each raster's "
                            f"TIFFTAG_DATETIME tag): {len(files)} rasters, "
                            f"{0 if dates is None else len(dates)} dates")
        if list(dates) != sorted(set(dates)):
            raise DataError(f"--dates: {dates} are not strictly increasing (one raster per date, "
                            f"in date order)")
    elif len(files) != 1:
        raise DataError(f"{files[1]}: a run of {predictor.info.dataset} maps one raster at a "
                        f"time, not a series")
    if predictor.info.image_size is None:
        raise DataError(f"{predictor.model_dir}: the run's store records no sample side to tile by")
    th, tw = (int(v) for v in predictor.info.image_size)
    if batch_size < 1 or block < 1:
        raise DataError(f"batch size {batch_size} and block {block} must be positive")
    task = predictor.task
    classes = list(predictor.classes)
    if len(classes) >= NODATA:
        raise DataError(f"{predictor.model_dir}: {len(classes)} classes do not fit a uint8 map "
                        f"with nodata {NODATA}")
    per_tile = not task.dense
    if not per_tile:
        overlap = th // 4 if overlap is None else int(overlap)
        if not 0 <= overlap < min(th, tw):
            raise DataError(f"--overlap {overlap}: must be at least 0 and under the tile side "
                            f"{min(th, tw)}")
    with Scene(files, list(predictor.info.bands), source.dtype, tuple(source.file_bands),
               given_bands, nodata, source.band_aliases) as scene:
        where = str(files[0])
        if per_tile:
            ys = origins(scene.height, th, th, f"{where}: height")
            xs = origins(scene.width, tw, tw, f"{where}: width")
            shape = (len(ys), len(xs))
            transform = scene.transform * Affine.scale(tw, th)
        else:
            assert overlap is not None
            ys = origins(scene.height, th, th - overlap, f"{where}: height")
            xs = origins(scene.width, tw, tw - overlap, f"{where}: width")
            shape = (scene.height, scene.width)
            transform = scene.transform
        count = 1 + int(confidence) + (len(classes) if probabilities else 0)
        profile = {"driver": "GTiff", "height": shape[0], "width": shape[1], "count": count,
                   "dtype": "uint8", "nodata": NODATA, "crs": scene.crs, "transform": transform,
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                   "BIGTIFF": "IF_SAFER"}
        run = _Runner(predictor, dates, batch_size)
        # GDAL's block cache would otherwise grow with the scene up to 5 % of the machine's
        # memory: windows are read once, and written blocks are flushed as they complete
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), atomic_path(out) as tmp, \
                rasterio.open(tmp, "w", **profile) as dst:
            _describe(dst, predictor, classes, confidence, probabilities, per_tile, (th, tw))
            if per_tile:
                _per_tile(scene, run, dst, ys, xs, (th, tw), block, confidence, probabilities)
            else:
                _per_pixel(scene, run, dst, ys, xs, (th, tw), block, confidence, probabilities)
    seconds = time.perf_counter() - start
    log.info("%s: %dx%d %s from %d tiles (%d empty, not run) in %.1f s", out, shape[0], shape[1],
             "cells" if per_tile else "px", run.tiles, run.empty, seconds)
    return SceneMap(Path(out), per_tile, shape, (th, tw), run.tiles, run.empty, seconds)


def _on_gpu(predictor: Any) -> None:
    """Move the run's model to the GPU when there is one (tiles are batched there)."""
    import torch

    if torch.cuda.is_available():
        predictor.model.to("cuda")


class _Runner:
    """The run's model over batches of tiles: class probabilities, counted."""

    def __init__(self, predictor: Any, dates: list[int] | None, batch_size: int):
        self.predictor, self.dates, self.batch_size = predictor, dates, batch_size
        self.tiles = self.empty = 0

    def __call__(self, tiles: list[np.ndarray]) -> np.ndarray:
        from geopeft.models.inference import predict

        p = self.predictor
        days = None
        if p.source.time_series:
            tiles, days = p.cut_series(tiles, [list(self.dates or [])] * len(tiles),
                                    [f"tile {i}" for i in range(len(tiles))])
        x = np.stack(tiles).astype(np.float32)
        self.tiles += len(x)
        logits = predict(p.model, x, batch_size=self.batch_size, dates=days)
        return np.asarray(p.task.probabilities(logits), dtype=np.float32)


def _describe(dst: Any, predictor: Any, classes: list[str], confidence: bool,
              probabilities: bool, per_tile: bool, tile: tuple[int, int]) -> None:
    """Band descriptions, the class table in tags, and a colour table on the class band."""
    names = ["class"] + (["confidence"] if confidence else []) + (
        [f"p_{c}" for c in classes] if probabilities else [])
    for i, name in enumerate(names, start=1):
        dst.set_band_description(i, name)
    dst.update_tags(geopeft_model=str(predictor.model_dir), geopeft_dataset=predictor.info.dataset,
                    geopeft_map="one class per tile" if per_tile else "one class per pixel",
                    geopeft_tile=f"{tile[0]}x{tile[1]}", geopeft_nodata=str(NODATA),
                    geopeft_percent="confidence and p_* bands: probability in percent")
    dst.update_tags(1, **{str(i): c for i, c in enumerate(classes)})
    rng = np.random.default_rng(0)
    colours = {i: tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
               for i in range(len(classes))}
    colours[NODATA] = (0, 0, 0, 0)
    dst.write_colormap(1, colours)


def _write(dst: Any, window: Any, probs: np.ndarray, nodata: np.ndarray, confidence: bool,
           probabilities: bool) -> None:
    """One output window: class, confidence and class probabilities (C, h, w), nodata masked."""
    bands = [probs.argmax(0).astype(np.uint8)]
    if confidence:
        bands.append(_percent(probs.max(0)))
    if probabilities:
        bands.extend(_percent(probs))
    for i, band in enumerate(bands, start=1):
        band = np.where(nodata, NODATA, band).astype(np.uint8)
        dst.write(band, i, window=window)


def _per_tile(scene: Scene, run: _Runner, dst: Any, ys: np.ndarray, xs: np.ndarray,
              tile: tuple[int, int], block: int, confidence: bool, probabilities: bool) -> None:
    """One class per tile: cells in blocks of about ``block`` x ``block`` scene pixels."""
    from rasterio.windows import Window

    th, tw = tile
    block = max(1, block // max(th, tw))  # cells a side
    classes = len(run.predictor.classes)
    for i0 in range(0, len(ys), block):
        for j0 in range(0, len(xs), block):
            cy, cx = ys[i0 : i0 + block], xs[j0 : j0 + block]
            y0, x0 = int(cy[0]), int(cx[0])
            data, valid = scene.read(y0, x0, int(cy[-1]) + th - y0, int(cx[-1]) + tw - x0)
            probs = np.zeros((classes, len(cy), len(cx)), np.float32)
            empty = np.ones((len(cy), len(cx)), bool)
            cells = []
            for i, oy in enumerate(cy):
                for j, ox in enumerate(cx):
                    v = valid[oy - y0 : oy - y0 + th, ox - x0 : ox - x0 + tw]
                    if 1 - v.mean() > MAX_NODATA:
                        run.empty += 1
                        continue
                    cells.append((i, j, data[..., oy - y0 : oy - y0 + th, ox - x0 : ox - x0 + tw]))
            for batch in _batches(cells, run.batch_size):
                for (i, j, _), p in zip(batch, run([t for _, _, t in batch]), strict=True):
                    probs[:, i, j] = p
                    empty[i, j] = False
            _write(dst, Window(j0, i0, len(cx), len(cy)), probs, empty, confidence,
                   probabilities)


def _per_pixel(scene: Scene, run: _Runner, dst: Any, ys: np.ndarray, xs: np.ndarray,
               tile: tuple[int, int], block: int, confidence: bool, probabilities: bool) -> None:
    """One class per pixel: output blocks of ``block`` x ``block`` pixels, each blending the
    probabilities of the overlapping tiles that cover it."""
    from rasterio.windows import Window

    th, tw = tile
    weights = blend_weights(th, tw)
    classes = len(run.predictor.classes)
    for by in range(0, scene.height, block):
        for bx in range(0, scene.width, block):
            bh, bw = min(block, scene.height - by), min(block, scene.width - bx)
            ty = ys[(ys + th > by) & (ys < by + bh)]
            tx = xs[(xs + tw > bx) & (xs < bx + bw)]
            y0, x0 = int(ty[0]), int(tx[0])
            data, valid = scene.read(y0, x0, int(ty[-1]) + th - y0, int(tx[-1]) + tw - x0)
            acc = np.zeros((classes, bh, bw), np.float32)
            wsum = np.zeros((bh, bw), np.float32)
            todo = []
            for oy in ty:
                for ox in tx:
                    if not valid[oy - y0 : oy - y0 + th, ox - x0 : ox - x0 + tw].any():
                        run.empty += 1
                        continue
                    todo.append((int(oy), int(ox)))
            for batch in _batches(todo, run.batch_size):
                tiles = [data[..., oy - y0 : oy - y0 + th, ox - x0 : ox - x0 + tw]
                         for oy, ox in batch]
                for (oy, ox), p in zip(batch, run(tiles), strict=True):
                    sy0, sy1 = max(oy, by), min(oy + th, by + bh)
                    sx0, sx1 = max(ox, bx), min(ox + tw, bx + bw)
                    w = weights[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox]
                    acc[:, sy0 - by : sy1 - by, sx0 - bx : sx1 - bx] += (
                        p[:, sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] * w)
                    wsum[sy0 - by : sy1 - by, sx0 - bx : sx1 - bx] += w
            covered = wsum > 0
            probs = acc / np.where(covered, wsum, 1)
            nodata = ~covered | ~valid[by - y0 : by - y0 + bh, bx - x0 : bx - x0 + bw]
            _write(dst, Window(bx, by, bw, bh), probs, nodata, confidence, probabilities)


__all__ = ["BLOCK", "MAX_NODATA", "NODATA", "SCENE_SUFFIXES", "Scene", "SceneMap", "blend_weights",
           "map_scene", "origins", "scene_bands", "scene_side", "tagged_dates"]
