"""Embedded PASTIS world: agricultural parcels whose reflectance follows crop phenology.

Each patch is a set of parcels (Voronoi polygons of :data:`FIELD_PIXELS`) of PASTIS crop classes
on a background, with void (19) on a one-pixel parcel border, observed on 38-61 irregular dates
over a year (some cloudy). A pixel's NDVI follows its class's double-logistic curve (green-up day
S, senescence day A, peak m; winter crops green up early and are harvested in July,
maize/sunflower/soy green up in May and peak in July-August, meadows stay green with mowing
drops), and its reflectance is the soil/crop mixture with that vegetation fraction. Crops that
look alike on one date differ over the season, so the sequence length matters. Written in the
PASTIS layout: ``DATA_S2`` (T x 10 x H x W int16), ``ANNOTATIONS/TARGET`` (3 x H x W),
``metadata.geojson``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from geopeft.data.fixtures import zip_tree
from geopeft.data.sources.base import SYNTHETIC_MARKER, Source
from geopeft.data.sources.pastis import BANDS, VOID
from geopeft.data.surfaces import _L2A, ENDMEMBERS, fractal, parcels
from geopeft.data.synthetic import WorldSpec, write_marker
from geopeft.io import atomic_dir

#: Range of a parcel's mean area in pixels (drawn per patch) up to 32-pixel patches; larger
#: patches keep the same number of parcels (~23-40 a patch; PASTIS has ~50 per 128 px patch).
#: The embedded world's 32 px patches are a scaled-down PASTIS: with real-sized fields a patch
#: would show ~4 parcels and the whole world a handful of labelled parcels per class, too few
#: independent examples for any model to learn the classes' phenology.
FIELD_PIXELS = (25.0, 45.0)

#: class -> (green-up day, senescence day, peak NDVI, mowing) of the double logistic.
PHENOLOGY: dict[int, tuple[float, float, float, bool]] = {
    1: (60, 320, 0.78, True),    # meadow
    2: (40, 185, 0.88, False),   # soft winter wheat
    3: (145, 265, 0.85, False),  # corn
    4: (35, 170, 0.86, False),   # winter barley
    5: (30, 160, 0.84, False),   # winter rapeseed
    6: (95, 195, 0.82, False),   # spring barley
    7: (140, 240, 0.80, False),  # sunflower
    8: (120, 280, 0.55, False),  # grapevine
    9: (130, 290, 0.84, False),  # beet
    10: (45, 190, 0.87, False),  # winter triticale
    11: (40, 180, 0.86, False),  # winter durum wheat
    12: (110, 230, 0.70, False),  # fruits, vegetables, flowers
    13: (125, 225, 0.80, False),  # potatoes
    14: (70, 300, 0.80, True),   # leguminous fodder
    15: (150, 270, 0.83, False),  # soybeans
    16: (90, 300, 0.65, False),  # orchard
    17: (50, 190, 0.84, False),  # mixed cereal
    18: (150, 275, 0.80, False),  # sorghum
}


def ndvi_curve(cls: int, days: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """NDVI over ``days`` (day of year) for class ``cls``; jitter shifts S and A per parcel."""
    s, a, m, mowing = PHENOLOGY[cls]
    w = 0.12
    s, a = s + jitter, a + jitter
    v = w + (m - w) * (1 / (1 + np.exp(-0.08 * (days - s))) + 1 / (1 + np.exp(0.08 * (days - a))) - 1)
    if mowing:
        for cut in (150, 215):
            v = v - 0.35 * np.exp(-(((days - cut - jitter) / 8) ** 2))
    return np.clip(v, 0.05, 0.92)


def acquisition_dates(rng: np.random.Generator, year: int = 2019) -> list[int]:
    """38-61 distinct acquisition dates (YYYYMMDD) of one year, sorted, as PASTIS series have."""
    n = int(rng.integers(38, 62))
    days = np.sort(rng.choice(np.arange(1, 366), size=n, replace=False))
    start = dt.date(year, 1, 1)
    return [int((start + dt.timedelta(days=int(d) - 1)).strftime("%Y%m%d")) for d in days]


def render_series(rng: np.random.Generator, size: int, dates: list[int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(T, 10, size, size) int16 and the semantic target (size, size)."""
    # parcels() spreads its seeds over 4x the patch's area, so a patch shows about a quarter of them
    area = rng.uniform(*FIELD_PIXELS) * max(1.0, size / 32) ** 2
    ids = parcels(rng, size, max(4, round(4 * size * size / area)))
    n_par = ids.max() + 1
    cls_of = rng.integers(1, 19, n_par)
    cls_of[rng.random(n_par) < 0.15] = 0  # background parcels
    sem = cls_of[ids].astype(np.uint8)
    border = np.zeros_like(sem, bool)
    border[1:] |= ids[1:] != ids[:-1]
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    sem[border & (sem > 0)] = VOID
    days = np.array([dt.datetime.strptime(str(d), "%Y%m%d").timetuple().tm_yday for d in dates],
                    np.float32)
    jitter = rng.normal(0, 8, n_par).astype(np.float32)
    soil = ENDMEMBERS["soil"] * rng.uniform(0.8, 1.1)
    veg = ENDMEMBERS["crop"]
    tex = 0.9 + 0.2 * fractal(rng, size, (8, 16))
    band_idx = [_L2A.index(b) for b in BANDS]
    out = np.zeros((len(dates), len(BANDS), size, size), np.float32)
    for p in range(n_par):
        mask = ids == p
        if cls_of[p] == 0:
            frac = np.full(len(dates), rng.uniform(0.2, 0.6), np.float32)
        else:
            ndvi = ndvi_curve(int(cls_of[p]), days, jitter[p])
            frac = np.clip((ndvi - 0.12) / (0.88 - 0.12), 0, 1)
        spec = frac[:, None] * veg[band_idx][None] + (1 - frac[:, None]) * soil[band_idx][None]
        out += spec[:, :, None, None] * mask[None, None]
    out *= tex[None, None]
    cloudy = rng.random(len(dates)) < 0.15
    for t in np.flatnonzero(cloudy):
        alpha = np.clip(fractal(rng, size, (2, 4)) * 2 - 0.8, 0, 1)
        out[t] = out[t] * (1 - alpha) + 0.45 * alpha
    out += rng.normal(0, 0.004, out.shape).astype(np.float32)
    return np.clip(np.rint(out * 10000), 0, 32767).astype(np.int16), sem


def generate_pastis(out: Path, n_patches: int = 20, size: int = 32, seed: int = 0) -> dict:
    """Write a PASTIS-layout dataset with ``n_patches`` patches spread over folds 1-5."""
    feats = []
    with atomic_dir(out) as tmp:
        (tmp / "DATA_S2").mkdir()
        (tmp / "ANNOTATIONS").mkdir()
        for i in range(n_patches):
            pid = 10000 + i
            rng = np.random.default_rng([seed, 35, i])
            dates = acquisition_dates(rng)
            data, sem = render_series(rng, size, dates)
            np.save(tmp / "DATA_S2" / f"S2_{pid}.npy", data)
            target = np.stack([sem, sem, np.zeros_like(sem)]).astype(np.uint8)
            np.save(tmp / "ANNOTATIONS" / f"TARGET_{pid}.npy", target)
            feats.append({"type": "Feature", "geometry": None, "properties": {
                "ID_PATCH": pid, "Fold": i % 5 + 1, "N_Parcel": int(len(np.unique(sem))),
                "Parcel_Cover": float((sem > 0).mean()), "TILE": "T31TFM",
                "dates-S2": {str(k): d for k, d in enumerate(dates)}}})
        (tmp / "metadata.geojson").write_text(json.dumps(
            {"type": "FeatureCollection", "features": feats}))
        write_marker(tmp, size)
    return {"patches": n_patches}


__all__ = ["acquisition_dates", "generate_pastis", "ndvi_curve", "render_series", "write_fixtures",
           "write_world"]


def write_world(out: Path, spec: WorldSpec) -> dict:
    """The embedded PASTIS world of ``data.synthetic`` (``spec.size`` pixels a side)."""
    return generate_pastis(out, spec.n_samples, spec.size, spec.seed)


def write_fixtures(source: Source, out: Path, work: Path) -> None:
    """PASTIS's rehearsal fixture (``Source.fixtures``): ``PASTIS.zip`` (``PASTIS/DATA_S2``,
    ``ANNOTATIONS``, ``metadata.geojson``) with ``source.fixture_samples`` patches at the real
    128 x 128, without the embedded world's marker (the publisher's archive has none)."""
    world = work / "PASTIS"
    generate_pastis(world, n_patches=source.fixture_samples, size=128, seed=7)
    (world / SYNTHETIC_MARKER).unlink()
    zip_tree(world, "PASTIS", out / "PASTIS.zip")
