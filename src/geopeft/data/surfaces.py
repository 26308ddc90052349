"""The surfaces of the embedded synthetic world: the reflectance spectra of its endmembers
and the class-specific spatial layouts (parcels, rows, lines, blocks, canopy, fractal noise)
that mix them into a EuroSAT scene (:data:`SCENES`); :mod:`geopeft.data.synthetic` renders
them through the sensor and writes the files."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

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


