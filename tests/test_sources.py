"""The EuroSAT and PASTIS sources on their own: scan, read, band order, facts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geopeft.bands import EUROSAT_MS_FILE_ORDER, BandError
from geopeft.data.sources import REGISTRY, DataError, get_source
from geopeft.data.sources.base import SPLITS
from geopeft.data.sources.eurosat import EUROSAT_CLASSES, EUROSAT_COUNTS, SOURCE_GROUPS
from geopeft.data.sources.pastis import BANDS as PASTIS_BANDS
from geopeft.data.sources.pastis import VOID, read_geojson
from geopeft.data.synthetic import write_marker
from geopeft.data.synthetic_pastis import generate_pastis


def _tif(path, values):
    """A 13-band 4x4 EuroSAT-MS tif whose band i holds values[i] everywhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([np.full((4, 4), v, np.uint16) for v in values])
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=13, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as f:
        f.write(data)


def _eurosat(root, names):
    for i, name in enumerate(names):
        _tif(root / "EuroSAT_MS" / name.rsplit("_", 1)[0] / f"{name}.tif", range(100 * i, 100 * i + 13))
    write_marker(root, 4)  # a world of 4 x 4 patches (the real EuroSAT's are 64 x 64)
    for part, entries in zip(SPLITS, ([names[0], names[2]], [names[1]], [names[3]]), strict=True):
        (root / f"eurosat-{part}.txt").write_text("".join(f"{n}.jpg\n" for n in entries))


def test_eurosat_facts_live_in_the_source():
    src = get_source("eurosat_ms")
    assert src.classes == EUROSAT_CLASSES and len(EUROSAT_CLASSES) == 10
    assert sum(EUROSAT_COUNTS.values()) == 27_000 and set(EUROSAT_COUNTS) == set(EUROSAT_CLASSES)
    assert sorted(m for g in SOURCE_GROUPS.values() for m in g) == sorted(EUROSAT_CLASSES)
    assert get_source("eurosat_ms_source").classes == tuple(SOURCE_GROUPS)
    assert src.file_bands == EUROSAT_MS_FILE_ORDER and src.file_bands[-1] == "B8A"
    assert (src.embedded, src.study_dataset, src.time_series) == (True, True, False)
    assert not get_source("eurosat_ms_source").study_dataset
    assert get_source("pastis").time_series and get_source("pastis").world
    assert set(REGISTRY) >= {"eurosat_ms", "eurosat_rgb", "bigearthnet_s2", "pastis"}


def test_eurosat_scan_and_read_pick_bands_by_name(tmp_path):
    names = ["Forest_1", "Forest_2", "River_1", "SeaLake_3"]
    _eurosat(tmp_path, names)
    src = get_source("eurosat_ms")
    items = src.scan(tmp_path, {})
    assert [(i.name, i.split, i.label) for i in items] == [
        ("Forest_1", "train", 1), ("Forest_2", "val", 1), ("River_1", "train", 8),
        ("SeaLake_3", "test", 9)]
    # file order is B01..B12 then B8A: B8A is the 13th band, B09 the 9th
    s = src.read(items[2], ["B8A", "B09", "B04"], {})
    assert s.image[:, 0, 0].tolist() == [212, 208, 203] and int(s.label) == 8
    with pytest.raises(BandError, match="B10X"):
        src.read(items[0], ["B10X"], {})
    (tmp_path / "geopeft-synthetic.json").unlink()  # the real dataset's 64 x 64 is checked
    with pytest.raises(DataError, match="River_1.tif: size 4x4, eurosat_ms patches are 64x64"):
        src.read(src.scan(tmp_path, {})[2], ["B04"], {})


def test_eurosat_scan_names_what_is_wrong(tmp_path):
    names = ["Forest_1", "Forest_2", "River_1", "SeaLake_3"]
    _eurosat(tmp_path, names)
    (tmp_path / "EuroSAT_MS" / "River" / "River_1.tif").unlink()
    with pytest.raises(DataError, match="River_1.tif: listed in eurosat-train.txt but missing"):
        get_source("eurosat_ms").scan(tmp_path, {})
    (tmp_path / "eurosat-val.txt").write_text("Forest_1.jpg\n")
    with pytest.raises(DataError, match="Forest_1.jpg is already listed in the train split"):
        get_source("eurosat_ms").scan(tmp_path, {})


def test_pastis_scan_read_and_extra_arrays(tmp_path):
    generate_pastis(tmp_path / "raw", n_patches=6, size=16, seed=2)
    src = get_source("pastis")
    meta = read_geojson(tmp_path / "raw" / "metadata.geojson")
    options: dict = {"folds": {"train": [1, 2, 3], "val": [4], "test": [5]}}
    items = src.scan(tmp_path / "raw", options)
    assert options["t_max"] == max(len(m["dates"]) for m in meta)
    assert {i.split for i in items} <= set(SPLITS)
    item = items[0]
    s = src.read(item, ["B04", "B08"], options)
    raw = np.load(tmp_path / "raw" / "DATA_S2" / f"S2_{item.name}.npy")
    n = raw.shape[0]
    assert s.image.shape == (options["t_max"], 2, 16, 16) and s.image.dtype == np.int16
    assert np.array_equal(s.image[:n, 0], raw[:, PASTIS_BANDS.index("B04")])
    assert np.array_equal(s.image[:n, 1], raw[:, PASTIS_BANDS.index("B08")])
    assert s.valid.sum() == n and not s.image[n:].any()
    assert s.label.max() <= VOID
    extra = src.extra_arrays(items, [i.name for i in items], options)
    assert extra["n_dates"][0].tolist() == [len(i.extra["dates"]) for i in items]
    assert src.extra_attrs(options)["void_class"] == VOID == len(src.classes) - 1


def test_pastis_geojson_errors_name_the_patch(tmp_path):
    p = tmp_path / "metadata.geojson"
    p.write_text(json.dumps({"features": [{"properties": {"ID_PATCH": 7, "Fold": 1}}]}))
    with pytest.raises(DataError, match="patch 7 lacks property 'dates-S2'"):
        read_geojson(p)
    p.write_text(json.dumps({"features": [{"properties": {
        "ID_PATCH": 8, "Fold": 1, "dates-S2": {"0": 20180901, "1": 20180801}}}]}))
    with pytest.raises(DataError, match="patch 8: dates-S2 are not strictly increasing"):
        read_geojson(p)


def test_a_source_writes_its_embedded_world_through_the_cli(tmp_path):
    from geopeft.cli import main
    from geopeft.data.synthetic import WorldSpec, write_world

    spec = json.dumps({"seed": 1, "n_samples": 30, "size": 16})
    assert main(["synthesize", "--spec", spec, "--world", "pastis", str(tmp_path / "p")]) == 0
    meta = read_geojson(tmp_path / "p" / "metadata.geojson")
    assert len(meta) == 30 and np.load(tmp_path / "p" / "DATA_S2" / f"S2_{meta[0]['id']}.npy"
                                       ).shape[1:] == (len(PASTIS_BANDS), 16, 16)
    with pytest.raises(DataError, match="eurosat_ms: no embedded world of its own"):
        write_world("eurosat_ms", tmp_path / "e", WorldSpec())


def test_every_dataset_names_an_embedded_pretraining_set_in_its_format_when_there_is_one():
    """The source says which embedded set pretrains a study's embedded backbone: EuroSAT-RGB's
    own RGB set, else the 13-band EuroSAT-MS set (no convention on names)."""
    from geopeft.data.sources import REGISTRY

    for name, source in REGISTRY.items():
        pre = REGISTRY[source.pretrain_source]
        assert pre.embedded and not pre.study_dataset, name
    assert REGISTRY["eurosat_rgb"].pretrain_source == "eurosat_rgb_source"
    assert REGISTRY["pastis"].pretrain_source == "eurosat_ms_source"
