"""Whole-scene maps (issue 32, item 3): ``geopeft predict --model ... scene.tif --out map.tif``
tiles a raster of any size window by window and writes a georeferenced GeoTIFF: one class per
tile for a classification run, one class per pixel (overlapping tiles blended) for a segmentation
run on one raster per date. Each map is checked against the Predictor applied to the same tiles
(the path ``geopeft predict`` and the app already hold equal to the evaluation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import save_linear_run, save_utae_run
from rasterio.transform import Affine, from_origin

from geopeft.bands import EUROSAT_MS_FILE_ORDER
from geopeft.data.sources import DataError
from geopeft.data.sources.pastis import BANDS as PASTIS_BANDS
from geopeft.data.sources.pastis import read_geojson
from geopeft.data.synthetic_pastis import generate_pastis
from geopeft.evaluate import scene as scene_mod
from geopeft.evaluate.predict import Predictor
from geopeft.evaluate.scene import NODATA, blend_weights, map_scene, origins

TRANSFORM = from_origin(500_000, 4_600_000, 10, 10)
GEOPEFT = [sys.executable, "-m", "geopeft.cli"]


def write_raster(path: Path, data: np.ndarray, names: list[str] | None, nodata=None) -> Path:
    """``data`` (bands, H, W) as a GeoTIFF in EPSG:32631, its bands named ``names``."""
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32631",
                       transform=TRANSFORM, nodata=nodata) as f:
        f.write(data)
        for i, name in enumerate(names or [], start=1):
            f.set_band_description(i, name)
    return path


def read_map(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as f:
        return f.read(), {"crs": f.crs, "transform": f.transform, "nodata": f.nodata,
                          "descriptions": f.descriptions, "tags1": f.tags(1), "tags": f.tags()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_tiles_reach_the_edge_and_blend_weights_never_vanish():
    assert origins(106, 32, 32, "w").tolist() == [0, 32, 64, 74]
    assert origins(32, 32, 32, "w").tolist() == [0]
    assert origins(48, 24, 16, "w").tolist() == [0, 16, 24]
    with pytest.raises(DataError, match="scene.tif: height: 20 px, smaller than the run's tile "
                       "of 32 px"):
        origins(20, 32, 32, "scene.tif: height")
    w = blend_weights(5, 4)
    assert w.shape == (5, 4) and w.min() > 0 and w.max() == 1.0 and w[2, 1] == w[2, 2] == 1.0
    assert np.array_equal(w, w[::-1, ::-1])


@pytest.fixture(scope="module")
def ms_model(ms_store, tmp_path_factory):
    """A linear-probe run of the 32 x 32 EuroSAT-MS world (bands B04 B03 B02 B08 B8A B11)."""
    return save_linear_run(ms_store, tmp_path_factory.mktemp("ms") / "run" / "model")


@pytest.fixture(scope="module")
def ms_scene(world, tmp_path_factory):
    """A 64 x 106 scene of 13-band chips (EuroSAT's file order, B8A last), its bands named;
    the cell at row 1, column 0 all nodata (0)."""
    chips = []
    for f in sorted(world["ms"].rglob("*.tif"))[:7]:
        with rasterio.open(f) as src:
            chips.append(src.read())
    top = np.concatenate(chips[:3], axis=2)
    bottom = np.concatenate(chips[3:6], axis=2)
    data = np.concatenate([top, bottom], axis=1)
    data = np.concatenate([data, np.concatenate([chips[6][:, :, 22:]] * 2, axis=1)], axis=2)
    data[:, 32:64, 0:32] = 0
    assert data.shape == (13, 64, 106)
    path = write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", data,
                        list(EUROSAT_MS_FILE_ORDER), nodata=0)
    return path, data


def test_a_classification_scene_maps_one_class_per_tile(ms_model, ms_scene, tmp_path):
    """The command as the README gives it: a coarse map, one cell per 32 x 32 tile (the last
    column's tile flush with the scene's edge), in the scene's CRS with its transform scaled by
    the tile; each cell the class and probabilities the Predictor gives that tile; the nodata
    tile left nodata in every band and not run."""
    path, data = ms_scene
    out = tmp_path / "map.tif"
    r = subprocess.run([*GEOPEFT, "predict", "--model", str(ms_model), str(path), "--out",
                        str(out), "--confidence", "--probabilities"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"{out}: 2x4 map, one class per tile (32x32 px tiles: 7 run, "
                               f"1 empty) in ")
    bands, meta = read_map(out)
    predictor = Predictor(ms_model)
    classes = predictor.classes
    assert meta["crs"].to_epsg() == 32631 and meta["nodata"] == NODATA
    assert meta["transform"] == TRANSFORM * Affine.scale(32, 32)
    assert meta["descriptions"] == ("class", "confidence", *(f"p_{c}" for c in classes))
    assert all(meta["tags1"][str(i)] == c for i, c in enumerate(classes))
    assert meta["tags"]["geopeft_map"] == "one class per tile"
    pick = [list(EUROSAT_MS_FILE_ORDER).index(b) for b in predictor.info.bands]
    tiles = [(i, j, data[pick, y : y + 32, x : x + 32]) for i, y in enumerate([0, 32])
             for j, x in enumerate([0, 32, 64, 74]) if (i, j) != (1, 0)]
    preds = predictor.predict_arrays([t for _, _, t in tiles])
    assert bands.shape == (2 + len(classes), 2, 4)
    assert (bands[:, 1, 0] == NODATA).all()
    for (i, j, _), p in zip(tiles, preds, strict=True):
        top = np.sort(p.scores)[-2:]
        if top[1] - top[0] > 1e-4:  # float rounding between batchings cannot flip it
            assert bands[0, i, j] == int(np.argmax(p.scores)), (i, j)
        # percent, rounded: within one point of the Predictor's probabilities
        assert abs(int(bands[1, i, j]) - 100 * p.scores.max()) <= 1
        assert np.abs(bands[2:, i, j].astype(float) - 100 * p.scores).max() <= 1
    assert leftovers(tmp_path) == []


def test_a_scene_map_is_the_same_whatever_the_block(ms_model, ms_scene, tmp_path):
    """Memory is bounded by the block: one cell at a time gives the map of the whole at once
    (tiles run one by one both ways: bitwise)."""
    path, _ = ms_scene
    predictor = Predictor(ms_model)
    a = map_scene(predictor, [path], tmp_path / "a.tif", batch_size=1, confidence=True)
    b = map_scene(predictor, [path], tmp_path / "b.tif", batch_size=1, block=1, confidence=True)
    assert (a.tiles, a.empty, a.shape) == (b.tiles, b.empty, b.shape) == (7, 1, (2, 4))
    assert np.array_equal(read_map(a.out)[0], read_map(b.out)[0])


def test_a_scene_is_refused_by_name_and_nothing_is_left(ms_model, ms_scene, tmp_path,
                                                        monkeypatch):
    path, data = ms_scene
    predictor = Predictor(ms_model)
    out = tmp_path / "map.tif"

    def refused(files, match, **kw):
        with pytest.raises(DataError, match=match):
            map_scene(predictor, files, out, **kw)
        assert not out.exists() and leftovers(tmp_path) == []

    # without band names, 13 bands are read in the dataset's file order, as a chip is
    unnamed = write_raster(tmp_path / "unnamed.tif", data, None, nodata=0)
    named = map_scene(predictor, [path], tmp_path / "named.tif", batch_size=1)
    done = map_scene(predictor, [unnamed], out, batch_size=1)
    assert np.array_equal(read_map(done.out)[0], read_map(named.out)[0])
    out.unlink()
    # other counts need the names: --scene-bands, in file order
    order = ["B02", "B03", "B04", "B08", "B8A", "B11", "B01"]
    seven = write_raster(tmp_path / "seven.tif",
                         data[[list(EUROSAT_MS_FILE_ORDER).index(b) for b in order]], None,
                         nodata=0)
    refused([seven], f"{seven}: 7 bands without names .* not the 13 of the dataset's files; give "
            f"their order with --scene-bands.*the run takes B04,B03,B02,B08,B8A,B11")
    done = map_scene(predictor, [seven], out, batch_size=1, given_bands=order)
    assert np.array_equal(read_map(done.out)[0], read_map(named.out)[0])
    out.unlink()
    (tmp_path / "named.tif").unlink()
    refused([seven], "--scene-bands names 6", given_bands=order[:6])
    short = write_raster(tmp_path / "short.tif", data[:12], list(EUROSAT_MS_FILE_ORDER)[:12])
    refused([short], f"band 'B8A' is not available in {short}")
    floats = write_raster(tmp_path / "f.tif", data.astype(np.float32) / 1e4,
                          list(EUROSAT_MS_FILE_ORDER))
    refused([floats], f"{floats}: dtype float32, the run was trained on uint16 values")
    small = write_raster(tmp_path / "small.tif", data[:, :20, :20], list(EUROSAT_MS_FILE_ORDER))
    refused([small], f"{small}: height: 20 px, smaller than the run's tile of 32 px")
    refused([tmp_path / "none.tif"], f"{tmp_path / 'none.tif'}: no such file")
    (tmp_path / "bad.tif").write_bytes(b"not a raster")
    refused([tmp_path / "bad.tif"], "bad.tif: cannot be read as a raster")
    refused([path, path], "maps one raster at a time, not a series")

    # a crash half-way leaves nothing under the final name
    def boom(self, tiles):
        raise RuntimeError("killed")

    monkeypatch.setattr(scene_mod._Runner, "__call__", boom)
    with pytest.raises(RuntimeError, match="killed"):
        map_scene(predictor, [path], out)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A T = 6 U-TAE run of a 24 px PASTIS world, and a 48 x 48 scene of one raster per date
    (the first patch's dates; its quadrants the patch turned 0-3 quarter turns), a 6 x 6 corner
    of nodata (-32768) at every date."""
    tmp = tmp_path_factory.mktemp("series")
    pastis = tmp / "PASTIS"
    generate_pastis(pastis, n_patches=10, size=24, seed=4)
    model_dir, _, _ = save_utae_run(pastis, tmp)
    meta = read_geojson(pastis / "metadata.geojson")[0]
    patch = np.load(pastis / "DATA_S2" / f"S2_{meta['id']}.npy")  # (T, 10, 24, 24) int16
    top = np.concatenate([patch, np.rot90(patch, 1, axes=(2, 3))], axis=3)
    bottom = np.concatenate([np.rot90(patch, 2, axes=(2, 3)), np.rot90(patch, 3, axes=(2, 3))],
                            axis=3)
    data = np.ascontiguousarray(np.concatenate([top, bottom], axis=2))
    data[:, :, 42:, 42:] = -32768
    files = [write_raster(tmp / f"S2_{d}.tif", data[t], list(PASTIS_BANDS), nodata=-32768)
             for t, d in enumerate(meta["dates"])]
    return model_dir, files, list(meta["dates"]), data


def test_a_time_series_scene_maps_one_class_per_pixel(series, tmp_path):
    """One raster per date with ``--dates``: a full-resolution map in the scene's grid; with no
    overlap each tile's pixels are the Predictor's class map of that tile's series; nodata
    pixels are nodata in the map."""
    model_dir, files, dates, data = series
    out = tmp_path / "map.tif"
    r = subprocess.run([*GEOPEFT, "predict", "--model", str(model_dir), "--out", str(out),
                        "--overlap", "0", "--dates", ",".join(map(str, dates)),
                        *map(str, files)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "48x48 map, one class per pixel (24x24 px tiles: 4 run, 0 empty)" in r.stdout
    bands, meta = read_map(out)
    assert bands.shape == (1, 48, 48) and meta["transform"] == TRANSFORM
    predictor = Predictor(model_dir)
    quads = [(y, x) for y in (0, 24) for x in (0, 24)]
    preds = predictor.predict_arrays([data[:, :, y : y + 24, x : x + 24] for y, x in quads],
                                     [dates] * 4)
    expected = np.zeros((48, 48), np.int64)
    for (y, x), p in zip(quads, preds, strict=True):
        expected[y : y + 24, x : x + 24] = p.label_map
    expected[42:, 42:] = NODATA
    assert np.array_equal(bands[0], expected)
    # without --dates, each raster's TIFFTAG_DATETIME tag gives its date
    for f, d in zip(files, dates, strict=True):
        with rasterio.open(f, "r+") as dst:
            dst.update_tags(TIFFTAG_DATETIME=f"{d // 10000}:{d // 100 % 100:02d}:{d % 100:02d} "
                                             f"10:30:00")
    tagged = map_scene(predictor, files, tmp_path / "tagged.tif", overlap=0)
    assert np.array_equal(read_map(tagged.out)[0], bands)
    for f in files:
        with rasterio.open(f, "r+") as dst:
            dst.update_tags(TIFFTAG_DATETIME="")
    # the dates are needed, in order, one per raster
    predictor = Predictor(model_dir)
    for kw, match in (({}, "one raster per date with its dates"),
                      ({"dates": dates[::-1]}, "not strictly increasing")):
        with pytest.raises(DataError, match=match):
            map_scene(predictor, files, tmp_path / "x.tif", **kw)
    # a raster of another grid is named with the first's
    moved = tmp_path / "moved.tif"
    with rasterio.open(files[1]) as f:
        arr = f.read()
    with rasterio.open(moved, "w", driver="GTiff", width=48, height=48, count=10, dtype="int16",
                       crs="EPSG:32631", transform=from_origin(500_010, 4_600_000, 10, 10)) as f:
        f.write(arr)
    with pytest.raises(DataError, match=f"{moved}: transform .* {files[0]} has"):
        map_scene(predictor, [files[0], moved, *files[2:]], tmp_path / "x.tif", dates)
    assert not (tmp_path / "x.tif").exists()


def test_overlapping_tiles_blend_the_same_whatever_the_block(series, tmp_path):
    """Tiles overlapping by 8 px (origins 0, 16, 24): the blended map made in 16 px blocks is
    the map made at once, bitwise (the tiles covering a pixel are summed in one order); the
    class probabilities of a covered pixel sum to 100 % within rounding."""
    model_dir, files, dates, _ = series
    predictor = Predictor(model_dir)
    kw = {"overlap": 8, "batch_size": 1, "probabilities": True}
    a = map_scene(predictor, files, tmp_path / "a.tif", dates, **kw)
    b = map_scene(predictor, files, tmp_path / "b.tif", dates, block=16, **kw)
    assert a.tiles == 9 and b.tiles > a.tiles  # a tile over several blocks runs for each
    (ma, _), (mb, _) = read_map(a.out), read_map(b.out)
    assert np.array_equal(ma, mb)
    covered = ma[0] != NODATA
    total = ma[1:].astype(int).sum(0)[covered]
    assert np.abs(total - 100).max() <= len(predictor.classes) // 2 + 1
