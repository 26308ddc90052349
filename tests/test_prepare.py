import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from geopeft.bands import EUROSAT_MS_FILE_ORDER, BandError, band_indices
from geopeft.data.dataset import load_split, store_info
from geopeft.data.prepare import open_store, prepare
from geopeft.data.sources import DataError


def _open(path):
    return xr.open_zarr(path, zarr_format=3, consolidated=False)


def test_round_trip_selects_bands_by_name(world, ms_store):
    ds = _open(ms_store)
    assert list(ds.band.values) == ["B04", "B03", "B02", "B08", "B8A", "B11"]
    assert ds.image.dtype == np.uint16 and ds.image.dims == ("sample", "band", "y", "x")
    i = int(np.flatnonzero(ds.name.values == "River_2")[0])
    with rasterio.open(world["ms"] / "EuroSAT_MS" / "River" / "River_2.tif") as src:
        raw = src.read()
    for k, band in enumerate(ds.band.values):
        assert np.array_equal(ds.image.values[i, k], raw[EUROSAT_MS_FILE_ORDER.index(band)])
    assert ds.attrs["classes"][int(ds.label.values[i])] == "River"


def test_splits_follow_split_files(world, ms_store):
    ds = _open(ms_store)
    test_names = {n.rsplit(".", 1)[0] for n in (world["ms"] / "eurosat-test.txt").read_text().split()}
    assert set(ds.name.values[ds.split.values == "test"]) == test_names
    assert ds.attrs["counts"]["train"] + ds.attrs["counts"]["val"] + ds.attrs["counts"]["test"] == 100


def test_norm_stats_from_train_split_only(world, ms_store, tmp_path):
    ds = _open(ms_store)
    img = ds.image.values.astype(np.float64)
    split = ds.split.values
    train = img[split == "train"]
    assert np.allclose(ds.attrs["norm_mean"], train.mean(axis=(0, 2, 3)))
    assert np.allclose(ds.attrs["norm_std"], train.std(axis=(0, 2, 3)))
    assert not np.allclose(img.mean(axis=(0, 2, 3)), ds.attrs["norm_mean"])
    # brightening every val/test file leaves the statistics of a new store unchanged
    raw = tmp_path / "raw"
    shutil.copytree(world["ms"], raw)
    others = (raw / "eurosat-val.txt").read_text().split() + (raw / "eurosat-test.txt").read_text().split()
    for name in others:
        tif = raw / "EuroSAT_MS" / name.rsplit("_", 1)[0] / name.replace(".jpg", ".tif")
        with rasterio.open(tif) as src:
            prof, data = src.profile, src.read()
        with rasterio.open(tif, "w", **prof) as dst:
            dst.write(data + 5000)
    bands = list(ds.band.values)
    poisoned = prepare("eurosat_ms", raw, bands, tmp_path / "p.zarr")
    assert np.allclose(poisoned["norm_mean"], ds.attrs["norm_mean"])
    assert np.allclose(poisoned["norm_std"], ds.attrs["norm_std"])


def test_rgb_store_and_loading(rgb_store):
    info = store_info(rgb_store)
    assert info.bands == ["B04", "B03", "B02"] and info.value_scale == pytest.approx(1 / 255)
    tr = load_split(rgb_store, "train")
    # the store's dtype in memory (a quarter of float32's), the split's samples only
    assert tr.x.dtype == np.uint8 and tr.x.shape[1:] == (3, 32, 32)
    ds = open_store(rgb_store)
    train_idx = np.flatnonzero(ds["split"].values == "train")
    assert np.array_equal(tr.x, ds["image"].values[train_idx])
    assert len(info.fingerprint) == 64


def test_fingerprint_is_stable(world, ms_store, tmp_path):
    again = tmp_path / "again.zarr"
    prepare("eurosat_ms", world["ms"], ["B04", "B03", "B02", "B08", "B8A", "B11"], again)
    assert _open(again).attrs["fingerprint"] == _open(ms_store).attrs["fingerprint"]


def test_band_names():
    assert band_indices(["B8A"], EUROSAT_MS_FILE_ORDER) == [12]
    with pytest.raises(BandError, match="unknown band name 'B13'"):
        band_indices(["B13"], EUROSAT_MS_FILE_ORDER)
    with pytest.raises(BandError, match="'B08' is not available in eurosat_rgb"):
        band_indices(["B08"], ("B04", "B03", "B02"), where="eurosat_rgb")


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def broken(world, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(world["ms"], raw)
    return raw


def _no_store_left(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_wrong_band_count_named(broken, tmp_path):
    bad = broken / "EuroSAT_MS" / "Forest" / "Forest_3.tif"
    with rasterio.open(bad) as src:
        prof, data = src.profile, src.read()
    prof.update(count=12)
    with rasterio.open(bad, "w", **prof) as dst:
        dst.write(data[:12])
    out = tmp_path / "out.zarr"
    with pytest.raises(DataError, match=r"Forest_3\.tif: has 12 bands, eurosat_ms needs 13"):
        prepare("eurosat_ms", broken, ["B04"], out)
    assert _no_store_left(out)


def test_wrong_dtype_named(broken, tmp_path):
    bad = broken / "EuroSAT_MS" / "Pasture" / "Pasture_1.tif"
    with rasterio.open(bad) as src:
        prof, data = src.profile, src.read()
    prof.update(dtype="float32")
    with rasterio.open(bad, "w", **prof) as dst:
        dst.write(data.astype("float32"))
    with pytest.raises(DataError, match=r"Pasture_1\.tif: dtype float32, eurosat_ms needs uint16"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")


def test_missing_raw_file_named(broken, tmp_path):
    (broken / "EuroSAT_MS" / "River" / "River_1.tif").unlink()
    with pytest.raises(DataError, match=r"River_1\.tif: listed in eurosat-\w+\.txt but missing"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")


def test_corrupt_tif_named(broken, tmp_path):
    (broken / "EuroSAT_MS" / "River" / "River_1.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=r"River_1\.tif: cannot be read as GeoTIFF"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")


def test_missing_split_file_and_unknown_class(broken, tmp_path):
    (broken / "EuroSAT_MS" / "Glacier").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['Glacier'\]"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")
    (broken / "EuroSAT_MS" / "Glacier").rmdir()
    (broken / "eurosat-val.txt").unlink()
    with pytest.raises(DataError, match=r"eurosat-val\.txt: split file not found"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")


def test_unknown_band_leaves_nothing(world, tmp_path):
    out = tmp_path / "o.zarr"
    with pytest.raises(BandError, match="B13"):
        prepare("eurosat_ms", world["ms"], ["B04", "B13"], out)
    assert _no_store_left(out)


def test_failed_rewrite_keeps_previous_store(world, broken, tmp_path):
    out = tmp_path / "keep.zarr"
    prepare("eurosat_ms", world["ms"], ["B04"], out)
    before = _open(out).attrs["fingerprint"]
    (broken / "EuroSAT_MS" / "River" / "River_1.tif").write_bytes(b"junk")
    with pytest.raises(DataError):
        prepare("eurosat_ms", broken, ["B04"], out)
    assert _open(out).attrs["fingerprint"] == before


def _first_listed(raw):
    stem = Path((raw / "eurosat-train.txt").read_text().split()[0]).stem
    return raw / "EuroSAT_MS" / stem.rsplit("_", 1)[0] / f"{stem}.tif"


def test_a_malformed_first_file_is_blamed_not_the_good_ones(broken, tmp_path):
    """Each file is checked against the dataset's declared shape, not against the first one."""
    bad = _first_listed(broken)
    with rasterio.open(bad) as src:
        prof, data = src.profile, src.read()
    prof.update(width=data.shape[2] // 2, height=data.shape[1] // 2)
    with rasterio.open(bad, "w", **prof) as dst:
        dst.write(data[:, ::2, ::2])
    side = data.shape[1]
    with pytest.raises(DataError, match=rf"{bad.name}: size {side // 2}x{side // 2}, eurosat_ms "
                                        rf"patches are {side}x{side}"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")
    attrs = prepare("eurosat_ms", broken, ["B04"], tmp_path / "skip.zarr",
                    options={"skip_corrupt": True})
    assert attrs["skipped"] == 1 and attrs["skipped_samples"][0][0] == bad.stem  # only the bad one
    assert bad.stem not in set(map(str, _open(tmp_path / "skip.zarr").name.values))


def test_real_eurosat_is_64_px_and_a_world_declares_its_own_size(broken):
    from geopeft.data.sources import SYNTHETIC_MARKER, get_source

    src = get_source("eurosat_ms")
    assert src.declared_size(broken) == json.loads((broken / SYNTHETIC_MARKER).read_text())["size"]
    (broken / SYNTHETIC_MARKER).unlink()
    assert src.declared_size(broken) == 64  # the published EuroSAT patches


def test_an_empty_split_file_is_refused(broken, tmp_path):
    (broken / "eurosat-test.txt").write_text("")
    with pytest.raises(DataError, match=r"eurosat-test\.txt: split file is empty"):
        prepare("eurosat_ms", broken, ["B04"], tmp_path / "o.zarr")
