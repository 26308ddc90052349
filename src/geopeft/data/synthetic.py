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
from geopeft.data.surfaces import _L2A, SCENES, _mix, fractal
from geopeft.io import atomic_dir

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
