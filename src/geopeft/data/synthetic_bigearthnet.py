"""Embedded BigEarthNet-S2 world: multi-label 120x120 L2A patches in the real v2 (and v1) layout.

Each patch mixes two to four land covers of the synthetic world in Voronoi regions; its labels are
the BigEarthNet 19-class names of the covers that fill at least 5 % of it. Bands are rendered on
the 10 m grid and written at their native resolution (20 m and 60 m bands block-averaged), one
uint16 GeoTIFF per band, with a ``metadata.parquet`` carrying the real columns and a
``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` listing cloudy patches (which are
excluded from preparation, as in the real set).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from geopeft.bands import S2_BANDS
from geopeft.data.fixtures import tar_zst_tree
from geopeft.data.sources.base import Source
from geopeft.data.sources.bigearthnet import BANDS, CLASSES, SIZES
from geopeft.data.synthetic import WorldSpec, _utm_profile, render
from geopeft.io import atomic_dir

#: EuroSAT-like cover -> BigEarthNet 19-class name (highways are not a BigEarthNet class).
COVER_TO_19 = {
    "AnnualCrop": "Arable land", "Forest": "Mixed forest",
    "HerbaceousVegetation": "Natural grassland and sparsely vegetated areas",
    "Industrial": "Industrial or commercial units", "Pasture": "Pastures",
    "PermanentCrop": "Permanent crops", "Residential": "Urban fabric", "River": "Inland waters",
    "SeaLake": "Marine waters",
}
V1_NAME = {"Arable land": "Non-irrigated arable land", "Mixed forest": "Mixed forest",
           "Natural grassland and sparsely vegetated areas": "Natural grassland",
           "Industrial or commercial units": "Industrial or commercial units",
           "Pastures": "Pastures", "Permanent crops": "Vineyards",
           "Urban fabric": "Discontinuous urban fabric", "Inland waters": "Water bodies",
           "Marine waters": "Sea and ocean"}


def render_patch(rng: np.random.Generator, size: int = 120, cloudy: bool = False
                 ) -> tuple[np.ndarray, list[str]]:
    """(13, size, size) L2A DN and the 19-class label names of one mixed patch."""
    covers = list(COVER_TO_19)
    chosen = list(rng.choice(covers, size=int(rng.integers(2, 5)), replace=False))
    yy, xx = np.mgrid[0:size, 0:size]
    pts = rng.uniform(0, size, (len(chosen), 2))
    region = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, -1)
    out = np.zeros((13, size, size), np.float32)
    labels = []
    for k, cover in enumerate(chosen):
        mask = region == k
        if mask.mean() >= 0.05:
            labels.append(COVER_TO_19[cover])
        scene = render(cover, rng, size, 1.0 if cloudy and k == 0 else 0.0, level="L2A")
        out += scene * mask[None]
    return np.clip(out, 1, 65535).astype(np.uint16), sorted(set(labels), key=CLASSES.index)


def _write_bands(folder: Path, stem: str, dn: np.ndarray, profile: dict) -> None:
    import rasterio
    from rasterio.transform import Affine

    folder.mkdir(parents=True, exist_ok=True)
    for band in BANDS:
        n = SIZES[band]
        f = dn.shape[1] // n
        arr = dn[S2_BANDS.index(band)].reshape(n, f, n, f).mean(axis=(1, 3)).round().astype(np.uint16)
        t = profile["transform"]
        tr = Affine(t.a * f, t.b, t.c, t.d, t.e * f, t.f)
        with rasterio.open(folder / f"{stem}_{band}.tif", "w", driver="GTiff", width=n, height=n,
                           count=1, dtype="uint16", crs=profile["crs"], transform=tr) as dst:
            dst.write(arr, 1)


def generate_bigearthnet(out: Path, n_patches: int = 60, seed: int = 0, cloudy_share: float = 0.1,
                         size: int = 120, v1: bool = False) -> dict:
    """Write a BigEarthNet-S2 v2 layout (or v1 with ``v1=True``) into ``out``."""
    import pandas as pd

    rows = []
    with atomic_dir(out) as tmp:
        tile = f"S2A_MSIL2A_20180{seed % 9 + 1}01T101031_N9999_R022_T33UUP"
        for i in range(n_patches):
            rng = np.random.default_rng([seed, 19, i])
            cloudy = bool(rng.random() < cloudy_share)
            dn, labels = render_patch(rng, size, cloudy)
            r, c = divmod(i, 100)
            pid = f"{tile}_{r}_{c}"
            v1name = f"S2A_MSIL2A_20180{seed % 9 + 1}01T101031_{r}_{c}"
            split = ("train", "train", "validation", "test")[i % 4]
            prof = _utm_profile(rng, size)
            if v1:
                folder = tmp / "BigEarthNet-v1.0" / v1name
                _write_bands(folder, v1name, dn, prof)
                (folder / f"{v1name}_labels_metadata.json").write_text(json.dumps(
                    {"labels": [V1_NAME[x] for x in labels], "acquisition_date": "2018-01-01"}))
            else:
                _write_bands(tmp / "BigEarthNet-S2" / tile / pid, pid, dn, prof)
            rows.append({"patch_id": pid, "labels": labels, "split": split, "country": "Austria",
                         "s1_name": f"S1_{r}_{c}", "s2v1_name": v1name,
                         "contains_seasonal_snow": False, "contains_cloud_or_shadow": cloudy})
        meta = pd.DataFrame(rows)
        if not v1:
            meta[~meta.contains_cloud_or_shadow].to_parquet(tmp / "metadata.parquet")
            meta[meta.contains_cloud_or_shadow].to_parquet(
                tmp / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    return {"patches": n_patches, "cloudy": int(meta.contains_cloud_or_shadow.sum())}


__all__ = ["generate_bigearthnet", "render_patch", "write_fixtures", "write_world"]


def write_world(out: Path, spec: WorldSpec) -> dict:
    """The embedded BigEarthNet-S2 v2 world of ``data.synthetic`` (120 x 120 patches, as
    published; ``spec.size`` is EuroSAT's)."""
    return generate_bigearthnet(out, spec.n_samples, spec.seed, size=120)


def write_fixtures(source: Source, out: Path, work: Path) -> None:
    """BigEarthNet-S2 v2's rehearsal fixture (``Source.fixtures``): ``BigEarthNet-S2.tar.zst``
    (``BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif``) and the two metadata parquets, with
    ``source.fixture_samples`` patches at the real 120 x 120."""
    world = work / source.name
    generate_bigearthnet(world, n_patches=source.fixture_samples, seed=7, cloudy_share=0.1)
    tar_zst_tree(world / "BigEarthNet-S2", "BigEarthNet-S2", out / "BigEarthNet-S2.tar.zst")
    for meta in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        shutil.copy(world / meta, out / meta)
