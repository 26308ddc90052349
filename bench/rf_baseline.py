"""Baseline: a per-pixel random forest on a PASTIS-format store, the yardstick of the
time-series study's models.

Each pixel is one sample: its T dates x 10 bands of reflectance (the store's scaled values), cut
with geopeft's own temporal subsets (nested, evenly spaced, in date order: the same dates the
models see) and label-fraction subsets (the same stratified, nested, seeded patches); void (19)
pixels are left out of training and scoring. Test mIoU over the 19 classes is computed with
geopeft's segmentation metrics (one confusion matrix over the test split), so the numbers compare
one to one with the study's table. Training pixels are subsampled (``--pixels`` per patch, seeded)
to keep it fast.

    uv run python bench/rf_baseline.py \
        --store data/prepared/synthetic/pastis/B02-B03-B04-B05-B06-B07-B08-B8A-B11-B12.zarr \
        [--lengths 1 6 15 35] [--fractions 0.1 1.0] [--seeds 0 1] [--trees 100] [--json out.json]

The store of the embedded study is made by its data rules (``snakemake --cores all --configfile
config/studies/shaping_ft_embedded.yaml``, or only its prepare job).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def pixels(split, n_per_patch: int | None, rng: np.random.Generator, scale: float):
    """(pixels x features, labels) of a split's non-void pixels; features = T x C values."""
    x = split.x.astype(np.float32) * scale  # (N, T, C, H, W)
    n, t, c, h, w = x.shape
    feats = x.transpose(0, 3, 4, 1, 2).reshape(n, h * w, t * c)
    labels = split.y.reshape(n, h * w)
    xs, ys = [], []
    for i in range(n):
        keep = np.flatnonzero(labels[i] != split.ignore_index)
        if n_per_patch is not None and len(keep) > n_per_patch:
            keep = rng.choice(keep, n_per_patch, replace=False)
        xs.append(feats[i, keep])
        ys.append(labels[i, keep])
    return np.concatenate(xs), np.concatenate(ys)


def run(store: Path, lengths: list[int], fractions: list[float], seeds: list[int], trees: int,
        n_per_patch: int | None, jobs: int) -> list[dict]:
    from sklearn.ensemble import RandomForestClassifier

    from geopeft.data.dataset import load_split, store_info
    from geopeft.data.subsets import subset_file_name, write_subset
    from geopeft.data.temporal import REFERENCE_DATE
    from geopeft.metrics.segmentation import pixel_confusion, segmentation_metrics
    from geopeft.spec import Temporal

    info = store_info(store)
    n_cls = len(info.classes) - 1  # void excluded
    ladder = tuple(sorted(set(lengths), reverse=True))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            temporal = Temporal(length, ladder, "mask", REFERENCE_DATE)
            test = load_split(store, "test", temporal=temporal)
            xt, yt = pixels(test, None, np.random.default_rng(0), info.value_scale)
            for fraction in fractions:
                for seed in seeds:
                    subset = None
                    if fraction < 1:
                        subset = Path(tmp) / subset_file_name("stratified", fraction, seed)
                        if not subset.exists():
                            write_subset(store, fraction, seed, "stratified", subset)
                    train = load_split(store, "train", subset, temporal)
                    rng = np.random.default_rng(seed)
                    x, y = pixels(train, n_per_patch, rng, info.value_scale)
                    t0 = time.perf_counter()
                    rf = RandomForestClassifier(n_estimators=trees, n_jobs=jobs, random_state=seed)
                    rf.fit(x, y)
                    pred = rf.predict(xt)
                    m = segmentation_metrics(pixel_confusion(yt, pred, n_cls))
                    row = {"length": length, "label_fraction": fraction, "seed": seed,
                           "train_patches": len(train), "train_pixels": len(y),
                           "test_miou": round(100 * m["miou"], 1),
                           "test_oa": round(100 * m["overall_accuracy"], 1),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    print(json.dumps(row), flush=True)
                    out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="a prepared PASTIS-format zarr store")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 6, 15])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--pixels", type=int, default=400, help="training pixels drawn per patch")
    ap.add_argument("--jobs", type=int, default=2, help="random-forest worker threads")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    if not a.store.exists():
        print(f"{a.store}: no such store (run the study's data rules first)", file=sys.stderr)
        return 2
    rows = run(a.store, a.lengths, a.fractions, a.seeds, a.trees, a.pixels, a.jobs)
    print("\nmean ± sd over seeds (test mIoU %, 19 classes, void excluded)")
    for length in a.lengths:
        for fraction in a.fractions:
            v = np.array([r["test_miou"] for r in rows
                          if r["length"] == length and r["label_fraction"] == fraction])
            sd = f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""
            print(f"T = {length:>2}, {fraction:>4.0%} labels: {v.mean():.1f}{sd} (n = {len(v)})")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
