"""Segmentation and time series of your own (issue 32, items 1 and 2): image and mask rasters
declared in ``data.generic`` with ``task: segmentation``; per-date rasters grouped by a sample
column, one raster stacking its dates, or one undated image per sample; dates from the table,
the file names or the rasters' TIFFTAG_DATETIME; the ignored mask value becomes the void class.
Prepared into PASTIS's layout, so the time-series models train on it. The fields are
``tests/data/own_fields`` (``scripts/make_own_fields.py``)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import run_study_header
from rasterio.transform import from_origin
from test_generic import table, write_table

from geopeft.data.dataset import store_info
from geopeft.data.prepare import prepare
from geopeft.data.sources import DataError, register_generic
from geopeft.data.sources.generic import parse_date, spatial_blocks

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ROOT / "tests" / "data" / "own_fields"
CLASSES = ["background", "wheat", "maize"]
BANDS = ["B02", "B03", "B04", "B08"]
DATES = [20200415, 20200615, 20200815]


def declaration(**over) -> dict:
    """The example's declaration as the schema fills it."""
    decl = {"task": "segmentation", "table": "samples.csv", "classes": CLASSES,
            "bands": ["blue", "green", "red", "nir"],
            "band_map": {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"},
            "path_column": "path", "label_column": "label", "label_separator": ";",
            "mask_column": "mask", "ignore_value": 255, "sample_column": "field",
            "date_pattern": r"_(\d{8})\.tif$", "value_scale": 1e-4,
            "split": {"method": "spatial", "fractions": [0.6, 0.2, 0.2], "seed": 0,
                      "block": 320.0}}
    decl.update(over)
    return {k: v for k, v in decl.items() if v is not None}


def raster(path: Path, data: np.ndarray, left: float = 500_000, tags: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32631",
                       transform=from_origin(left, 4_600_000, 10, 10)) as f:
        f.write(data)
        if tags:
            f.update_tags(**tags)


def test_per_date_rasters_and_masks_prepare_as_a_time_series_store(tmp_path):
    """The fields' store: each field's three rasters in date order (dates from the file names),
    bands picked by their Sentinel-2 names, the mask's classes kept and its 255 pixels made the
    void class, the dates and their number per sample, statistics from the train split only, and
    whole 320 m blocks of the rasters' own bounds in each split."""
    register_generic("own_fields", declaration())
    out = tmp_path / "f.zarr"
    attrs = prepare("own_fields", FIELDS, BANDS, out)
    ds = xr.open_zarr(out, zarr_format=3, consolidated=False)
    info = store_info(out)
    assert info.classes == [*CLASSES, "void"] and info.void_class == 3
    assert ds.image.dims == ("sample", "time", "band", "y", "x") and ds.image.shape[1:] == (
        3, 4, 16, 16)
    assert ds.label.dims == ("sample", "y", "x")
    assert (ds.dates.values == DATES).all() and (ds.n_dates.values == 3).all()
    names = [str(n) for n in ds.name.values]
    assert sorted(names) == [f"f{k:02d}" for k in range(32)]
    k = names.index("f05")
    for t, date in enumerate(DATES):
        with rasterio.open(FIELDS / "fields" / "f05" / f"S2_{date}.tif") as f:
            assert np.array_equal(ds.image.values[k, t], f.read())  # blue green red nir = B02..
    with rasterio.open(FIELDS / "masks" / "f05.tif") as f:
        mask = f.read(1)
    label = ds.label.values[k]
    assert np.array_equal(label[mask == 255], np.full((mask == 255).sum(), 3))
    assert np.array_equal(label[mask != 255], mask[mask != 255])
    train = ds.image.values[ds.split.values == "train"].astype(np.float64)
    assert np.allclose(info.norm_mean, train.mean(axis=(0, 1, 3, 4)), rtol=1e-5)
    assert attrs["counts"]["val"] > 0 and attrs["counts"]["test"] > 0
    centres = []
    for n in names:
        with rasterio.open(FIELDS / "fields" / n / f"S2_{DATES[0]}.tif") as f:
            b = f.bounds
            centres.append(((b.left + b.right) / 2, (b.bottom + b.top) / 2))
    blocks = spatial_blocks(np.array(centres), 320.0)
    for b in np.unique(blocks):
        assert len(set(ds.split.values[blocks == b])) == 1
    assert info.generic["dated"] is True


def test_stacked_tagged_and_undated_rasters(tmp_path):
    """The same samples three ways: one raster stacking two dates (dates x bands) with its
    dates in the table; per-date rasters dated by their TIFFTAG_DATETIME; one undated image per
    sample (n_dates 1, date 0), its mask paired by name (mask_pattern). Each reads the same
    pixels, and a prediction reads a raster as the dataset holds them."""
    rng = np.random.default_rng(0)
    images = rng.integers(1, 5000, (9, 2, 4, 16, 16)).astype(np.uint16)
    masks = rng.integers(0, 3, (9, 16, 16)).astype(np.uint8)
    masks[:, 0, :] = 255
    stacked, tagged, single = tmp_path / "stacked", tmp_path / "tagged", tmp_path / "single"
    rows: dict[str, list[dict]] = {"stacked": [], "tagged": [], "single": []}
    for k in range(9):
        left = 500_000 + 200 * k
        for root in (stacked, tagged, single):
            raster(root / "masks" / f"s{k}.tif", masks[k][None], left)
        raster(stacked / f"s{k}.tif", images[k].reshape(8, 16, 16), left)
        rows["stacked"].append({"path": f"s{k}.tif", "mask": f"masks/s{k}.tif",
                                "dates": "2021-03-01;2021-05-01",
                                "split": ("train", "val", "test")[k % 3]})
        for t, date in enumerate(("2021:03:01 10:30:00", "2021:05:01 10:30:00")):
            raster(tagged / f"s{k}" / f"t{t}.tif", images[k, t], left,
                   {"TIFFTAG_DATETIME": date})
            rows["tagged"].append({"sample": f"s{k}", "path": f"s{k}/t{t}.tif",
                                   "mask": f"masks/s{k}.tif",
                                   "split": ("train", "val", "test")[k % 3]})
        raster(single / f"s{k}.tif", images[k, 0], left)
        rows["single"].append({"path": f"s{k}.tif", "split": ("train", "val", "test")[k % 3]})
    for name, root in (("stacked", stacked), ("tagged", tagged), ("single", single)):
        write_table(root / "t.csv", rows[name])
    common = {"table": "t.csv", "split_column": "split", "split": {"method": "table"},
              "sample_column": None, "date_pattern": None, "mask_column": "mask"}
    decls = {"stacked": declaration(**common, date_column="dates"),
             "tagged": declaration(**{**common, "sample_column": "sample"}),
             "single": declaration(**{**common, "mask_column": None,
                                      "mask_pattern": "masks/{stem}.tif"})}
    for name, root in (("stacked", stacked), ("tagged", tagged), ("single", single)):
        register_generic(f"own_{name}", decls[name])
        out = tmp_path / f"{name}.zarr"
        prepare(f"own_{name}", root, BANDS, out)
        ds = xr.open_zarr(out, zarr_format=3, consolidated=False)
        order = [int(str(n).removeprefix("s").removesuffix(".tif")) for n in ds.name.values]
        if name == "single":
            assert (ds.n_dates.values == 1).all() and (ds.dates.values == 0).all(), name
            assert np.array_equal(ds.image.values[:, 0], images[order, 0])
        else:
            assert (ds.dates.values == [20210301, 20210501]).all(), name
            assert np.array_equal(ds.image.values, images[order]), name
        expected = np.where(masks[order] == 255, 3, masks[order])
        assert np.array_equal(ds.label.values, expected), name
        assert store_info(out).generic["dated"] is (name != "single")
    # a prediction reads the raster as the dataset holds it: dates given, tagged, or none
    src = register_generic("own_stacked", decls["stacked"])
    x, d = src.read_input(stacked / "s0.tif", BANDS, {}, [20210301, 20210501])
    assert d == [20210301, 20210501] and np.array_equal(x, images[0])
    with pytest.raises(DataError, match=r"s0.tif: own_stacked is a time series: give the "
                                        r"raster's dates"):
        src.read_input(stacked / "s0.tif", BANDS, {})
    x, d = register_generic("own_tagged", decls["tagged"]).read_input(tagged / "s0" / "t1.tif",
                                                                      BANDS, {})
    assert d == [20210501] and np.array_equal(x[0], images[0, 1])
    x, d = register_generic("own_single", decls["single"]).read_input(single / "s0.tif",
                                                                      BANDS, {})
    assert d == [0] and x.shape == (1, 4, 16, 16)


def test_dates_are_read_as_written():
    assert [parse_date(t, "here") for t in ("20200415", "2020-04-15", "2020:04:15 10:00:00",
                                             "2020-04-15T10:00")] == [20200415] * 4
    for bad in ("2020-13-01", "15/04/2020", "2020041", ""):
        with pytest.raises(DataError, match=f"here: {re.escape(repr(bad))} is not a date"):
            parse_date(bad, "here")


def test_each_bad_segmentation_input_is_named_and_nothing_is_written(tmp_path):
    """One clear error per case, naming the table's row and the file, or the key; nothing under
    the store's final name."""
    rows = table(FIELDS / "samples.csv")

    def case(name: str, edit, match: str, **over) -> None:
        raw = tmp_path / name
        shutil.copytree(FIELDS, raw)
        rs = [dict(r) for r in rows]
        edit(raw, rs)
        write_table(raw / "samples.csv", rs)
        out = tmp_path / f"{name}.zarr"
        with pytest.raises(DataError, match=match):
            register_generic("own_bad", declaration(**over))
            prepare("own_bad", raw, BANDS, out)
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], name

    def outside(raw, rs):
        m = np.full((1, 16, 16), 1, np.uint8)
        m[0, 3, 3], m[0, 4, 4] = 7, 9
        raster(raw / "masks" / "f04.tif", m)
    case("outside", outside, r"row 13: mask .*f04.tif holds values \[7, 9\] outside the classes "
                             r"\(0: background, 1: wheat, 2: maize; ignored: 255\)")
    case("unignored", lambda raw, rs: None, r"row 1: mask .*f00.tif holds values \[255\] outside "
                                           r"the classes .*no data.generic.ignore_value",
         ignore_value=None)

    def mask_size(raw, rs):
        raster(raw / "masks" / "f02.tif", np.zeros((1, 8, 8), np.uint8))
    case("mask_size", mask_size, r"row 7: mask .*f02.tif is 8x8, its image 16x16")

    def mask_bands(raw, rs):
        raster(raw / "masks" / "f02.tif", np.zeros((2, 16, 16), np.uint8))
    case("mask_bands", mask_bands, r"row 7: mask .*f02.tif has 2 bands, a mask has one")

    def mask_gone(raw, rs):
        (raw / "masks" / "f03.tif").unlink()
    case("mask_gone", mask_gone, r"row 10: mask .*f03.tif not found")

    def two_masks(raw, rs):
        rs[4]["mask"] = "masks/f00.tif"
    case("two_masks", two_masks, r"row 5: sample f01 has mask .*f00.tif, its row 4 .*f01.tif: "
                                 r"one mask per sample")

    def shared_mask(raw, rs):
        for r in rs[3:6]:
            r["mask"] = "masks/f00.tif"
    case("shared_mask", shared_mask, r"row 4: mask .*f00.tif is sample f00's too")

    def same_date(raw, rs):
        shutil.copy(raw / "fields" / "f01" / "S2_20200415.tif",
                    raw / "fields" / "f01" / "x_20200415.tif")
        rs[5]["path"] = "fields/f01/x_20200415.tif"
    case("same_date", same_date, r"row 4: sample f01 has date 20200415 twice")

    def no_date(raw, rs):
        rs[7]["path"] = "masks/f02.tif"
    case("no_date", no_date, r"row 8: f02.tif has no date that data.generic.date_pattern")

    def date_text(raw, rs):
        for r in rs:
            r["date"] = r["path"][-12:-4]
        rs[2]["date"] = "2020-02-30"
    case("date_text", date_text, r"row 3: column 'date': '2020-02-30' is not a date",
         date_column="date", date_pattern=None)

    def image_size(raw, rs):
        raster(raw / "fields" / "f06" / "S2_20200615.tif", np.ones((4, 8, 8), np.uint16))
    case("image_size", image_size, r"row 20: .*S2_20200615.tif has size 8x8, expected 16x16")

    def undated(raw, rs):
        pass
    case("undated", undated, r"row 1: 0 dates for S2_20200415.tif of sample f00; a series of "
                             r"per-date rasters takes one date per row", date_pattern=None)


def test_a_declaration_that_contradicts_itself_is_refused_by_key():
    for over, match in (
            ({"mask_column": None}, r"data.generic.mask_column: a segmentation task needs its "
                                    r"masks"),
            ({"mask_pattern": "m/{stem}.tif"},
             r"mask_column \(.*\) or mask_pattern .*one of them"),
            ({"ignore_value": 1}, r"ignore_value: 1 is the index of class 'wheat'"),
            ({"classes": ["void", "crop"]}, r"classes: 'void' is the name of the ignored"),
            ({"date_pattern": "[0-9"}, r"date_pattern: '\[0-9' is not a regular expression"),
            ({"date_pattern": r"\d{8}"}, r"date_pattern: .* has no group around the date"),
            ({"task": "multiclass"}, r"data.generic.mask_column: is for a segmentation task "
                                     r"\(the task is multiclass\)")):
        with pytest.raises(DataError, match=match):
            register_generic("own_contra", declaration(**over))


@pytest.mark.slow
def test_the_fields_example_runs_as_its_header_says(tmp_path):
    """``config/studies/own_fields_example.yaml``'s command, as its header writes it, in a
    working copy: UPerNet + L-TAE and U-TAE on 3 dates and on 1 trained and evaluated on the
    fields (mIoU without the void class); then, in fresh processes that know the dataset from
    the run alone, a prediction on a field's rasters stacked into one file and a map of its
    per-date rasters as a scene whose band names are the dataset's own."""
    study = ROOT / "config" / "studies" / "own_fields_example.yaml"
    work = tmp_path / "work"
    env = run_study_header(study, work)
    res = work / "results" / "own_fields_example"
    runs = list(csv.DictReader((res / "runs.csv").open()))
    assert sorted((x["strategy"], x["model"], x["sequence_length"]) for x in runs) == [
        ("upernet", "upernet_ltae", "1"), ("upernet", "upernet_ltae", "3"),
        ("utae", "utae", "1"), ("utae", "utae", "3")]
    assert all(0 <= float(x["test_miou"]) <= 1 for x in runs)
    per_class = list(csv.DictReader((res / "per_class.csv").open()))
    assert {x["class"] for x in per_class} == set(CLASSES)  # void is no class of the metrics
    store = next((work / "data" / "prepared").rglob("own_fields/B02-B03-B04-B08.zarr"))
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False)
    test = [str(n) for n, s in zip(ds.name.values, ds.split.values, strict=True) if s == "test"]
    field = FIELDS / "fields" / test[0]
    files = [field / f"S2_{d}.tif" for d in DATES]
    stack = np.concatenate([rasterio.open(f).read() for f in files])
    with rasterio.open(files[0]) as f:
        profile = {**f.profile, "count": 12}
    with rasterio.open(tmp_path / "stack.tif", "w", **profile) as f:
        f.write(stack)
    model = res / "runs" / "utae-f1-t3-s0" / "model"
    geopeft = [sys.executable, "-m", "geopeft.cli"]
    r = subprocess.run([*geopeft, "predict", "--model", str(model), str(tmp_path / "stack.tif"),
                        "--dates", ",".join(map(str, DATES))], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = list(csv.DictReader(r.stdout.splitlines()))
    assert {c.split(":")[0] for c in row["classes"].split()} <= set(CLASSES)
    # the scene's dates from the file names, as the dataset's date_pattern reads them; the
    # same map as with the dates given
    maps = []
    for extra in ([], ["--dates", ",".join(map(str, DATES))]):
        out = tmp_path / f"map{len(maps)}.tif"
        r = subprocess.run([*geopeft, "predict", "--model", str(model), *map(str, files),
                            "--out", str(out), *extra], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "16x16 map, one class per pixel" in r.stdout
        with rasterio.open(out) as f:
            maps.append(f.read(1))
    assert np.array_equal(maps[0], maps[1]) and set(np.unique(maps[0])) <= {0, 1, 2}
    r = subprocess.run([*geopeft, "predict", "--model", str(model), str(files[0]), str(files[2]),
                        "--dates", "20200815,20200415", "--out", str(tmp_path / "bad.tif")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "are not strictly increasing" in r.stderr
    # the app offers the test fields as examples (per-date rasters stacked into one file, with
    # their dates) and maps one
    code = ("import sys; from pathlib import Path; from geopeft.app import App, examples; "
            "app = App(Path(sys.argv[1])); rows, notes = examples(app.runs, app.raw, "
            "Path(sys.argv[2])); print(notes); print(rows[0][1]); print(rows[0][2]); "
            "print(app.predict(app.default.label, rows[0][1], rows[0][2], 3)[3])")
    r = subprocess.run([sys.executable, "-c", code, str(res), str(tmp_path / "cache")], cwd=work,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    notes, example, dates, message = r.stdout.strip().splitlines()[-4:]
    assert notes == "[]" and dates == ",".join(map(str, DATES))
    assert Path(example).stem.removeprefix("own_fields-") in test
    with rasterio.open(example) as f:
        assert f.count == 12
    assert message.endswith("class map of 16x16 pixels; the list gives each class's share of "
                            "them.")


def test_pixels_without_data_on_every_date_are_void(tmp_path):
    """Segmentation: a pixel that is nodata (the raster's value) on every date of its sample is
    void in the label; one with data on some date keeps its class."""
    rng = np.random.default_rng(1)
    rows = []
    for k in range(6):
        images = rng.integers(1, 5000, (2, 4, 16, 16)).astype(np.uint16)
        if k == 0:
            images[:, :, 0, :4] = 0  # no data on either date: void
            images[0, :, 1, :4] = 0  # no data on one date only: kept
        for t in range(2):
            path = tmp_path / f"s{k}" / f"t{t}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=4,
                               dtype="uint16", nodata=0, crs="EPSG:32631",
                               transform=from_origin(500_000 + 200 * k, 4_600_000, 10, 10)) as f:
                f.write(images[t])
                f.update_tags(TIFFTAG_DATETIME=f"2021:0{3 + 2 * t}:01 10:00:00")
            rows.append({"sample": f"s{k}", "path": f"s{k}/t{t}.tif", "mask": f"m{k}.tif",
                         "split": ("train", "val", "test")[k % 3]})
        raster(tmp_path / f"m{k}.tif", np.ones((1, 16, 16), np.uint8), 500_000 + 200 * k)
    write_table(tmp_path / "t.csv", rows)
    decl = declaration(table="t.csv", split_column="split", split={"method": "table"},
                       sample_column="sample", date_pattern=None, max_nodata=0.05)
    register_generic("own_gaps", decl)
    prepare("own_gaps", tmp_path, BANDS, tmp_path / "g.zarr")
    ds = xr.open_zarr(tmp_path / "g.zarr", zarr_format=3, consolidated=False)
    label = ds.label.values[[str(n) for n in ds.name.values].index("s0")]
    assert (label[0, :4] == 3).all() and (label[1, :4] == 1).all() and (label[2:] == 1).all()
