"""Inference on samples as users hold them (``geopeft predict``, the app, the MLflow model): each
dataset's reader of single samples, and the Predictor against the evaluation's own path."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import save_utae_run
from PIL import Image

from geopeft.data.dataset import load_split
from geopeft.data.sources import DataError, get_source
from geopeft.data.sources.bigearthnet import read_bands
from geopeft.data.sources.pastis import BANDS as PASTIS_BANDS
from geopeft.data.sources.pastis import read_geojson
from geopeft.data.synthetic_bigearthnet import generate_bigearthnet
from geopeft.data.synthetic_pastis import generate_pastis
from geopeft.evaluate.predict import Predictor
from geopeft.models.inference import predict


def _tif13(path: Path, values) -> None:
    data = np.stack([np.full((8, 8), v, np.uint16) for v in values])
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=13,
                       dtype="uint16") as f:
        f.write(data)


def test_eurosat_ms_input_picks_bands_by_name_b8a_last(tmp_path):
    src = get_source("eurosat_ms")
    _tif13(tmp_path / "a.tif", range(13))  # file order B01..B12, then B8A
    image, dates = src.read_input(tmp_path / "a.tif", ["B8A", "B04", "B08"], {})
    assert dates is None and image[:, 0, 0].tolist() == [12, 3, 7]
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.jpg")
    with pytest.raises(DataError, match=r"rgb.jpg: has 3 bands, eurosat_ms needs 13"):
        src.read_input(tmp_path / "rgb.jpg", ["B04"], {})


def test_eurosat_rgb_input_takes_jpeg_and_png_refuses_others(tmp_path):
    src = get_source("eurosat_rgb")
    arr = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    image, _ = src.read_input(tmp_path / "a.png", ["B02", "B04"], {})
    assert np.array_equal(image, arr.transpose(2, 0, 1)[[2, 0]])  # file order R, G, B
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    with pytest.raises(DataError, match="grey.png: image mode L, eurosat_rgb needs RGB"):
        src.read_input(tmp_path / "grey.png", ["B04"], {})
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="x.png: cannot be read as a JPEG or PNG"):
        src.read_input(tmp_path / "x.png", ["B04"], {})


@pytest.fixture(scope="module")
def ben(tmp_path_factory):
    root = tmp_path_factory.mktemp("ben") / "raw"
    generate_bigearthnet(root, n_patches=3, seed=1, cloudy_share=0.0)
    return root


def _patch(ben: Path) -> Path:
    return next(p for p in sorted((ben / "BigEarthNet-S2").glob("*/*")) if p.is_dir())


def test_bigearthnet_input_is_a_patch_folder_or_its_zip(ben, tmp_path):
    src = get_source("bigearthnet_s2")
    folder = _patch(ben)
    bands = ["B02", "B11", "B8A"]
    expected = read_bands(folder, folder.name, bands, 24, "bilinear")
    image, _ = src.read_input(folder, bands, {"size": 24})
    assert np.array_equal(image, expected)
    archive = Path(shutil.make_archive(str(tmp_path / "patch"), "zip", folder))
    image, _ = src.read_input(archive, bands, {"size": 24})
    assert np.array_equal(image, expected)
    # the folder zipped with its name inside (as a file manager zips it) reads the same
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"{folder.name}/{f.name}")
    assert np.array_equal(src.read_input(nested, bands, {"size": 24})[0], expected)


def test_bigearthnet_input_errors_name_the_archive(ben, tmp_path):
    src = get_source("bigearthnet_s2")
    folder = _patch(ben)
    lacking = tmp_path / "lacking.zip"
    with zipfile.ZipFile(lacking, "w") as z:
        for f in folder.glob("*.tif"):
            if not f.name.endswith("_B11.tif"):
                z.write(f, f.name)
    with pytest.raises(DataError, match=r"lacking.zip: band B11 missing") as err:
        src.read_input(lacking, ["B02", "B11"], {"size": 24})
    assert "geopeft-patch-" not in str(err.value)  # not the temporary folder
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        for p in sorted((ben / "BigEarthNet-S2").glob("*/*"))[:2]:
            for f in p.glob("*_B02.tif"):
                z.write(f, f.name)
    with pytest.raises(DataError, match="found patches"):
        src.read_input(two, ["B02"], {"size": 24})
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.zip: cannot be read as a zip archive"):
        src.read_input(tmp_path / "bad.zip", ["B02"], {"size": 24})
    with pytest.raises(DataError, match="a.tif: a BigEarthNet patch is a folder"):
        (tmp_path / "a.tif").write_bytes(b"")
        src.read_input(tmp_path / "a.tif", ["B02"], {"size": 24})


class _KeptTemporaryDirectory:
    """``tempfile.TemporaryDirectory`` that keeps its folder, to see what was written in it."""

    made: list[Path] = []

    def __init__(self, *args, **kwargs):
        self.name = tempfile.mkdtemp(*args, **kwargs)
        self.made.append(Path(self.name))

    def __enter__(self):
        return self.name

    def __exit__(self, *exc):
        return None


def _bomb_patch(folder: Path, path: Path) -> Path:
    """The patch zipped with a bomb beside its files: 3 MiB of zeros as another band's file."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            if not f.name.endswith("_B12.tif"):
                z.write(f, f.name)
        z.writestr(f"{folder.name}_B12.tif", bytes(3 << 20))
    return path


def test_an_uploaded_patch_unpacks_only_the_bands_the_run_takes(ben, tmp_path, monkeypatch):
    src = get_source("bigearthnet_s2")
    folder = _patch(ben)
    bands = ["B02", "B11", "B8A"]
    archive = _bomb_patch(folder, tmp_path / "patch.zip")
    monkeypatch.setattr(tempfile, "TemporaryDirectory", _KeptTemporaryDirectory)
    _KeptTemporaryDirectory.made.clear()
    image, _ = src.read_input(archive, bands, {"size": 24})
    assert np.array_equal(image, read_bands(folder, folder.name, bands, 24, "bilinear"))
    (unpacked,) = _KeptTemporaryDirectory.made
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(f"{folder.name}_{b}.tif"
                                                                for b in bands)


def test_an_uploaded_patch_over_the_upload_limit_is_refused_before_writing(ben, tmp_path,
                                                                            monkeypatch):
    from geopeft import limits

    src = get_source("bigearthnet_s2")
    folder = _patch(ben)
    bands = ["B02", "B11"]
    archive = _bomb_patch(folder, tmp_path / "patch.zip")
    needed = sum((folder / f"{folder.name}_{b}.tif").stat().st_size for b in bands)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", _KeptTemporaryDirectory)
    _KeptTemporaryDirectory.made.clear()
    # the bands the run takes fit; the bomb beside them is never unpacked, so never counted
    monkeypatch.setattr(limits, "DEFAULT", limits.Limits(max_upload_extract_bytes=needed))
    assert src.read_input(archive, bands, {"size": 24})[0].shape == (2, 24, 24)
    monkeypatch.setattr(limits, "DEFAULT", limits.Limits(max_upload_extract_bytes=needed - 1))
    with pytest.raises(DataError) as err:
        src.read_input(archive, bands, {"size": 24})
    assert str(err.value) == (f"{archive}: its members unpack to {needed:,} bytes, over the limit "
                              f"of {needed - 1:,} bytes (limits.max_upload_extract_bytes)")
    assert not list(_KeptTemporaryDirectory.made[-1].iterdir())  # refused before writing


@pytest.fixture(scope="module")
def pastis(tmp_path_factory):
    root = tmp_path_factory.mktemp("pastis") / "PASTIS"
    generate_pastis(root, n_patches=10, size=24, seed=4)
    return root


def test_pastis_input_needs_its_dates(pastis, tmp_path):
    src = get_source("pastis")
    meta = read_geojson(pastis / "metadata.geojson")[0]
    npy = pastis / "DATA_S2" / f"S2_{meta['id']}.npy"
    raw = np.load(npy)
    image, dates = src.read_input(npy, ["B08", "B02"], {}, meta["dates"])
    assert dates == meta["dates"]
    assert np.array_equal(image, raw[:, [PASTIS_BANDS.index("B08"), 0]])
    with pytest.raises(DataError, match=f"S2_{meta['id']}.npy: a time series needs its "
                       f"{len(raw)} acquisition dates"):
        src.read_input(npy, ["B02"], {})
    with pytest.raises(DataError, match=f"{len(raw)} images but 2 dates"):
        src.read_input(npy, ["B02"], {}, meta["dates"][:2])
    with pytest.raises(DataError, match="not strictly increasing"):
        src.read_input(npy, ["B02"], {}, meta["dates"][::-1])
    with pytest.raises(DataError, match="date 2019133 is not YYYYMMDD"):
        src.read_input(npy, ["B02"], {}, [2019133] + meta["dates"][1:])
    np.save(tmp_path / "f.npy", raw.astype(np.float32))
    with pytest.raises(DataError, match="f.npy: dtype float32, PASTIS DATA_S2 is int16"):
        src.read_input(tmp_path / "f.npy", ["B02"], {}, meta["dates"])
    np.save(tmp_path / "s.npy", raw[:, :3])
    with pytest.raises(DataError, match=r"s.npy: shape \(\d+, 3, 24, 24\), a PASTIS patch is"):
        src.read_input(tmp_path / "s.npy", ["B02"], {}, meta["dates"])


@pytest.fixture(scope="module")
def seg_run(pastis, tmp_path_factory):
    """A U-TAE (random weights, batch-norm statistics moved) saved as a T = 6 run of PASTIS."""
    return save_utae_run(pastis, tmp_path_factory.mktemp("segrun"))


def test_a_time_series_predicts_as_its_evaluation(seg_run, pastis):
    """The npy of a test patch with its dates, cut by the Predictor, gives the class map the
    model gives that patch of the store as the evaluation loads it (nested subset, date order,
    padding masked)."""
    from geopeft.spec import JobSpec

    model_dir, model, store = seg_run
    row = JobSpec.from_dict(json.loads((model_dir / "run.json").read_text())["spec"]).row
    test = load_split(store, "test", temporal=row.temporal)
    import xarray as xr

    ds = xr.open_zarr(store, zarr_format=3, consolidated=False)
    names = ds.name.values[ds.split.values == "test"]
    meta = {str(m["id"]): m["dates"] for m in read_geojson(pastis / "metadata.geojson")}
    files = [pastis / "DATA_S2" / f"S2_{n}.npy" for n in names]
    predictor = Predictor(model_dir)
    preds = predictor.predict_files(files, [meta[str(n)] for n in names])
    expected = predict(model, test.x, dates=test.dates).argmax(1)
    assert len(preds) == len(names) >= 1
    for p, e in zip(preds, expected, strict=True):
        assert p.task.name == "segmentation" and np.array_equal(p.label_map, e)
        assert p.scores.sum() == pytest.approx(1.0) and len(p.classes) == 19  # void left out
        assert p.labels[0] == p.classes[int(np.bincount(e.ravel()).argmax())]


def test_predict_cli_writes_maps_and_takes_dates_from_the_metadata(seg_run, pastis, tmp_path):
    model_dir, _, _ = seg_run
    meta = read_geojson(pastis / "metadata.geojson")[:2]
    files = [str(pastis / "DATA_S2" / f"S2_{m['id']}.npy") for m in meta]
    geopeft = [sys.executable, "-m", "geopeft.cli"]
    r = subprocess.run([*geopeft, "predict", "--model", str(model_dir), "--metadata",
                        str(pastis / "metadata.geojson"), "--maps", str(tmp_path / "maps"), *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["file"] for row in rows] == files
    expected = Predictor(model_dir).predict_files([Path(f) for f in files],
                                                  [m["dates"] for m in meta])
    for row, p in zip(rows, expected, strict=True):
        saved = np.load(row["map"])
        assert saved.dtype == np.uint8 and np.array_equal(saved, p.label_map)
        assert row["classes"].split(":")[0] == p.labels[0]
    # --dates given per file reads the same; a file without dates is named
    r2 = subprocess.run([*geopeft, "predict", "--model", str(model_dir), "--dates",
                         ",".join(map(str, meta[0]["dates"])), files[0]],
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and r2.stdout.splitlines()[1].split(",")[0] == files[0]
    r3 = subprocess.run([*geopeft, "predict", "--model", str(model_dir), files[0]],
                        capture_output=True, text=True, timeout=300)
    assert r3.returncode != 0 and f"S2_{meta[0]['id']}.npy: a time series needs" in r3.stderr
