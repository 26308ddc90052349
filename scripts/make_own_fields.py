"""Write the tiny segmentation time series of your own that the tests and
`config/studies/own_fields_example.yaml` use: 32 fields of 16 x 16 px (EPSG:32631, 10 m) on an
8 x 4 grid, each seen on 3 dates as one GeoTIFF per date (4 bands named blue, green, red, nir,
uint16 digital numbers; the date in the file name, `S2_YYYYMMDD.tif`), a mask per field (uint8:
0 background, 1 wheat, 2 maize, 255 unlabelled: a one-pixel border), and `samples.csv` (field,
path, mask: a row per field and date). Wheat is green in spring and ripe by summer, maize the
other way round, so that one date cannot tell them apart as well as three.

    uv run python scripts/make_own_fields.py [tests/data/own_fields]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

DATES = (20200415, 20200615, 20200815)
#: Mean digital numbers of (blue, green, red, nir) per class and date.
SPECTRA = {
    "background": ((900, 1000, 1200, 1800),) * 3,
    "wheat": ((500, 800, 500, 3400), (600, 800, 700, 2600), (1100, 1200, 1400, 1900)),
    "maize": ((1000, 1100, 1300, 2000), (500, 800, 500, 3000), (450, 750, 450, 3600)),
}
SIDE, COLS, ROWS, PIXEL = 16, 8, 4, 10.0
X0, Y0 = 500_000.0, 4_600_000.0
IGNORE = 255


def write(out: Path, seed: int = 11) -> Path:
    """Write the rasters, masks and table under ``out`` (replaced file by file); returns the
    table."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    classes = list(SPECTRA)
    rows = []
    for k in range(COLS * ROWS):
        col, row = k % COLS, k // COLS
        left, top = X0 + col * SIDE * PIXEL, Y0 - row * SIDE * PIXEL
        profile = {"driver": "GTiff", "width": SIDE, "height": SIDE, "crs": "EPSG:32631",
                   "transform": from_origin(left, top, PIXEL, PIXEL), "compress": "deflate"}
        mask = np.zeros((SIDE, SIDE), np.uint8)
        for cls in (1, 2):  # a wheat and a maize parcel, rectangles that may overlap
            y, x = rng.integers(0, SIDE - 6, 2)
            h, w = rng.integers(5, 11, 2)
            mask[y : y + h, x : x + w] = cls
        field = f"f{k:02d}"
        folder = out / "fields" / field
        folder.mkdir(parents=True, exist_ok=True)
        for t, date in enumerate(DATES):
            mean = np.stack([np.array(SPECTRA[classes[c]][t], np.float64) for c in range(3)])
            img = mean[mask].transpose(2, 0, 1)  # (4, H, W)
            data = np.clip(rng.normal(img, 0.08 * img + 40), 1, 10_000).astype(np.uint16)
            path = folder / f"S2_{date}.tif"
            with rasterio.open(path, "w", count=4, dtype="uint16", **profile) as f:
                f.write(data)
                for i, name in enumerate(("blue", "green", "red", "nir"), start=1):
                    f.set_band_description(i, name)
            rows.append({"field": field, "path": path.relative_to(out).as_posix(),
                         "mask": f"masks/{field}.tif"})
        labelled = mask.copy()
        labelled[[0, -1], :] = IGNORE
        labelled[:, [0, -1]] = IGNORE
        (out / "masks").mkdir(parents=True, exist_ok=True)
        with rasterio.open(out / "masks" / f"{field}.tif", "w", count=1, dtype="uint8",
                           nodata=IGNORE, **profile) as f:
            f.write(labelled[None])
    table = out / "samples.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return table


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/own_fields")))
