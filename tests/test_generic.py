"""A dataset of your own from YAML alone (issue 32, item 1 and 2): raster chips in a folder and a
table, declared in ``data.generic``; prepared as a published dataset is (zarr store, train-only
statistics), split from the table, stratified or in spatial blocks, and every bad input refused
with one error naming the file, its row and what was expected, nothing written under the final
name. The chips are ``tests/data/own_chips`` (``scripts/make_own_chips.py``)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from rasterio.transform import from_origin

from geopeft import config as gcfg
from geopeft.data.dataset import store_info
from geopeft.data.prepare import prepare
from geopeft.data.sources import DataError, get_source, register_generic
from geopeft.data.sources.generic import spatial_blocks, spatial_split, stratified_split
from geopeft.spec import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CHIPS = ROOT / "tests" / "data" / "own_chips"
CLASSES = ["cropland", "forest", "water"]
BANDS = ["B04", "B03", "B02", "B08"]


def declaration(**over) -> dict:
    """The example's declaration as the schema fills it (table split unless said otherwise)."""
    decl = {"task": "multiclass", "table": "labels.csv", "classes": CLASSES,
            "bands": ["blue", "green", "red", "nir"],
            "band_map": {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"},
            "path_column": "path", "label_column": "label", "label_separator": ";",
            "split_column": "split", "x_column": "x", "y_column": "y", "value_scale": 1e-4,
            "split": {"method": "table", "fractions": [0.6, 0.2, 0.2], "seed": 0,
                      "block": 1000.0}}
    return {**decl, **over}


def table(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def write_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_chips_and_a_table_prepare_as_a_published_dataset(tmp_path):
    """The store holds the table's chips in its splits, bands picked by their Sentinel-2 names
    (red first here), statistics from the train split only, and the declaration, from which a
    fresh process knows the dataset (as training, evaluation and ``geopeft predict`` do)."""
    register_generic("own_chips", declaration())
    out = tmp_path / "s.zarr"
    attrs = prepare("own_chips", CHIPS, BANDS, out)
    rows = table(CHIPS / "labels.csv")
    assert attrs["counts"] == {s: sum(r["split"] == s for r in rows) for s in ("train", "val",
                                                                              "test")}
    ds = xr.open_zarr(out, zarr_format=3, consolidated=False)
    info = store_info(out)
    assert info.classes == CLASSES and info.bands == BANDS and info.image_size == (16, 16)
    names = [str(n) for n in ds.name.values]
    first = names.index("chips/chip_00.tif")
    with rasterio.open(CHIPS / "chips" / "chip_00.tif") as f:
        chip = f.read()  # blue, green, red, nir
    assert np.array_equal(ds.image.values[first], chip[[2, 1, 0, 3]])
    assert int(ds.label.values[first]) == CLASSES.index(rows[0]["label"])
    train = ds.image.values[ds.split.values == "train"].astype(np.float64)
    assert np.allclose(info.norm_mean, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert info.generic["dtype"] == "uint16" and info.generic["size"] == 16
    code = ("import sys; from geopeft.data.dataset import store_info; "
            "from geopeft.data.sources import get_source; i = store_info(sys.argv[1]); "
            "s = get_source(i.dataset); print(s.task, s.dtype, ','.join(s.file_bands))")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["multiclass", "uint16", "B02,B03,B04,B08"]


def test_multilabel_labels_from_a_column_columns_parquet_or_geojson(tmp_path):
    """One column with a separator, one 0/1 column per class, and the same table as Parquet and
    GeoJSON (Point geometries give the coordinates) give the same multi-hot labels."""
    rows = table(CHIPS / "labels.csv")
    raw = tmp_path / "raw"
    shutil.copytree(CHIPS / "chips", raw / "chips")
    extra = {"cropland": "forest", "forest": "water", "water": ""}
    for r in rows:
        r["labels"] = "|".join(x for x in (r["label"], extra[r["label"]]) if x)
        for c in CLASSES:
            r[f"is_{c}"] = "1" if c in r["labels"].split("|") else "0"
    write_table(raw / "labels.csv", rows)
    import pandas as pd

    pd.DataFrame(rows).to_parquet(raw / "labels.parquet")
    features = [{"type": "Feature", "geometry": {"type": "Point",
                                                 "coordinates": [float(r["x"]), float(r["y"])]},
                 "properties": {k: v for k, v in r.items() if k not in ("x", "y")}} for r in rows]
    (raw / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": features}))
    expected = np.array([[c in r["labels"].split("|") for c in CLASSES] for r in rows], np.uint8)
    for name, over in (("a", {"label_column": "labels", "label_separator": "|"}),
                       ("b", {"label_columns": [f"is_{c}" for c in CLASSES]}),
                       ("c", {"label_column": "labels", "label_separator": "|",
                              "table": "labels.parquet"}),
                       ("d", {"label_column": "labels", "label_separator": "|",
                              "table": "labels.geojson",
                              "split": {"method": "spatial", "fractions": [0.6, 0.2, 0.2],
                                        "seed": 0, "block": 320.0}})):
        src = register_generic(f"mine_{name}", declaration(task="multilabel", **over))
        items = src.scan(raw, {})
        assert np.array_equal(np.stack([it.label for it in items]), expected), name
    out = tmp_path / "ml.zarr"
    attrs = prepare("mine_b", raw, BANDS, out)
    assert attrs["task"] == "multilabel"
    assert np.array_equal(xr.open_zarr(out, zarr_format=3, consolidated=False).label.values,
                          expected)
    # and it trains as a multi-label task: BCE on the multi-hot labels, mAP on validation
    import torch
    from conftest import backbone_cfg

    from geopeft.data.dataset import load_split
    from geopeft.models.classifier import build_classifier
    from geopeft.spec import TrainArgs
    from geopeft.train.loop import fit

    info = store_info(out)
    train = load_split(out, "train")
    assert train.y.dtype == np.float32 and train.y.shape[1] == len(CLASSES)
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(input_size=32), info, len(info.classes))
    h = fit(m, train, load_split(out, "val"),
            TrainArgs(epochs=3, batch_size=8, lr=3e-3, progress=False, augment=False))["history"]
    assert {"val_map_micro", "val_score"} <= set(h[-1]) and "train_acc" not in h[-1]
    assert h[-1]["train_loss"] < h[0]["train_loss"]


def test_stratified_splits_keep_each_class_share_and_follow_the_seed():
    labels = np.repeat(np.arange(3), [20, 30, 50])
    parts = np.array(stratified_split(labels, (0.6, 0.2, 0.2), seed=0))
    for c, n in enumerate((20, 30, 50)):
        got = [int(((labels == c) & (parts == s)).sum()) for s in ("train", "val", "test")]
        assert got == [round(0.6 * n), round(0.8 * n) - round(0.6 * n), n - round(0.8 * n)]
    assert stratified_split(labels, (0.6, 0.2, 0.2), seed=0) == parts.tolist()
    assert stratified_split(labels, (0.6, 0.2, 0.2), seed=1) != parts.tolist()


def test_spatial_blocks_never_straddle_two_splits():
    """2,000 samples over 10 x 10 km in 1 km blocks: every block lies in one split, the splits
    hold their shares within one block's samples, and the seed decides which blocks go where."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10_000, (2000, 2)) + [400_000, 5_000_000]
    parts = np.array(spatial_split(xy, 1000.0, (0.6, 0.2, 0.2), seed=3))
    blocks = spatial_blocks(xy, 1000.0)
    assert len(np.unique(blocks)) == 100
    for b in np.unique(blocks):
        assert len(set(parts[blocks == b])) == 1, b
    largest = np.bincount(blocks).max()
    for s, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        assert abs((parts == s).sum() - share * 2000) <= largest, s
    assert spatial_split(xy, 1000.0, (0.6, 0.2, 0.2), seed=3) == parts.tolist()
    assert spatial_split(xy, 1000.0, (0.6, 0.2, 0.2), seed=4) != parts.tolist()
    # the example's chips: no 320 m block of the table's coordinates straddles two splits
    src = register_generic("own_spatial", declaration(
        split={"method": "spatial", "fractions": [0.6, 0.2, 0.2], "seed": 0, "block": 320.0}))
    items = src.scan(CHIPS, {})
    rows = {r["path"]: r for r in table(CHIPS / "labels.csv")}
    xy = np.array([[float(rows[it.name]["x"]), float(rows[it.name]["y"])] for it in items])
    blocks = spatial_blocks(xy, 320.0)
    for b in np.unique(blocks):
        assert len({it.split for it, k in zip(items, blocks, strict=True) if k == b}) == 1


def _chip(path: Path, data: np.ndarray, crs: str = "EPSG:32631") -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs,
                       transform=from_origin(500_000, 4_600_000, 10, 10)) as f:
        f.write(data)


def test_each_bad_input_is_named_and_nothing_is_written(tmp_path):
    """One clear error per case, naming the table's row, the file and what was expected (from
    which file or key); the store is never left under its final name."""
    rows = table(CHIPS / "labels.csv")
    good = np.ones((4, 16, 16), np.uint16)

    def case(name: str, edit, match: str, **over) -> None:
        raw = tmp_path / name
        shutil.copytree(CHIPS, raw)
        rs = [dict(r) for r in rows]
        edit(raw, rs)
        write_table(raw / "labels.csv", rs)
        register_generic("own_bad", declaration(**over))
        out = tmp_path / f"{name}.zarr"
        with pytest.raises(DataError, match=match):
            prepare("own_bad", raw, BANDS, out)
        assert not out.exists() and leftovers(tmp_path) == [], name

    table_ = str(tmp_path / "{}" / "labels.csv")

    def missing(raw, rs):
        rs[2]["path"] = "chips/gone.tif"
    case("missing", missing, f"{table_.format('missing')}, row 3: .*gone.tif not found")

    def unreadable(raw, rs):
        (raw / "chips" / "chip_04.tif").write_bytes(b"not a raster")
    case("unreadable", unreadable, r"row 5: .*chip_04.tif cannot be read as a raster")

    def size(raw, rs):
        _chip(raw / "chips" / "chip_06.tif", np.ones((4, 8, 8), np.uint16))
    case("size", size, r"row 7: .*chip_06.tif has size 8x8, expected 16x16 \(as chip_00.tif\)")

    def crs(raw, rs):
        _chip(raw / "chips" / "chip_07.tif", good, crs="EPSG:32632")
    case("crs", crs, r"row 8: .*chip_07.tif has CRS EPSG:32632, expected EPSG:32631 "
                     r"\(as chip_00.tif\)")

    def count(raw, rs):
        _chip(raw / "chips" / "chip_08.tif", good[:3])
    case("count", count, r"row 9: .*chip_08.tif has 3 bands, the dataset's 4 \(blue, green, "
                         r"red, nir\)")

    def dtype(raw, rs):
        _chip(raw / "chips" / "chip_09.tif", good.astype(np.uint8))
    case("dtype", dtype, r"row 10: .*chip_09.tif has dtype uint8, expected uint16 "
                         r"\(as chip_00.tif\)")
    case("declared", lambda raw, rs: None, r"row 1: .*chip_00.tif has dtype uint16, expected "
         r"int16 \(data.generic.dtype\)", dtype="int16")

    def label(raw, rs):
        rs[10]["label"] = "desert"
    case("label", label, r"row 11: label 'desert' is not one of the declared classes "
                         r"\(data.generic.classes: cropland, forest, water\)")

    def empty(raw, rs):
        for r in rs:
            r["split"] = "train" if r["split"] == "test" else r["split"]
    case("empty", empty, r"labels.csv: the test split holds no sample \(data.generic.split: "
                         r"table\)")

    def duplicate(raw, rs):
        rs[12]["path"] = "chips/./chip_03.tif"
    case("duplicate", duplicate, r"row 13: chips/./chip_03.tif is listed twice \(first in row "
                                 r"4\)")

    def column(raw, rs):
        for r in rs:
            r["class"] = r.pop("label")
    case("column", column, r"labels.csv: no column 'label' \(declared in data.generic; the "
                           r"table has path, split, x, y, class\)")

    def split(raw, rs):
        rs[0]["split"] = "validation"
    case("split", split, r"row 1: split 'validation' is not one of train, val, test")


def _study(tmp_path: Path, **data_over) -> Path:
    data = {"dataset": "own_chips", "source": "local", "raw_dir": str(CHIPS), "bands": BANDS,
            "generic": {k: v for k, v in declaration().items()
                        if k in ("task", "table", "classes", "bands", "band_map",
                                 "split_column")}}
    data.update(data_over)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": "mine", "data": data,
                                    "backbone": {"name": "embedded", "weights": "none"},
                                    "strategies": {"lp": {"strategy": "linear"}},
                                    "grid": {"strategy": ["lp"]}}))
    return path


def test_a_study_declares_its_own_dataset_and_is_refused_by_name(tmp_path):
    cfg = gcfg.resolve([_study(tmp_path)])
    assert [r["dataset"] for r in gcfg.study_rows(cfg)] == ["own_chips"]
    assert cfg["data"]["generic"]["path_column"] == "path"  # the schema's defaults filled
    assert get_source("own_chips").file_bands == ("B02", "B03", "B04", "B08")
    # a split column without split.method: the table's splits (stratified without one)
    assert get_source("own_chips").split_method == "table"
    assert register_generic("own_nosplit", {**declaration(), "split_column": None,
                                            "split": {}}).split_method == "stratified"
    generic = yaml.safe_load(_study(tmp_path).read_text())["data"]["generic"]
    for over, match in (
            ({"dataset": "eurosat_ms"}, "'eurosat_ms' is a built-in dataset"),
            ({"source": "synthetic"}, "data.generic: a dataset of your own is read from "
                                      "data.raw_dir: set data.source to local"),
            ({"generic": None}, "data.dataset: 'own_chips' is not one of bigearthnet_s2, .*, "
                                "nor a dataset of your own declared in data.generic"),
            ({"bands": ["B04", "B11"]}, r"data.bands: 'B11' is not in own_chips \(it holds "
                                        r"B02, B03, B04, B08\)"),
            ({"generic": {**generic, "band_map": {"nir": "B99"}}},
             r"data.generic.band_map: \{'nir': 'B99'\} map to no Sentinel-2 band")):
        data = {k: v for k, v in over.items() if v is not None}
        path = _study(tmp_path, **data)
        if over.get("generic", 1) is None:
            doc = yaml.safe_load(path.read_text())
            del doc["data"]["generic"]
            path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=match):
            gcfg.resolve([path])


def test_a_band_without_a_sentinel_2_name_is_selected_by_yours(tmp_path):
    """A fifth band, ndvi, that band_map leaves unmapped keeps its name: a study selects it beside
    Sentinel-2 names, the store holds it, a run's model takes it and ``geopeft predict`` reads it
    from a chip; a name the dataset lacks is refused naming the dataset's bands."""
    from conftest import save_linear_run

    from geopeft.evaluate.predict import Predictor

    raw = tmp_path / "raw"
    (raw / "chips").mkdir(parents=True)
    shutil.copy(CHIPS / "labels.csv", raw / "labels.csv")
    ndvi = {}
    for src in sorted((CHIPS / "chips").glob("*.tif")):
        with rasterio.open(src) as f:
            data, profile = f.read().astype(np.float64), f.profile
        red, nir = data[2], data[3]
        ndvi[src.name] = ((nir - red) / (nir + red) * 5000 + 5000).astype(np.uint16)
        with rasterio.open(raw / "chips" / src.name, "w", **{**profile, "count": 5}) as f:
            f.write(np.concatenate([data.astype(np.uint16), ndvi[src.name][None]]))
    bands = [*BANDS[:3], "ndvi"]
    decl = {k: v for k, v in declaration(bands=["blue", "green", "red", "nir", "ndvi"]).items()
            if k in ("task", "table", "classes", "bands", "band_map", "split_column")}
    cfg = gcfg.resolve([_study(tmp_path, dataset="own_ndvi", raw_dir=str(raw), bands=bands,
                               generic=decl)])
    assert [r["dataset"] for r in gcfg.study_rows(cfg)] == ["own_ndvi"]
    assert get_source("own_ndvi").file_bands == ("B02", "B03", "B04", "B08", "ndvi")
    store = tmp_path / "s.zarr"
    prepare("own_ndvi", raw, bands, store)
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False)
    assert [str(b) for b in ds.band.values] == bands
    k = [str(n) for n in ds.name.values].index("chips/chip_05.tif")
    assert np.array_equal(ds.image.values[k, 3], ndvi["chip_05.tif"])
    model = save_linear_run(store, tmp_path / "runs" / "r" / "model", dataset="own_ndvi",
                            input_size=32)
    (pred,) = Predictor(model).predict_files([raw / "chips" / "chip_05.tif"])
    assert pred.labels[0] in CLASSES
    with pytest.raises(ConfigError, match=r"data.bands: 'ndwi' is not in own_ndvi \(it holds "
                                          r"B02, B03, B04, B08, ndvi\)"):
        gcfg.resolve([_study(tmp_path, dataset="own_ndvi", raw_dir=str(raw),
                             bands=["B04", "ndwi"], generic=decl)])


@pytest.mark.slow
def test_the_example_study_runs_as_its_header_says(tmp_path):
    """``config/studies/own_chips_example.yaml``'s command, as its header writes it (``uv run``:
    this environment), in a working copy: full, LoRA and linear trained and evaluated on the
    chips, the store split in whole 320 m blocks, the datasets logged to MLflow by name, and a
    run that predicts on a chip and maps a scene of chips in a fresh process that knows the
    dataset from the run alone."""
    import os
    import sqlite3

    from conftest import run_study_header

    study = ROOT / "config" / "studies" / "own_chips_example.yaml"
    work = tmp_path / "work"
    env = run_study_header(study, work)
    res = work / "results" / "own_chips_example"
    runs = list(csv.DictReader((res / "runs.csv").open()))
    assert sorted((x["strategy"], x["label_fraction"]) for x in runs) == [
        (s, f) for s in ("full", "linear", "lora") for f in ("0.5", "1.0")]
    assert all(0 <= float(x["test_overall_accuracy"]) <= 1 for x in runs)
    store = next((work / "data" / "prepared").rglob("own_chips/B04-B03-B02-B08.zarr"))
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False)
    where = {r["path"]: (float(r["x"]), float(r["y"])) for r in table(CHIPS / "labels.csv")}
    blocks = spatial_blocks(np.array([where[str(n)] for n in ds.name.values]), 320.0)
    for b in np.unique(blocks):
        assert len(set(ds.split.values[blocks == b])) == 1
    assert set(ds.split.values) == {"train", "val", "test"}
    # half the labels: the subset keeps half of each class of the train split
    train_labels = ds.label.values[ds.split.values == "train"].astype(int)
    half = sum(max(1, round(0.5 * n)) for n in np.bincount(train_labels) if n)
    assert {x["train_samples"] for x in runs if x["label_fraction"] == "0.5"} == {str(half)}
    db = sqlite3.connect(work / "results" / "mlflow.db")
    names = {n for (n,) in db.execute("select name from datasets")}
    assert {"own_chips B04 B03 B02 B08 · train", "own_chips B04 B03 B02 B08 · test"} <= names
    model = res / "runs" / "lora-f1-s0" / "model"
    geopeft = [sys.executable, "-m", "geopeft.cli"]
    r = subprocess.run([*geopeft, "predict", "--model", str(model),
                        str(CHIPS / "chips" / "chip_00.tif")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = list(csv.DictReader(r.stdout.splitlines()))
    assert row["prediction"] in CLASSES
    chips = [rasterio.open(CHIPS / "chips" / f"chip_{k:02d}.tif").read() for k in range(16)]
    mosaic = np.concatenate([np.concatenate(chips[i:i + 8], axis=2) for i in (0, 8)], axis=1)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=128, height=32,
                       count=4, dtype="uint16", crs="EPSG:32631",
                       transform=from_origin(500_000, 4_600_000, 10, 10)) as f:
        f.write(mosaic)  # no band names: the dataset's own file order, as a chip is read
    r = subprocess.run([*geopeft, "predict", "--model", str(model), str(tmp_path / "scene.tif"),
                        "--out", str(tmp_path / "map.tif")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2x8 map, one class per tile" in r.stdout
    # the app knows the dataset from its runs, and offers test chips of the folder as examples
    code = ("import sys; from pathlib import Path; from geopeft.app import App, examples; "
            "app = App(Path(sys.argv[1])); rows, notes = examples(app.runs, app.raw, "
            "Path(sys.argv[2])); print(notes); print('\\n'.join(r[1] for r in rows)); "
            "print(app.predict(app.default.label, rows[0][1], '', 3)[3])")
    r = subprocess.run([sys.executable, "-c", code, str(res), str(tmp_path)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "[]" and len(lines) >= 3
    test_chips = {str(n) for n, s in zip(ds.name.values, ds.split.values, strict=True)
                  if s == "test"}
    for line in lines[1:-1]:
        chip = Path(os.path.normpath(work / line))  # the store's raw_dir, relative to work
        assert str(chip.relative_to(work / "tests" / "data" / "own_chips")) in test_chips
    assert lines[-1].split(": ")[-1].rstrip(".") in CLASSES


def test_plan_counts_the_splits_of_your_own_table(monkeypatch, capsys):
    """``geopeft plan`` on the example counts each split as the table and its spatial blocks make
    it (the store will hold the same: the example's run in CI checks the store's splits)."""
    from geopeft.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["plan", "--configfile", "config/studies/own_chips_example.yaml"]) == 0
    out = capsys.readouterr().out
    src = get_source("own_chips")
    items = src.scan(CHIPS, {})
    counts = [sum(it.split == s for it in items) for s in ("train", "val", "test")]
    assert (f"Data own_chips: train {counts[0]} / val {counts[1]} / test {counts[2]} samples: "
            f"tests/data/own_chips/labels.csv (spatial split), counted in the study's table") in out


def test_nodata_pixels_are_counted_and_refused_past_the_declared_share(tmp_path):
    """A chip's nodata pixels (every band at the raster's nodata value, or at data.generic.nodata)
    are counted: past data.generic.max_nodata (default 0) the chip is refused, naming its row,
    file and share; under it, prepared."""
    raw = tmp_path / "raw"
    shutil.copytree(CHIPS, raw)
    with rasterio.open(CHIPS / "chips" / "chip_03.tif") as f:
        data, profile = f.read(), f.profile
    data[:, :2, :8] = 0  # 16 of 256 pixels: 6.2 %
    with rasterio.open(raw / "chips" / "chip_03.tif", "w", **{**profile, "nodata": 0}) as f:
        f.write(data)
    register_generic("own_nodata", declaration())
    with pytest.raises(DataError, match=r"labels.csv, row 4: .*chip_03.tif: 6.2% of its pixels "
                                        r"are nodata \(0 in every band\), over "
                                        r"data.generic.max_nodata 0"):
        prepare("own_nodata", raw, BANDS, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    register_generic("own_nodata", declaration(max_nodata=0.1))
    prepare("own_nodata", raw, BANDS, tmp_path / "b.zarr")
    # a value the rasters do not declare, declared in the study
    with rasterio.open(raw / "chips" / "chip_03.tif", "w", **{**profile, "nodata": None}) as f:
        f.write(np.where(data == 0, 65535, data).astype(np.uint16))
    register_generic("own_nodata", declaration(nodata=65535))
    with pytest.raises(DataError, match=r"row 4: .*6.2% of its pixels are nodata \(65535"):
        prepare("own_nodata", raw, BANDS, tmp_path / "c.zarr")
