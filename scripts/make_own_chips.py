"""Write the tiny dataset of your own that the tests and `config/studies/own_chips_example.yaml`
use: 48 GeoTIFF chips (16 x 16 px, 4 bands named blue, green, red, nir, uint16 digital numbers,
EPSG:32631, 10 m) of three classes on an 8 x 6 grid of neighbouring chips, and `labels.csv`
(path, label, split, x, y: the chip's centre in metres). Each class has its own spectrum (water
dark with low nir, forest high nir, cropland bright), with noise; the split column holds a split
for studies that take it from the table.

    uv run python scripts/make_own_chips.py [tests/data/own_chips]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

#: Mean digital numbers of (blue, green, red, nir) per class.
SPECTRA = {"cropland": (900, 1100, 1300, 2600), "forest": (400, 600, 450, 3200),
           "water": (700, 650, 500, 250)}
SIDE, COLS, ROWS, PIXEL = 16, 8, 6, 10.0
X0, Y0 = 500_000.0, 4_600_000.0


def write(out: Path, seed: int = 7) -> Path:
    """Write the chips and the table under ``out`` (replaced file by file); returns the table."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    classes = list(SPECTRA)
    (out / "chips").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(COLS * ROWS):
        col, row = k % COLS, k // COLS
        label = classes[int(rng.integers(len(classes)))]
        mean = np.array(SPECTRA[label], np.float64)[:, None, None]
        data = np.clip(rng.normal(mean, 0.08 * mean + 40, (4, SIDE, SIDE)), 1, 10_000)
        left, top = X0 + col * SIDE * PIXEL, Y0 - row * SIDE * PIXEL
        path = Path("chips") / f"chip_{k:02d}.tif"
        with rasterio.open(out / path, "w", driver="GTiff", width=SIDE, height=SIDE, count=4,
                           dtype="uint16", crs="EPSG:32631", compress="deflate",
                           transform=from_origin(left, top, PIXEL, PIXEL)) as f:
            f.write(data.astype(np.uint16))
            for i, name in enumerate(("blue", "green", "red", "nir"), start=1):
                f.set_band_description(i, name)
        split = ("train", "train", "train", "val", "test")[k % 5]
        rows.append({"path": path.as_posix(), "label": label, "split": split,
                     "x": left + SIDE * PIXEL / 2, "y": top - SIDE * PIXEL / 2})
    table = out / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return table


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/own_chips")))
