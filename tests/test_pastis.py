import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr

from geopeft.data.prepare import prepare
from geopeft.data.sources import DataError
from geopeft.data.synthetic_pastis import generate_pastis, ndvi_curve
from geopeft.spec import Temporal


@pytest.fixture(scope="module")
def pastis(tmp_path_factory):
    root = tmp_path_factory.mktemp("pastis") / "PASTIS"
    generate_pastis(root, n_patches=10, size=24, seed=4)
    return root


def _open(p):
    return xr.open_zarr(p, zarr_format=3, consolidated=False)


def test_layout_and_store_keep_time_and_dates(pastis, tmp_path):
    meta = json.loads((pastis / "metadata.geojson").read_text())["features"]
    out = tmp_path / "p.zarr"
    prepare("pastis", pastis, ["B04", "B08", "B8A"], out)
    ds = _open(out)
    t_max = max(len(f["properties"]["dates-S2"]) for f in meta)
    assert ds.image.dims == ("sample", "time", "band", "y", "x")
    assert ds.image.shape == (10, t_max, 3, 24, 24) and ds.image.dtype == np.int16
    assert ds.label.shape == (10, 24, 24)
    first = next(f["properties"] for f in meta if str(f["properties"]["ID_PATCH"]) == ds.name.values[0])
    n = len(first["dates-S2"])
    assert int(ds.n_dates.values[0]) == n
    assert list(ds.dates.values[0, :n]) == [first["dates-S2"][str(k)] for k in range(n)]
    assert (ds.dates.values[0, n:] == 0).all() and (ds.image.values[0, n:] == 0).all()
    raw = np.load(pastis / "DATA_S2" / f"S2_{ds.name.values[0]}.npy")
    assert np.array_equal(ds.image.values[0, :n, 1], raw[:, 6])  # B08 is the 7th PASTIS band
    # folds 1-3 train, 4 val, 5 test
    assert {int(f): str(s) for f, s in zip(ds.fold.values, ds.split.values, strict=True)} == {
        1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}


def test_norm_stats_skip_padding(pastis, tmp_path):
    out = tmp_path / "p.zarr"
    attrs = prepare("pastis", pastis, ["B04"], out)
    ds = _open(out)
    vals = [ds.image.values[i, : int(ds.n_dates.values[i]), 0].ravel()
            for i in range(10) if ds.split.values[i] == "train"]
    assert attrs["norm_mean"][0] == pytest.approx(np.concatenate(vals).astype(float).mean())


def test_phenology_separates_crops_over_the_season():
    days = np.arange(1, 366, dtype=np.float32)
    wheat, corn = ndvi_curve(2, days, 0), ndvi_curve(3, days, 0)
    assert wheat[120] > 0.7 > corn[120]  # May: wheat green, corn bare
    assert corn[210] > 0.7 > wheat[210]  # August: corn green, wheat harvested


def _broken(pastis, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(pastis, raw)
    return raw


def test_embedded_patches_hold_many_small_parcels():
    """The embedded world's 32 px patches hold ~30 parcels (the labelled examples the models
    learn from; with real-sized fields a patch held ~4), and 128 px patches (the rehearsal's)
    about as many as a PASTIS patch, not hundreds."""
    from scipy import ndimage

    from geopeft.data.synthetic_pastis import acquisition_dates, render_series

    def fields(size: int, seed: int) -> int:
        rng = np.random.default_rng(seed)
        _, sem = render_series(rng, size, acquisition_dates(rng))
        # parcels are cut apart by void borders; neighbouring background parcels merge
        return ndimage.label((sem != 19) & (sem != 0))[1]

    small = np.mean([fields(32, s) for s in range(12)])
    large = np.mean([fields(128, s) for s in range(3)])
    assert 15 <= small <= 45, small
    assert 10 <= large <= 60, large


def test_dates_out_of_order(pastis, tmp_path):
    raw = _broken(pastis, tmp_path)
    g = json.loads((raw / "metadata.geojson").read_text())
    d = g["features"][0]["properties"]["dates-S2"]
    d["0"], d["1"] = d["1"], d["0"]
    (raw / "metadata.geojson").write_text(json.dumps(g))
    with pytest.raises(DataError, match="dates-S2 are not strictly increasing"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")
    d["0"], d["1"] = d["1"], d["1"]  # a duplicated date
    (raw / "metadata.geojson").write_text(json.dumps(g))
    with pytest.raises(DataError, match="dates-S2 are not strictly increasing"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")


def test_labels_out_of_range_and_length_mismatch(pastis, tmp_path):
    raw = _broken(pastis, tmp_path)
    t = next((raw / "ANNOTATIONS").glob("TARGET_*.npy"))
    arr = np.load(t)
    arr[0, 0, 0] = 25
    np.save(t, arr)
    with pytest.raises(DataError, match=rf"{t.name}: labels outside 0-19"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")
    arr[0, 0, 0] = 0
    np.save(t, arr)
    d = raw / "DATA_S2" / t.name.replace("TARGET", "S2")
    np.save(d, np.load(d)[:-1])
    with pytest.raises(DataError, match=r"dates, metadata.geojson lists"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")


def test_fold_without_patches(pastis, tmp_path):
    with pytest.raises(DataError, match=r"fold\(s\) \[6\] of the test split hold no patch"):
        prepare("pastis", pastis, ["B04"], tmp_path / "o.zarr",
                options={"folds": {"train": [1, 2, 3], "val": [4], "test": [6]}})


def test_a_patch_of_an_unknown_fold_is_an_error_naming_it(pastis, tmp_path):
    """A patch whose Fold is none of PASTIS's five is a broken metadata file, named with the
    patch and its fold, not a patch left out without a word (issue 37, item 7)."""
    raw = _broken(pastis, tmp_path)
    geojson = raw / "metadata.geojson"
    meta = json.loads(geojson.read_text())
    props = meta["features"][3]["properties"]
    for fold, said in ((7, "Fold 7; PASTIS's folds are [1, 2, 3, 4, 5]"),
                       ("two", "Fold 'two', not a fold number")):
        props["Fold"] = fold
        geojson.write_text(json.dumps(meta))
        with pytest.raises(DataError, match=rf"metadata.geojson: patch {props['ID_PATCH']} has "
                                            rf"{re.escape(said)}"):
            prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")
        assert not (tmp_path / "o.zarr").exists()


def test_a_fold_the_study_leaves_out_is_counted(pastis, tmp_path, caplog):
    """Folds the study's data.options.folds assign to no split are left out, and said with
    their count."""
    meta = json.loads((pastis / "metadata.geojson").read_text())["features"]
    in_fold5 = sum(f["properties"]["Fold"] == 5 for f in meta)
    assert in_fold5
    with caplog.at_level("WARNING", logger="geopeft.data.sources.pastis"):
        prepare("pastis", pastis, ["B04"], tmp_path / "o.zarr",
                options={"folds": {"train": [1, 2], "val": [3], "test": [4]}})
    assert f"{in_fold5} patches of fold(s) [5] are in no split" in caplog.text
    assert 5 not in set(_open(tmp_path / "o.zarr").fold.values.tolist())


def test_load_series_nested_date_sorted_subsets(pastis, tmp_path):
    from geopeft.data.dataset import load_split
    from geopeft.data.temporal import days_since

    out = tmp_path / "p.zarr"
    prepare("pastis", pastis, ["B04", "B08"], out)
    ds = _open(out)
    ladder = [35, 15, 6, 1]
    splits = {t: load_split(out, "train", temporal=Temporal(t, tuple(ladder), "repeat", "2018-09-01"))
              for t in ladder}
    train = np.flatnonzero(ds.split.values == "train")
    for t, s in splits.items():
        assert s.x.shape == (len(train), t, 2, 24, 24) and s.x.dtype == np.int16
        assert s.y.shape == (len(train), 24, 24) and s.ignore_index == 19
        assert (np.diff(s.dates, axis=1) > 0).all()  # in date order
    for k, i in enumerate(train):
        n = int(ds.n_dates.values[i])
        all_days = days_since(ds.dates.values[i, :n])
        pos = {t: np.searchsorted(all_days, splits[t].dates[k]) for t in ladder}
        for t in ladder:  # the frames are the raw frames of those dates
            assert np.array_equal(splits[t].x[k], ds.image.values[i, pos[t]])
        for longer, shorter in zip(ladder, ladder[1:], strict=False):
            assert set(pos[shorter]) <= set(pos[longer])


def test_short_series_rule(pastis, tmp_path):
    from geopeft.data.dataset import load_split

    out = tmp_path / "p.zarr"
    prepare("pastis", pastis, ["B04"], out)
    ds = _open(out)
    long = int(ds.n_dates.values[ds.split.values == "val"].min()) + 5
    s = load_split(out, "val", temporal=Temporal(long, (long,), "repeat", "2018-09-01"))
    assert s.x.shape[1] == long and (np.diff(s.dates, axis=1) >= 0).all()
    with pytest.raises(DataError, match=rf"patch \d+: \d+ dates, shorter than the sequence length {long}"):
        load_split(out, "val", temporal=Temporal(long, (long,), "error", "2018-09-01"))
    with pytest.raises(DataError, match="needs a sequence length"):
        load_split(out, "val")


def test_subset_cli_stratifies_patches(tmp_path):
    from geopeft.cli import main

    generate_pastis(tmp_path / "raw", n_patches=60, size=8, seed=1)
    out = tmp_path / "p.zarr"
    prepare("pastis", tmp_path / "raw", ["B04"], out)
    files = {}
    for f in (0.5, 1.0):
        files[f] = tmp_path / f"s{f}.json"
        assert main(["subset", "--store", str(out), "--method", "stratified", "--fraction", str(f),
                     "--seed", "0", "--out", str(files[f])]) == 0
    sub = {f: json.loads(p.read_text()) for f, p in files.items()}
    assert set(sub[0.5]["samples"]) < set(sub[1.0]["samples"])
    ds = _open(out)
    assert len(sub[1.0]["samples"]) == int((ds.split.values == "train").sum())
    labels = ds.label.values[sub[1.0]["samples"]]
    assert sub[1.0]["class_counts"] == [int((labels == c).sum()) for c in range(19)]


def test_a_dtype_pastis_does_not_have_is_refused(pastis, tmp_path):
    raw = _broken(pastis, tmp_path)
    d = sorted((raw / "DATA_S2").glob("S2_*.npy"))[3]
    np.save(d, np.load(d).astype(np.float32) / 10000)  # 0-1 floats would become all zeros
    with pytest.raises(DataError, match=rf"{d.name}: dtype float32, PASTIS DATA_S2 is int16"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")


def test_a_malformed_first_patch_is_blamed_and_skipped_alone(pastis, tmp_path):
    raw = _broken(pastis, tmp_path)
    first = sorted((raw / "DATA_S2").glob("S2_*.npy"))[0]
    np.save(first, np.load(first)[:, :, :-4, :-4])
    with pytest.raises(DataError, match=rf"{first.name}: shape \(\d+, 10, 20, 20\), PASTIS DATA_S2 "
                                        r"is T x 10 x 24 x 24"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")
    attrs = prepare("pastis", raw, ["B04"], tmp_path / "s.zarr", options={"skip_corrupt": True})
    assert attrs["skipped"] == 1 and attrs["skipped_samples"][0][0] == first.stem[3:]


def test_missing_dates_names_the_patch(pastis, tmp_path):
    raw = _broken(pastis, tmp_path)
    g = json.loads((raw / "metadata.geojson").read_text())
    pid = g["features"][2]["properties"]["ID_PATCH"]
    del g["features"][2]["properties"]["dates-S2"]
    (raw / "metadata.geojson").write_text(json.dumps(g))
    with pytest.raises(DataError, match=rf"metadata\.geojson: patch {pid} lacks property 'dates-S2'"):
        prepare("pastis", raw, ["B04"], tmp_path / "o.zarr")


def test_short_series_are_padded_with_empty_dates_on_day_0(pastis, tmp_path):
    """``pad: mask``: a series shorter than the length keeps its dates in order, then all-zero
    images on day 0 (what the models mask); longer series are unaffected."""
    from geopeft.data.dataset import load_split
    from geopeft.models.utae import pad_mask_of

    out = tmp_path / "p.zarr"
    prepare("pastis", pastis, ["B04", "B08"], out)
    ds = _open(out)
    train = np.flatnonzero(ds.split.values == "train")
    n = ds.n_dates.values[train]
    length = int(n.min()) + 3  # the shortest series is 3 dates short
    s = load_split(out, "train", temporal=Temporal(length, (length,), "mask", "2018-09-01"))
    short = int(np.argmin(n))
    k = int(n[short])
    assert (s.x[short, k:] == 0).all() and (s.dates[short, k:] == 0).all()
    assert (s.x[short, :k] != 0).any(axis=(1, 2, 3)).all() and (np.diff(s.dates[short, :k]) > 0).all()
    import torch

    pad = pad_mask_of(torch.from_numpy(s.x)).numpy()
    assert pad.sum(axis=1).tolist() == np.maximum(length - n, 0).tolist()


def test_random_forest_baseline_runs_on_a_store(pastis, tmp_path, capsys):
    """bench/rf_baseline.py (the embedded study's yardstick) on a small store: one row per
    length x fraction x seed, mIoU in 0..100, and the summary lines."""
    import importlib.util
    import json
    from pathlib import Path

    out = tmp_path / "p.zarr"
    from geopeft.data.sources.pastis import BANDS

    prepare("pastis", pastis, list(BANDS), out)
    path = Path(__file__).resolve().parents[1] / "bench" / "rf_baseline.py"
    spec = importlib.util.spec_from_file_location("rf_baseline", path)
    rf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf)
    assert rf.main(["--store", str(out), "--lengths", "1", "6", "--fractions", "1.0", "--seeds", "0",
                    "--trees", "5", "--pixels", "50", "--jobs", "1",
                    "--json", str(tmp_path / "rf.json")]) == 0
    rows = json.loads((tmp_path / "rf.json").read_text())
    assert [(r["length"], r["label_fraction"]) for r in rows] == [(1, 1.0), (6, 1.0)]
    assert all(0 <= r["test_miou"] <= 100 and r["train_pixels"] > 0 for r in rows)
    assert "T =  6, 100% labels:" in capsys.readouterr().out
    assert rf.main(["--store", str(tmp_path / "missing.zarr")]) == 2
