"""BigEarthNet-S2 v1/v2 sources: synthetic fixtures in the real layouts, and the real samples in
../shared/data/real when present."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from conftest import SHARED

from geopeft.data.prepare import prepare
from geopeft.data.sources import DataError
from geopeft.data.sources.bigearthnet import (
    CLASSES,
    CLC43,
    CODE_TO_19,
    labels43_to_19,
    read_metadata,
)
from geopeft.data.synthetic_bigearthnet import generate_bigearthnet

REAL = SHARED / "data" / "real"
V1_REAL = REAL / "bigearthnet_v1_examples"
V2_META = REAL / "bigearthnet_v2_metadata" / "metadata.parquet"
V2_SNOW = REAL / "bigearthnet_v2_metadata" / "metadata_for_patches_with_snow_cloud_or_shadow.parquet"


def _open(p):
    return xr.open_zarr(p, zarr_format=3, consolidated=False)


@pytest.fixture(scope="module")
def ben(tmp_path_factory):
    root = tmp_path_factory.mktemp("ben") / "raw"
    generate_bigearthnet(root, n_patches=24, seed=1, cloudy_share=0.25)
    return root


def test_mapping_43_to_19():
    assert len(CLC43) == 43 and len(CLASSES) == 19
    assert sorted(set(CODE_TO_19.values())) == list(range(19))
    dropped = {c for c in CLC43.values() if c not in CODE_TO_19}
    assert dropped == {122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 423}
    y = labels43_to_19(["Non-irrigated arable land", "Rice fields", "Airports", "Peatbogs"])
    assert [CLASSES[i] for i in np.flatnonzero(y)] == ["Arable land", "Inland wetlands"]
    with pytest.raises(DataError, match="'Lava' is not one of the 43"):
        labels43_to_19(["Lava"], "x.json")


def test_v2_synthetic_layout_converts(ben, tmp_path):
    meta = pd.read_parquet(ben / "metadata.parquet")
    cloudy = pd.read_parquet(ben / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    out = tmp_path / "s.zarr"
    attrs = prepare("bigearthnet_s2", ben, ["B02", "B8A", "B01"], out, threads=2,
                    options={"resampling": "nearest"})
    ds = _open(out)
    assert ds.image.shape == (len(meta), 3, 120, 120) and ds.image.dtype == np.uint16
    assert ds.label.shape == (len(meta), 19) and attrs["task"] == "multilabel"
    assert not set(cloudy.patch_id) & set(ds.name.values)  # snow/cloud patches excluded
    assert set(ds.split.values) <= {"train", "val", "test"}
    # nearest resampling repeats the native pixels: B8A x2, B01 x6; B02 is untouched
    pid = str(ds.name.values[0])
    folder = ben / "BigEarthNet-S2" / pid.rsplit("_", 2)[0] / pid
    with rasterio.open(folder / f"{pid}_B8A.tif") as s, rasterio.open(folder / f"{pid}_B02.tif") as b:
        b8a, b02 = s.read(1), b.read(1)
    assert np.array_equal(ds.image.values[0, 1], np.repeat(np.repeat(b8a, 2, 0), 2, 1))
    assert np.array_equal(ds.image.values[0, 0], b02)
    row = meta.set_index("patch_id").loc[pid]
    assert [CLASSES[i] for i in np.flatnonzero(ds.label.values[0])] == list(row.labels)


def test_v2_bad_inputs(ben, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(ben, raw)
    meta = pd.read_parquet(raw / "metadata.parquet")
    pid = meta.patch_id.iloc[0]
    folder = raw / "BigEarthNet-S2" / pid.rsplit("_", 2)[0] / pid
    (folder / f"{pid}_B11.tif").unlink()
    with pytest.raises(DataError, match=rf"{pid}: band B11 missing"):
        prepare("bigearthnet_s2", raw, ["B11"], tmp_path / "o.zarr")
    # a corrupt patch may be skipped explicitly, and is then listed and counted
    attrs = prepare("bigearthnet_s2", raw, ["B11"], tmp_path / "o.zarr",
                    options={"skip_corrupt": True})
    assert attrs["skipped"] == 1
    skipped = _open(tmp_path / "o.zarr").attrs["skipped_samples"]
    assert [s[0] for s in skipped] == [pid] and "band B11 missing" in skipped[0][1]
    assert _open(tmp_path / "o.zarr").image.shape[0] == len(meta) - 1
    # wrong-sized band
    with rasterio.open(folder / f"{pid}_B02.tif") as s:
        prof = s.profile
    prof.update(width=60, height=60)
    with rasterio.open(folder / f"{pid}_B02.tif", "w", **prof) as d:
        d.write(np.zeros((1, 60, 60), np.uint16))
    with pytest.raises(DataError, match=r"B02\.tif: size 60x60, B02 is 120x120"):
        prepare("bigearthnet_s2", raw, ["B02"], tmp_path / "p.zarr")
    # labels outside the class list, and a parquet without the expected columns
    labels = [list(x) for x in meta.labels]
    labels[1] = ["Moon dust"]
    meta["labels"] = labels
    meta.to_parquet(raw / "metadata.parquet")
    with pytest.raises(DataError, match="'Moon dust' is not one of the 19"):
        prepare("bigearthnet_s2", raw, ["B04"], tmp_path / "q.zarr")
    meta.drop(columns=["split"]).to_parquet(raw / "metadata.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['split'\]"):
        prepare("bigearthnet_s2", raw, ["B04"], tmp_path / "r.zarr")


def test_v1_synthetic_layout(tmp_path):
    raw = tmp_path / "v1"
    generate_bigearthnet(raw, n_patches=8, seed=2, v1=True)
    attrs = prepare("bigearthnet_s2_v1", raw, ["B04", "B03", "B02"], tmp_path / "v1.zarr")
    assert _open(tmp_path / "v1.zarr").label.shape == (8, 19) and attrs["counts"]["train"] > 0


@pytest.mark.skipif(not V1_REAL.is_dir(), reason="../shared real BigEarthNet samples absent")
def test_real_v1_patches_convert_with_v2_labels_and_split(tmp_path, caplog):
    out = tmp_path / "real.zarr"
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    with caplog.at_level("WARNING"):
        prepare("bigearthnet_s2_v1", V1_REAL, bands, out, options={"v2_metadata": str(V2_META)})
    ds = _open(out)
    # S2B_MSIL2A_20180204T94161_57_38 is only in v2's snow/cloud/shadow file: excluded, as in v2
    assert "1 of 6 v1 patches excluded" in caplog.text
    assert "S2B_MSIL2A_20180204T94161_57_38" in caplog.text
    assert "S2B_MSIL2A_20180204T94161_57_38" not in set(map(str, ds.name.values))
    assert ds.image.shape == (5, 12, 120, 120) and ds.image.dtype == np.uint16
    prepare("bigearthnet_s2_v1", V1_REAL, ["B02"], tmp_path / "other_seed.zarr",
            options={"v2_metadata": str(V2_META), "split_seed": 7})
    assert list(_open(tmp_path / "other_seed.zarr").split.values) == list(ds.split.values)
    meta = pd.read_parquet(V2_META).set_index("s2v1_name")
    snow = pd.read_parquet(V2_SNOW).set_index("s2v1_name")
    for i, name in enumerate(ds.name.values):
        name = str(name)
        labels = json.loads((V1_REAL / name / f"{name}_labels_metadata.json").read_text())["labels"]
        got = [CLASSES[k] for k in np.flatnonzero(ds.label.values[i])]
        assert got == [CLASSES[k] for k in np.flatnonzero(labels43_to_19(labels))]
        ref = meta.loc[name] if name in meta.index else snow.loc[name] if name in snow.index else None
        if ref is not None:  # the 43->19 mapping reproduces the official v2 labels
            assert sorted(got) == sorted(ref.labels), name
        with rasterio.open(V1_REAL / name / f"{name}_B02.tif") as s:
            assert np.array_equal(ds.image.values[i, 1], s.read(1))  # 10 m band unchanged
        with rasterio.open(V1_REAL / name / f"{name}_B01.tif") as s:
            assert s.shape == (20, 20)
    assert int((ds.image.values > 0).mean() * 100) > 90


@pytest.mark.skipif(not V2_META.is_file(), reason="../shared BigEarthNet v2 metadata absent")
def test_real_v2_metadata():
    meta = read_metadata(V2_META, V2_SNOW)
    raw = pd.read_parquet(V2_META)
    assert len(raw) == 480_038
    flagged = raw.contains_seasonal_snow | raw.contains_cloud_or_shadow
    assert len(meta) == len(raw) - flagged.sum()
    names = {n for ls in meta.labels for n in ls}
    assert names == set(CLASSES)
    assert set(meta.split) == {"train", "validation", "test"}


def _v1_with_v2_metadata(tmp_path, columns=("patch_id", "labels", "split", "s2v1_name")):
    raw = tmp_path / "v1"
    generate_bigearthnet(raw, n_patches=6, seed=3, v1=True)
    base = raw / "BigEarthNet-v1.0" if (raw / "BigEarthNet-v1.0").is_dir() else raw
    names = sorted(p.name for p in base.iterdir() if p.is_dir())
    rows = [{"patch_id": f"v2_{n}", "labels": ["Arable land"], "split": s, "s2v1_name": n,
             "contains_seasonal_snow": False, "contains_cloud_or_shadow": False}
            for n, s in zip(names[:5], ["train", "train", "validation", "test", "train"], strict=True)]
    meta = tmp_path / "meta" / "metadata.parquet"
    meta.parent.mkdir()
    pd.DataFrame(rows)[list(columns)].to_parquet(meta)
    snow = dict(rows[0], patch_id=f"v2_{names[5]}", s2v1_name=names[5], contains_seasonal_snow=True)
    pd.DataFrame([snow]).to_parquet(meta.with_name("metadata_for_patches_with_snow_cloud_or_shadow.parquet"))
    return raw, meta, names


def test_v1_with_v2_metadata_excludes_what_v2_excludes_and_keeps_v2_splits(tmp_path, caplog):
    raw, meta, names = _v1_with_v2_metadata(tmp_path)
    with caplog.at_level("WARNING"):
        prepare("bigearthnet_s2_v1", raw, ["B04"], tmp_path / "a.zarr",
                options={"v2_metadata": str(meta), "split_seed": 1})
    prepare("bigearthnet_s2_v1", raw, ["B04"], tmp_path / "b.zarr",
            options={"v2_metadata": str(meta), "split_seed": 2})
    a, b = _open(tmp_path / "a.zarr"), _open(tmp_path / "b.zarr")
    assert list(map(str, a.name.values)) == names[:5] and "1 of 6 v1 patches excluded" in caplog.text
    assert names[5] in caplog.text
    assert list(a.split.values) == list(b.split.values) == ["train", "train", "val", "test", "train"]


@pytest.mark.parametrize(("edit", "message"), [
    ("missing", r"data\.options\.v2_metadata: .*nope\.parquet not found"),
    ("columns", r"metadata\.parquet: not a BigEarthNet v2 metadata file: missing column\(s\) "
                r"\['s2v1_name'\]"),
    ("garbage", r"metadata\.parquet: cannot be read as parquet"),
])
def test_bad_v2_metadata_names_the_file_and_what_is_wrong(tmp_path, edit, message):
    raw, meta, _ = _v1_with_v2_metadata(
        tmp_path, ("patch_id", "labels", "split") if edit == "columns" else
        ("patch_id", "labels", "split", "s2v1_name"))
    if edit == "garbage":
        meta.write_bytes(b"not parquet at all")
    path = meta.with_name("nope.parquet") if edit == "missing" else meta
    with pytest.raises(DataError, match=message):
        prepare("bigearthnet_s2_v1", raw, ["B04"], tmp_path / "x.zarr",
                options={"v2_metadata": str(path)})


def test_a_multiband_band_file_is_refused(ben, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(ben, raw)
    tif = next(raw.rglob("*_B04.tif"))
    with rasterio.open(tif) as src:
        profile, data = src.profile, src.read(1)
    profile.update(count=2)
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(np.stack([data, data]))
    with pytest.raises(DataError, match=rf"{tif.name}: 2 bands; a BigEarthNet band file holds one"):
        prepare("bigearthnet_s2", raw, ["B04"], tmp_path / "x.zarr")
