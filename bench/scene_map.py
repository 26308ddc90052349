"""Benchmark: whole-scene maps in memory bounded by the block, not the scene (issue 32, item 3).

Writes sparse GeoTIFF scenes (tiled, ``sparse_ok``: a 1,024 x 1,024 px corner of real samples
written, the rest unwritten, which reads as nodata) of each side in ``--sides`` and maps each with
``geopeft predict --model ... scene.tif --out map.tif`` in a fresh process, printing its peak
memory (the process's maximum resident set) and wall time side by side, after the same command
on one 32 px chip (CSV; the process's own start-up peak, the baseline):

- classification: 13-band uint16 scenes (EuroSAT's file order, B8A last) mapped by a linear-probe
  run of the embedded EuroSAT-MS world (the tests' tiny ViT, 32 px tiles, one class per tile);
- segmentation: 8 rasters of 10 int16 bands, one per date, mapped by a T = 6 U-TAE run of the
  embedded PASTIS world (the tests' small U-TAE, 24 px tiles overlapping by 6, one class per
  pixel).

The runs are the tests' (``tests/conftest.py``: random weights, so the maps mean nothing; the
cost is the point). The goal: the largest scene's peak within a small margin of the smallest's.

    uv run python bench/scene_map.py [--sides 2000 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The written corner's side (px); the rest of each scene is unwritten.
WRITTEN = 1024
#: Dates of the segmentation scene.
DATES = 8


def sparse_scene(path: Path, side: int, fill: np.ndarray, nodata: int) -> Path:
    """A ``side`` x ``side`` GeoTIFF of ``fill``'s bands and dtype whose top-left corner is
    ``fill`` (bands, h, w) and whose other blocks are never written."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=fill.shape[0],
                       dtype=fill.dtype, tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", sparse_ok=True, nodata=nodata, BIGTIFF="IF_SAFER",
                       crs="EPSG:32631", transform=from_origin(500_000, 4_600_000, 10, 10)) as f:
        f.write(fill, window=Window(0, 0, fill.shape[2], fill.shape[1]))
    return path


def mosaic(samples: list[np.ndarray], side: int) -> np.ndarray:
    """``side`` x ``side`` px of the samples (..., h, w) laid side by side, in turn."""
    h, w = samples[0].shape[-2:]
    rows = []
    k = 0
    for _ in range(-(-side // h)):
        row = []
        for _ in range(-(-side // w)):
            row.append(samples[k % len(samples)])
            k += 1
        rows.append(np.concatenate(row, axis=-1))
    return np.ascontiguousarray(np.concatenate(rows, axis=-2)[..., :side, :side])


def measure(args: list[str]) -> dict[str, float | str]:
    """Run ``geopeft`` with ``args`` in a fresh process: its peak resident memory (MiB), wall
    time (s) and last line of output."""
    exe = [sys.executable, "-m", "geopeft.cli"]
    start = time.perf_counter()
    proc = subprocess.Popen([*exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"geopeft {' '.join(args)} failed:\n{err[-3000:]}")
    return {"peak_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(seconds, 1),
            "said": out.strip().splitlines()[-1]}


def runs(tmp: Path) -> tuple[Path, list[np.ndarray], Path, list[np.ndarray], list[int]]:
    """The two runs (the tests' builders) and the samples their scenes are made of."""
    sys.path.insert(0, str(ROOT / "tests"))
    import rasterio
    from conftest import save_linear_run, save_utae_run

    from geopeft.bands import EUROSAT_MS_FILE_ORDER
    from geopeft.data.prepare import prepare
    from geopeft.data.sources.pastis import read_geojson
    from geopeft.data.synthetic import WorldSpec, generate_eurosat
    from geopeft.data.synthetic_pastis import generate_pastis

    generate_eurosat(WorldSpec(seed=11, n_samples=60, source_samples=0, size=32),
                     tmp / "ms", None)
    prepare("eurosat_ms", tmp / "ms", list(EUROSAT_MS_FILE_ORDER), tmp / "ms.zarr")
    ms_run = save_linear_run(tmp / "ms.zarr", tmp / "ms-run" / "model")
    chips = []
    for f in sorted((tmp / "ms").rglob("*.tif"))[:40]:
        with rasterio.open(f) as src:
            chips.append(src.read())
    generate_pastis(tmp / "PASTIS", n_patches=10, size=24, seed=4)
    seg_run, _, _ = save_utae_run(tmp / "PASTIS", tmp / "seg")
    metas = read_geojson(tmp / "PASTIS" / "metadata.geojson")
    meta = next(m for m in metas if len(m["dates"]) >= DATES)
    patches = [np.load(tmp / "PASTIS" / "DATA_S2" / f"S2_{m['id']}.npy")[:DATES] for m in metas
               if len(m["dates"]) >= DATES]
    return ms_run, chips, seg_run, patches, list(meta["dates"][:DATES])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[2000, 10000],
                    help="scene sides in px (default 2000 10000)")
    ap.add_argument("--written", type=int, default=WRITTEN,
                    help=f"side of the written corner in px (default {WRITTEN})")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    results: dict[str, dict[str, dict]] = {"classification": {}, "segmentation": {}}
    with tempfile.TemporaryDirectory(prefix="scene-bench-") as name:
        tmp = Path(name)
        ms_run, chips, seg_run, patches, dates = runs(tmp)
        chip = tmp / "chip.tif"
        sparse_scene(chip, 32, chips[0], nodata=0)
        res = measure(["predict", "--model", str(ms_run), str(chip)])
        results["one chip"] = {"32": res}
        print(f"one 32 px chip (CSV, the baseline): peak {res['peak_mib']:>7} MiB, "
              f"{res['seconds']:>6} s", flush=True)
        ms_fill = mosaic(chips, a.written)
        seg_fill = mosaic(patches, a.written)  # (dates, 10, h, w)
        for side in a.sides:
            if side < a.written:
                raise SystemExit(f"--sides {side}: under the written corner's {a.written} px")
            scene = sparse_scene(tmp / f"ms-{side}.tif", side, ms_fill, nodata=0)
            res = measure(["predict", "--model", str(ms_run), str(scene), "--out",
                           str(tmp / f"map-ms-{side}.tif"), "--confidence"])
            results["classification"][str(side)] = res
            print(f"classification {side:>6} px x 13 bands: peak {res['peak_mib']:>7} MiB, "
                  f"{res['seconds']:>6} s  ({res['said'].split(': ', 1)[1]})", flush=True)
            rasters = [sparse_scene(tmp / f"seg-{side}-{t}.tif", side, seg_fill[t], -32768)
                       for t in range(DATES)]
            res = measure(["predict", "--model", str(seg_run), "--out",
                           str(tmp / f"map-seg-{side}.tif"), "--dates",
                           ",".join(map(str, dates)), *map(str, rasters)])
            results["segmentation"][str(side)] = res
            print(f"segmentation   {side:>6} px x 10 bands x {DATES} dates: peak "
                  f"{res['peak_mib']:>7} MiB, {res['seconds']:>6} s  "
                  f"({res['said'].split(': ', 1)[1]})", flush=True)
            for f in [scene, *rasters]:
                f.unlink()
    for task, by_side in results.items():
        if task == "one chip":
            continue
        peaks = [r["peak_mib"] for r in by_side.values()]
        print(f"{task}: largest / smallest scene's peak memory {max(peaks) / min(peaks):.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
