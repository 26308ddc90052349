"""The embedded synthetic Sentinel-2 world.

Real data and hub weights cannot be fetched everywhere geopeft runs (CI, air-gapped nodes), so
the default study runs on scenes this module generates. They are physically motivated rather than
random noise:

* **Spectra.** Every pixel is a linear mixture of surface-reflectance endmembers (water, forest,
  pasture, crop, soil, urban, asphalt, ...) whose 12 L2A band values follow the table in
  ``shared/notes/datasets.md`` (medians measured on real BigEarthNet patches where available).
* **Texture.** Abundances come from class-specific spatial layouts (parcels, rows, road and
  river lines, building blocks, canopy) modulated by multi-scale fractal noise.
* **Within-class variation.** Brightness, mixing fractions, crop phase, water sediment load and
  layout geometry vary per scene.
* **Sensor.** 20 m and 60 m bands are blurred to their native resolution, an L1C path radiance
  is added (EuroSAT is L1C), then Gaussian noise; optional clouds (bright in the cirrus band B10).

As in reality some class pairs are told apart mainly by NIR/SWIR: pasture vs herbaceous
vegetation, river vs highway, permanent vs annual crop. Their visible spectra overlap, so an
RGB-only model confuses them and band choice matters.

Files are written in the real on-disk formats: EuroSAT-MS (13-band uint16 GeoTIFF, 64x64, with a
UTM CRS, **file band order B01..B12 then B8A**), EuroSAT-RGB (JPEG), class folders and the
``eurosat-{train,val,test}.txt`` split files. A disjoint, differently-labelled *source* set (five
coarse land-cover groups, other seeds) serves for pretraining.

Everything is a pure function of the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from geopeft.bands import EUROSAT_MS_FILE_ORDER, NATIVE_RES_M, S2_BANDS
from geopeft.data.fixtures import zip_tree
from geopeft.data.sources import DataError, Source, get_source
from geopeft.data.sources.base import SYNTHETIC_MARKER
from geopeft.data.sources.eurosat import EUROSAT_CLASSES, EUROSAT_COUNTS, SOURCE_GROUPS
from geopeft.io import atomic_dir

# L2A surface reflectance (0-1), bands in L2A order (no B10):
# B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12
_L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
ENDMEMBERS: dict[str, np.ndarray] = {
    k: np.asarray(v, dtype=np.float32)
    for k, v in {
        # measured / tabulated (shared/notes/datasets.md)
        "dark_lake": [.003, .013, .010, .009, .010, .012, .013, .014, .014, .014, .011, .008],
        "sea": [.04, .04, .04, .02, .015, .01, .01, .01, .01, .01, .005, .003],
        "turbid_river": [.05, .05, .07, .06, .06, .04, .04, .04, .03, .03, .02, .01],
        "broadleaf": [.02, .025, .05, .025, .07, .25, .33, .35, .37, .35, .16, .07],
        "conifer": [.008, .023, .043, .028, .083, .215, .259, .276, .291, .256, .129, .059],
        "pasture": [.038, .035, .079, .044, .140, .363, .432, .450, .476, .477, .237, .118],
        "crop": [.03, .025, .06, .03, .10, .35, .45, .46, .47, .45, .18, .085],
        "soil": [.09, .13, .18, .20, .24, .31, .34, .34, .35, .36, .34, .29],
        "urban": [.09, .10, .11, .12, .14, .17, .18, .20, .20, .20, .23, .20],
        "asphalt": [.08, .08, .09, .10, .11, .12, .13, .14, .14, .14, .16, .14],
        # estimates: same visible signature as their confusable partner, different NIR/SWIR
        # dry, partly senescent natural grass and shrub: pasture-like visible, low NIR, high SWIR
        "herbaceous": [.040, .036, .078, .046, .135, .260, .300, .310, .330, .330, .300, .190],
        # woody perennial crop canopy (orchard, vineyard): crop-like visible, lower NIR, more SWIR
        "woody_crop": [.030, .026, .060, .032, .095, .270, .320, .330, .345, .330, .235, .125],
        # sediment-laden water: bright visible like asphalt, dark NIR/SWIR
        "silty_water": [.07, .075, .095, .095, .085, .05, .045, .04, .035, .03, .02, .012],
        "roof": [.11, .12, .14, .16, .18, .20, .21, .22, .22, .22, .26, .23],
    }.items()
}
#: L1C path radiance added per band (reflectance units) to mimic top-of-atmosphere data.
PATH_RADIANCE: dict[str, float] = {
    "B01": .10, "B02": .065, "B03": .04, "B04": .025, "B05": .02, "B06": .015, "B07": .012,
    "B08": .01, "B8A": .01, "B09": .004, "B10": .0012, "B11": .003, "B12": .002,
}
_SIGMA = {10: 0.0, 20: 0.9, 60: 2.6}  # blur (pixels at 10 m) to simulate native resolution


@dataclass(frozen=True)
class WorldSpec:
    """What to generate.

    Attributes:
        seed: master seed; the world is a pure function of it.
        n_samples: total number of target scenes (split over classes in EuroSAT proportions).
        source_samples: number of scenes in the pretraining source set (disjoint seeds).
        size: scene side in pixels (EuroSAT: 64).
        cloud_fraction: probability that a scene carries a cloud.
        noise: standard deviation of the sensor noise (reflectance units).
        split: train/val/test fractions of the target set (EuroSAT: 0.6/0.2/0.2).
    """

    seed: int = 0
    n_samples: int = 1000
    source_samples: int = 1000
    size: int = 64
    cloud_fraction: float = 0.05
    noise: float = 0.004
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    classes: tuple[str, ...] = field(default=EUROSAT_CLASSES)


# ---------------------------------------------------------------------------------- textures
def fractal(rng: np.random.Generator, size: int, scales: tuple[int, ...] = (4, 8, 16),
            weights: tuple[float, ...] | None = None) -> np.ndarray:
    """Multi-scale smooth noise in [0, 1]: sum of bilinearly upsampled random grids."""
    weights = weights or tuple(1.0 / (i + 1) for i in range(len(scales)))
    out = np.zeros((size, size), np.float32)
    for s, w in zip(scales, weights, strict=True):
        g = rng.random((s + 1, s + 1), dtype=np.float32)
        out += w * ndimage.zoom(g, size / (s + 1), order=1, mode="nearest")[:size, :size]
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def parcels(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Integer parcel map from a jittered, rotated grid of Voronoi cells (agricultural fields)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    pts = rng.uniform(-size * 0.5, size * 1.5, (n, 2)).astype(np.float32)
    # anisotropic distance: fields are elongated
    d = (u[..., None] - pts[:, 0]) ** 2 + 4.0 * (v[..., None] - pts[:, 1]) ** 2
    return np.argmin(d, axis=-1)


def line_mask(rng: np.random.Generator, size: int, width: float, meander: float) -> np.ndarray:
    """Soft mask (0-1) of a linear feature crossing the scene (road or river)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    c = size / 2 + rng.uniform(-size / 4, size / 4)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta) - (c * 0.0)
    v = v - np.median(v) + rng.uniform(-size / 5, size / 5)
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(size * 0.6, size * 1.5)
    centre = meander * np.sin(2 * np.pi * u / period + phase)
    dist = np.abs(v - centre)
    return np.clip(width / 2 + 0.5 - dist, 0, 1)


def blocks(rng: np.random.Generator, size: int, block: int, fill: float) -> np.ndarray:
    """Binary map of building blocks on a jittered grid; ``fill`` is the built-up fraction."""
    n = size // block + 2
    keep = rng.random((n, n)) < fill
    grid = np.kron(keep, np.ones((block, block), bool))
    oy, ox = rng.integers(0, block, 2)
    return grid[oy : oy + size, ox : ox + size].astype(np.float32)


# ------------------------------------------------------------------------------- class scenes
Mixture = list[tuple[str | np.ndarray, np.ndarray]]


def _mix(parts: Mixture, size: int) -> np.ndarray:
    """Sum abundance-weighted endmember spectra -> (12, H, W) surface reflectance."""
    out = np.zeros((len(_L2A), size, size), np.float32)
    total = np.zeros((size, size), np.float32)
    for spec, ab in parts:
        s = ENDMEMBERS[spec] if isinstance(spec, str) else spec
        out += s[:, None, None] * ab[None]
        total += ab
    return out / np.maximum(total, 1e-6)[None]


def _background(rng: np.random.Generator, size: int) -> Mixture:
    """Rural background for line features: pasture, crop and soil in smooth patches."""
    f1, f2 = fractal(rng, size), fractal(rng, size)
    return [("pasture", f1 + 0.2), ("crop", f2 * 0.8), ("soil", (1 - f1) * 0.4 + 0.05)]


def scene_annual_crop(rng: np.random.Generator, size: int) -> Mixture:
    ids = parcels(rng, size, int(rng.integers(4, 12)))
    phase = rng.uniform(0, 1, ids.max() + 1).astype(np.float32)[ids]
    rows = 0.5 + 0.5 * np.sin(np.arange(size, dtype=np.float32) * rng.uniform(1.5, 3.0))[None]
    phase = np.clip(phase + 0.08 * (rows - 0.5) + 0.1 * (fractal(rng, size) - 0.5), 0, 1)
    return [("crop", phase), ("soil", 1 - phase)]


def scene_permanent_crop(rng: np.random.Generator, size: int) -> Mixture:
    ids = parcels(rng, size, int(rng.integers(4, 12)))
    cover = rng.uniform(0.25, 0.9, ids.max() + 1).astype(np.float32)[ids]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    th = rng.uniform(0, np.pi)
    rows = 0.5 + 0.5 * np.sin((xx * np.cos(th) + yy * np.sin(th)) * rng.uniform(1.5, 3.0))
    cover = np.clip(cover + 0.15 * (rows - 0.5) + 0.1 * (fractal(rng, size) - 0.5), 0, 1)
    grass = rng.uniform(0, 0.4)
    return [("woody_crop", cover), ("soil", (1 - cover) * (1 - grass)),
            ("herbaceous", (1 - cover) * grass)]


def scene_pasture(rng: np.random.Generator, size: int) -> Mixture:
    f = fractal(rng, size, (2, 4, 8))
    hedge = line_mask(rng, size, rng.uniform(0.5, 2), 3) * (rng.random() < 0.4)
    return [("pasture", 1 + 0.3 * f), ("soil", 0.08 * (1 - f)), ("broadleaf", 3 * hedge)]


def scene_herbaceous(rng: np.random.Generator, size: int) -> Mixture:
    f = fractal(rng, size, (4, 8, 16, 32))
    shrub = (fractal(rng, size, (8, 16)) > rng.uniform(0.6, 0.85)).astype(np.float32)
    return [("herbaceous", 1 + 0.3 * f), ("soil", 0.1 * (1 - f)), ("broadleaf", 0.5 * shrub)]


def scene_forest(rng: np.random.Generator, size: int) -> Mixture:
    mix = fractal(rng, size, (2, 4))
    conifer_share = rng.uniform(0, 1)
    canopy = 0.75 + 0.25 * fractal(rng, size, (16, 32))  # crown shadowing
    conifer = conifer_share * (0.5 + mix)
    return [(ENDMEMBERS["conifer"] * 1.0, conifer * canopy),
            (ENDMEMBERS["broadleaf"] * 1.0, (1 - conifer_share) * (1.5 - mix) * canopy),
            ("dark_lake", 1 - canopy)]  # gaps/shadow: dark in all bands


def scene_highway(rng: np.random.Generator, size: int) -> Mixture:
    road = line_mask(rng, size, rng.uniform(2, 5), rng.uniform(0, 3))
    verge = np.clip(ndimage.uniform_filter(road, 5) - road, 0, 1)
    return [*_background(rng, size), ("asphalt", 12 * road), ("soil", 2 * verge)]


def scene_river(rng: np.random.Generator, size: int) -> Mixture:
    river = line_mask(rng, size, rng.uniform(2, 6), rng.uniform(2, 10))
    bank = np.clip(ndimage.uniform_filter(river, 5) - river, 0, 1)
    s = rng.uniform(0, 1)  # sediment load: clear -> turbid -> silty
    water = (1 - s) * ENDMEMBERS["turbid_river"] + s * ENDMEMBERS["silty_water"]
    return [*_background(rng, size), (water, 12 * river), ("soil", 2 * bank)]


def scene_industrial(rng: np.random.Generator, size: int) -> Mixture:
    b = blocks(rng, size, int(rng.integers(8, 16)), rng.uniform(0.5, 0.8))
    bright = rng.uniform(0.9, 1.6)
    f = fractal(rng, size, (8, 16))
    return [(ENDMEMBERS["roof"] * bright, b * (0.8 + 0.4 * f)), ("asphalt", (1 - b) * 0.8),
            ("pasture", (1 - b) * 0.2 * f)]


def scene_residential(rng: np.random.Generator, size: int) -> Mixture:
    b = blocks(rng, size, int(rng.integers(3, 6)), rng.uniform(0.3, 0.6))
    streets = blocks(rng, size, int(rng.integers(10, 20)), 0.85) < 0.5
    garden = fractal(rng, size, (8, 16))
    return [("urban", b), ("asphalt", streets * 0.8),
            ("broadleaf", (1 - b) * garden * 0.7), ("pasture", (1 - b) * (1 - garden) * 0.5)]


def scene_sea_lake(rng: np.random.Generator, size: int) -> Mixture:
    f = fractal(rng, size, (2, 4))
    clear = rng.uniform(0, 1)
    parts: Mixture = [("sea", clear * (0.8 + 0.4 * f)), ("dark_lake", (1 - clear) * (1.2 - 0.4 * f))]
    if rng.random() < 0.3:  # a shoreline
        yy = np.mgrid[0:size, 0:size][int(rng.integers(0, 2))].astype(np.float32)
        land = np.clip((yy - size * rng.uniform(0.75, 0.95)) / 2, 0, 1)
        parts = [(s, a * (1 - land)) for s, a in parts] + [("pasture", land)]
    return parts


SCENES: dict[str, Callable[[np.random.Generator, int], Mixture]] = {
    "AnnualCrop": scene_annual_crop, "Forest": scene_forest,
    "HerbaceousVegetation": scene_herbaceous, "Highway": scene_highway,
    "Industrial": scene_industrial, "Pasture": scene_pasture,
    "PermanentCrop": scene_permanent_crop, "Residential": scene_residential,
    "River": scene_river, "SeaLake": scene_sea_lake,
}


# ------------------------------------------------------------------------------------ sensor
def render(cls: str, rng: np.random.Generator, size: int = 64, cloud_fraction: float = 0.0,
           noise: float = 0.004, level: str = "L1C") -> np.ndarray:
    """One scene of class ``cls`` as (13, size, size) uint16 DN in ESA band order.

    ``level`` L1C adds the path radiance (top of atmosphere, as EuroSAT); L2A keeps surface
    reflectance (as BigEarthNet and PASTIS).
    """
    surf = _mix(SCENES[cls](rng, size), size)
    # per-scene illumination / within-class brightness, and a slight spectral tilt
    surf *= rng.normal(1.0, 0.08)
    tilt = rng.normal(0, 0.03) * np.linspace(-1, 1, len(_L2A), dtype=np.float32)
    surf *= (1 + tilt)[:, None, None]
    toa = np.empty((len(S2_BANDS), size, size), np.float32)
    for i, band in enumerate(S2_BANDS):
        if band == "B10":  # cirrus band: ~0 at the surface, atmosphere only
            toa[i] = 0.0
        else:
            toa[i] = surf[_L2A.index(band)]
            if band == "B09":  # water-vapour absorption
                toa[i] *= 0.55
    if rng.random() < cloud_fraction:
        alpha = np.clip(fractal(rng, size, (2, 4, 8)) * 2.2 - rng.uniform(0.6, 1.3), 0, 1)
        cloud = np.array([.45, .44, .43, .42, .43, .44, .45, .46, .46, .30, .25, .30, .22],
                         np.float32) * rng.uniform(0.7, 1.2)
        toa = toa * (1 - alpha[None]) + cloud[:, None, None] * alpha[None]
    for i, band in enumerate(S2_BANDS):
        sigma = _SIGMA[NATIVE_RES_M[band]]
        if sigma:
            toa[i] = ndimage.gaussian_filter(toa[i], sigma, mode="reflect")
        if level == "L1C":
            toa[i] += PATH_RADIANCE[band]
    toa += rng.normal(0, noise, toa.shape).astype(np.float32)
    return np.clip(np.rint(toa * 10000), 1, 65535).astype(np.uint16)


def to_rgb8(dn: np.ndarray) -> np.ndarray:
    """EuroSAT-RGB rendering of a 13-band DN scene (ESA order): (H, W, 3) uint8 from B04/B03/B02."""
    idx = [S2_BANDS.index(b) for b in ("B04", "B03", "B02")]
    rgb = dn[idx].astype(np.float32) / 2750.0 * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# ------------------------------------------------------------------------------------ writers
def class_counts(n_samples: int, classes: tuple[str, ...] = EUROSAT_CLASSES) -> dict[str, int]:
    """Split ``n_samples`` over classes in the real EuroSAT proportions (largest remainder)."""
    tot = sum(EUROSAT_COUNTS[c] for c in classes)
    raw = {c: n_samples * EUROSAT_COUNTS[c] / tot for c in classes}
    out = {c: int(np.floor(v)) for c, v in raw.items()}
    for c in sorted(classes, key=lambda c: out[c] - raw[c])[: n_samples - sum(out.values())]:
        out[c] += 1
    if min(out.values()) < 3:
        raise ValueError(f"n_samples={n_samples} is too small: every class needs >= 3 scenes")
    return out


def _utm_profile(rng: np.random.Generator, size: int) -> dict:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    zone = int(rng.integers(29, 36))  # Europe
    x0 = float(rng.integers(300_000, 700_000) // 10 * 10)
    y0 = float(rng.integers(4_500_000, 6_500_000) // 10 * 10)
    return {"crs": CRS.from_epsg(32600 + zone), "transform": from_origin(x0, y0, 10.0, 10.0)}


def write_ms_tif(path: Path, dn: np.ndarray, profile: dict) -> None:
    """Write a 13-band scene (ESA order) as an EuroSAT-MS GeoTIFF (file order: B8A last)."""
    import rasterio

    order = [S2_BANDS.index(b) for b in EUROSAT_MS_FILE_ORDER]
    with rasterio.open(path, "w", driver="GTiff", width=dn.shape[2], height=dn.shape[1],
                       count=13, dtype="uint16", **profile) as dst:
        dst.write(dn[order])
        for i, b in enumerate(EUROSAT_MS_FILE_ORDER, start=1):
            dst.set_band_description(i, b)


def _split_names(rng: np.random.Generator, names_by_class: dict[str, list[str]],
                 split: tuple[float, float, float]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for cls in sorted(names_by_class):
        names = list(names_by_class[cls])
        rng.shuffle(names)
        n_tr = int(round(split[0] * len(names)))
        n_va = int(round(split[1] * len(names)))
        out["train"] += names[:n_tr]
        out["val"] += names[n_tr : n_tr + n_va]
        out["test"] += names[n_tr + n_va :]
    return {k: sorted(v) for k, v in out.items()}


def _write_world(spec: WorldSpec, ms_dir: Path | None, rgb_dir: Path | None,
                 plan: list[tuple[str, str, str, list[int]]], split_key: list[int],
                 split: tuple[float, float, float]) -> dict[str, list[str]]:
    """Render ``plan`` rows ``(folder, file stem, scene class, rng key)`` into the EuroSAT-MS
    and/or EuroSAT-RGB layouts, with split files; returns the split lists."""
    from PIL import Image

    names: dict[str, list[str]] = {}
    with _atomic_dir_or_none(ms_dir) as ms_tmp, _atomic_dir_or_none(rgb_dir) as rgb_tmp:
        for folder, stem, cls, key in plan:
            rng = np.random.default_rng(key)
            dn = render(cls, rng, spec.size, spec.cloud_fraction, spec.noise)
            names.setdefault(folder, []).append(f"{stem}.jpg")
            if ms_tmp is not None:
                d = ms_tmp / "EuroSAT_MS" / folder
                d.mkdir(parents=True, exist_ok=True)
                write_ms_tif(d / f"{stem}.tif", dn, _utm_profile(rng, spec.size))
            if rgb_tmp is not None:
                d = rgb_tmp / "EuroSAT_RGB" / folder
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(to_rgb8(dn)).save(d / f"{stem}.jpg", quality=95)
        splits = _split_names(np.random.default_rng(split_key), names, split)
        for tmp in (ms_tmp, rgb_tmp):
            if tmp is not None:
                for part, lst in splits.items():
                    (tmp / f"eurosat-{part}.txt").write_text("".join(f"{x}\n" for x in lst))
                write_marker(tmp, spec.size)
    return splits


def write_marker(folder: Path, size: int) -> None:
    """Declare an embedded world (synthetic, and its sample side) at the root of its raw folder."""
    import json

    (folder / SYNTHETIC_MARKER).write_text(json.dumps(
        {"synthetic": True, "size": int(size), "generator": "geopeft embedded Sentinel-2 world"}))


def generate_eurosat(spec: WorldSpec, ms_dir: Path | None, rgb_dir: Path | None) -> dict:
    """Write the target world as EuroSAT-MS and/or EuroSAT-RGB raw datasets.

    Layout (as the real archives unzip, plus the split files beside them)::

        <ms_dir>/EuroSAT_MS/<Class>/<Class>_<n>.tif     13 bands, B8A last
        <rgb_dir>/EuroSAT_RGB/<Class>/<Class>_<n>.jpg
        <dir>/eurosat-{train,val,test}.txt               file names, as the real split files

    Returns a summary dict (counts per class and split).
    """
    counts = class_counts(spec.n_samples, spec.classes)
    plan = [(cls, f"{cls}_{n}", cls, [spec.seed, 1, ci, n])
            for ci, cls in enumerate(spec.classes) for n in range(1, counts[cls] + 1)]
    splits = _write_world(spec, ms_dir, rgb_dir, plan, [spec.seed, 2], spec.split)
    return {"counts": counts, "split": {k: len(v) for k, v in splits.items()}}


def generate_source(spec: WorldSpec, ms_dir: Path | None, rgb_dir: Path | None) -> dict:
    """Write the pretraining source set: disjoint scenes labelled with coarse groups.

    Same EuroSAT-MS / EuroSAT-RGB layouts as the target (group folders instead of class
    folders) with train/val split files, so the same reader and ``prepare`` step handle it.
    Scenes come from another random stream than the target's, so no scene is shared.
    """
    fine = class_counts(spec.source_samples, spec.classes)
    plan = []
    for group, members in SOURCE_GROUPS.items():
        members_plan = [(cls, k) for cls in members for k in range(1, fine[cls] + 1)]
        for n, (cls, k) in enumerate(members_plan, start=1):
            plan.append((group, f"{group}_{n}", cls, [spec.seed, 7, spec.classes.index(cls), k]))
    splits = _write_world(spec, ms_dir, rgb_dir, plan, [spec.seed, 8], (0.8, 0.2, 0.0))
    return {"counts": {g: sum(1 for p in plan if p[0] == g) for g in SOURCE_GROUPS},
            "split": {k: len(v) for k, v in splits.items()}}


def _atomic_dir_or_none(path: Path | None) -> AbstractContextManager[Path | None]:
    """``atomic_dir`` when a path is given, else a no-op yielding None."""
    return atomic_dir(path) if path is not None else nullcontext()


def write_fixtures(source: Source, out: Path, work: Path) -> None:
    """A EuroSAT dataset's rehearsal fixture (``Source.fixtures``): ``EuroSAT_MS.zip`` or
    ``EuroSAT_RGB.zip`` (``EuroSAT_*/<Class>/...``, 64 x 64 patches) and the split files, with
    ``source.fixture_samples`` samples of the target world."""
    world = work / source.name
    spec = WorldSpec(seed=7, n_samples=source.fixture_samples, source_samples=30, size=64)
    ms = source.layout == "EuroSAT_MS"
    generate_eurosat(spec, world if ms else None, None if ms else world)
    zip_tree(world / source.layout, source.layout, out / f"{source.layout}.zip")
    for part in ("train", "val", "test"):
        shutil.copy(world / f"eurosat-{part}.txt", out / f"eurosat-{part}.txt")


def write_world(dataset: str, out: Path, spec: WorldSpec) -> dict:
    """Write the embedded world of a dataset its source writes alone (``Source.world``).

    Args:
        dataset: the dataset (e.g. ``bigearthnet_s2``, ``pastis``).
        out: the raw folder to write, in the publisher's layout.
        spec: the world's settings (``data.synthetic``).

    Raises:
        DataError: the dataset has no world of its own.
    """
    import importlib

    source = get_source(dataset)
    if source.world is None:
        raise DataError(f"{dataset}: no embedded world of its own (EuroSAT's is written with "
                        f"its source sets: geopeft synthesize --ms/--rgb)")
    module, func = source.world.split(":")
    return getattr(importlib.import_module(module), func)(Path(out), spec)
