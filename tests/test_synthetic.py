import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from geopeft.bands import EUROSAT_MS_FILE_ORDER, S2_BANDS
from geopeft.data.sources.eurosat import EUROSAT_CLASSES, SOURCE_GROUPS
from geopeft.data.synthetic import (
    WorldSpec,
    class_counts,
    generate_eurosat,
    render,
)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = WorldSpec(seed=5, n_samples=40, size=24)
    generate_eurosat(spec, tmp_path / "a", None)
    generate_eurosat(spec, tmp_path / "b", None)
    generate_eurosat(WorldSpec(seed=6, n_samples=40, size=24), tmp_path / "c", None)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_ms_geotiff_format(world):
    tif = world["ms"] / "EuroSAT_MS" / "Forest" / "Forest_1.tif"
    with rasterio.open(tif) as src:
        assert src.count == 13
        assert src.dtypes == ("uint16",) * 13
        assert (src.width, src.height) == (32, 32)
        assert src.crs is not None and src.crs.is_projected
        assert src.crs.to_epsg() // 100 == 326  # UTM north
        assert src.transform.a == 10.0
        assert src.descriptions == EUROSAT_MS_FILE_ORDER
        assert src.descriptions[-1] == "B8A"


def test_file_band_order_b8a_last_matches_rendered_scene(world):
    """The 13th band in the file is B8A; B09..B12 sit at 9..12 (the EuroSAT trap)."""
    ci = EUROSAT_CLASSES.index("Forest")
    dn = render("Forest", np.random.default_rng([11, 1, ci, 1]), 32, 0.2, 0.004)
    with rasterio.open(world["ms"] / "EuroSAT_MS" / "Forest" / "Forest_1.tif") as src:
        data = src.read()
    assert np.array_equal(data[12], dn[S2_BANDS.index("B8A")])
    assert np.array_equal(data[8], dn[S2_BANDS.index("B09")])
    assert np.array_equal(data[11], dn[S2_BANDS.index("B12")])


def test_rgb_jpeg_and_split_files(world):
    jpg = world["rgb"] / "EuroSAT_RGB" / "SeaLake" / "SeaLake_1.jpg"
    with Image.open(jpg) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    parts = {p: (world["rgb"] / f"eurosat-{p}.txt").read_text().split() for p in ("train", "val", "test")}
    names = [n for v in parts.values() for n in v]
    assert len(names) == len(set(names)) == 100
    assert all(n.endswith(".jpg") for n in names)  # as the published split files
    assert abs(len(parts["train"]) - 60) <= 5


def test_class_counts_keep_eurosat_proportions():
    c = class_counts(270)
    assert sum(c.values()) == 270
    assert c["Pasture"] == 20 and c["Forest"] == 30
    with pytest.raises(ValueError, match="too small"):
        class_counts(20)


def test_source_set_is_differently_labelled_and_disjoint(world):
    groups = sorted(p.name for p in (world["ms_source"] / "EuroSAT_MS").iterdir())
    assert groups == sorted(SOURCE_GROUPS)
    target = {hashlib.sha1(p.read_bytes()).hexdigest() for p in world["ms"].rglob("*.tif")}
    source = {hashlib.sha1(p.read_bytes()).hexdigest() for p in world["ms_source"].rglob("*.tif")}
    assert not target & source


def test_physical_spectra_water_dark_vegetation_red_edge():
    rng = np.random.default_rng(0)
    sea = np.median(render("SeaLake", rng, 32).astype(float), axis=(1, 2))  # shore may be in view
    forest = render("Forest", rng, 32).astype(float).mean(axis=(1, 2))
    b = S2_BANDS.index
    assert sea[b("B08")] < sea[b("B03")]  # water absorbs NIR
    assert forest[b("B08")] > 3 * forest[b("B04")]  # vegetation red edge
    assert render("Forest", rng, 32)[b("B10")].mean() < 100  # cirrus band near zero at the surface


def test_rgb_alone_confuses_the_designed_pairs():
    """Pasture vs herbaceous differ in NIR/SWIR much more than in the visible bands."""
    b = S2_BANDS.index
    p = np.mean([render("Pasture", np.random.default_rng(i), 32).mean(axis=(1, 2)) for i in range(8)], 0)
    h = np.mean([render("HerbaceousVegetation", np.random.default_rng(i), 32).mean(axis=(1, 2))
                 for i in range(8)], 0)
    vis = np.abs(p[[b("B02"), b("B03"), b("B04")]] - h[[b("B02"), b("B03"), b("B04")]]).max()
    nir_swir = np.abs(p[[b("B08"), b("B11")]] - h[[b("B08"), b("B11")]]).min()
    assert nir_swir > 4 * vis
