"""Benchmark: conversion throughput of `prepare` vs a bare rasterio read of the same files.

Generates an embedded BigEarthNet-S2 v2 world (per-band GeoTIFFs at 10/20/60 m), then times, in
one run and alternating, (a) a bare read of every band file with rasterio (resampled to 120x120
on read, the same threads) and (b) the full conversion to the zarr store (read, resample, label,
statistics, fingerprint, write). Reports the throughput ratio bare_time / convert_time
(target >= 0.8, i.e. conversion costs at most 25 % more than just reading the files).

    uv run python bench/convert_throughput.py [--patches 400] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling

from geopeft.data.prepare import prepare
from geopeft.data.sources.bigearthnet import BANDS
from geopeft.data.synthetic_bigearthnet import generate_bigearthnet


def bare_read(raw: Path, threads: int) -> int:
    meta = pd.read_parquet(raw / "metadata.parquet")

    def one(pid: str) -> int:
        folder = raw / "BigEarthNet-S2" / pid.rsplit("_", 2)[0] / pid
        out = np.empty((len(BANDS), 120, 120), np.uint16)
        for i, b in enumerate(BANDS):
            with rasterio.open(folder / f"{pid}_{b}.tif") as src:
                out[i] = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
        return int(out[0, 0, 0])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, meta.patch_id))
    return len(meta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geopeft-bench-"))
    try:
        raw = work / "raw"
        generate_bigearthnet(raw, n_patches=a.patches, seed=0, cloudy_share=0.0)
        bare, conv = [], []
        n = 0
        for r in range(a.repeats):
            t = time.perf_counter()
            n = bare_read(raw, a.threads)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            prepare("bigearthnet_s2", raw, list(BANDS), work / f"s{r}.zarr", a.threads)
            conv.append(time.perf_counter() - t)
            shutil.rmtree(work / f"s{r}.zarr")
        b, c = statistics.median(bare), statistics.median(conv)
        print(f"patches: {n} x 12 bands, threads: {a.threads}, repeats: {a.repeats}")
        print(f"bare rasterio read : {b:.2f} s  ({n / b:.0f} patches/s)")
        print(f"prepare -> zarr    : {c:.2f} s  ({n / c:.0f} patches/s)")
        print(f"throughput ratio (bare time / conversion time): {b / c:.2f}  (target >= 0.8)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
