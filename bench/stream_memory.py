"""Benchmark: peak memory of one training epoch on stores of 2,000 and 20,000 BigEarthNet-shaped
samples, streamed from the store vs loaded whole.

Writes the stores (``--sizes``; 6 bands x 120 x 120 uint16, 19-class multi-hot labels, 80 % train /
20 % val, random values; the writer's ~16 MB sample chunks, as ``geopeft prepare`` writes them),
then, each in a fresh process, trains one epoch of a small ViT (linear memory cost negligible
next to the data: 120 px, patch 24, depth 2) with the job's data path
(:func:`geopeft.data.dataset.load_splits`), forced to stream or to load whole, and records the
process's peak resident set, and that of its largest reader process (``--workers``, the
``train.workers`` that decompress chunks ahead). Streaming must stay flat from 2,000 to 20,000
samples; loading whole grows with the store.

    uv run python bench/stream_memory.py [--sizes 2000 20000] [--workers 2] [--dir /tmp/stream-bench]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
SHAPE = (6, 120, 120)


def make_store(path: Path, n: int, seed: int = 0) -> Path:
    """A BigEarthNet-shaped store of ``n`` random samples (skipped when it exists)."""
    import numpy as np

    from geopeft.data.store import StoreWriter

    if (path / "zarr.json").is_file():
        return path
    chunk = max(1, (16 << 20) // (int(np.prod(SHAPE)) * 2))
    w = StoreWriter(path, n, BANDS, SHAPE, ("band", "y", "x"), "uint16", (19,), ("class",),
                    "uint8", chunk)
    rng = np.random.default_rng(seed)
    splits = np.where(rng.random(n) < 0.8, "train", "val").astype(object)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        w.write(start, rng.integers(0, 4000, (m, *SHAPE), dtype=np.uint16),
                (rng.random((m, 19)) < 0.15).astype(np.uint8), splits[start : start + m])
    w.close(np.array([f"s{i}" for i in range(n)], dtype=object), splits,
            {"dataset": "bigearthnet", "classes": [f"c{i}" for i in range(19)],
             "task": "multilabel", "value_scale": 1e-4})
    return path


def epoch(store: Path, stream: bool, workers: int = 0) -> dict:
    """One training epoch through the job's data path; peak RSS and time (in this process), and
    the peak RSS of its largest reader process (``workers`` of them when streaming; their RSS
    counts the pages they share with this process once more)."""
    import resource
    import time

    import torch

    from geopeft.data.dataset import load_splits, store_info
    from geopeft.models.classifier import build_classifier
    from geopeft.spec import TrainArgs
    from geopeft.strategies import apply_strategy
    from geopeft.train.loop import fit

    info = store_info(store)
    budget = (0.0, "forced: stream") if stream else (1e9, "forced: whole")
    t0 = time.perf_counter()
    train, val = load_splits(store, [("train", None), ("val", None)], budget=budget,
                             workers=workers)
    torch.manual_seed(0)
    model, _ = build_classifier({"name": "vit_tiny_patch16_224", "weights": "none",
                                 "kwargs": {"img_size": 120, "patch_size": 24, "depth": 2,
                                            "embed_dim": 48, "num_heads": 3}},
                                info, len(info.classes))
    model = apply_strategy(model, "full")
    fit(model, train, val, TrainArgs(epochs=1, batch_size=64, warmup_epochs=0, progress=False,
                                     threads=1, augment=True))
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reader_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "workers": workers if stream else 0,
            "seconds": time.perf_counter() - t0, "train_samples": len(train),
            "images_mb": (train.x.nbytes + val.x.nbytes) / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dir", type=Path, help="where the stores are written (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workers", type=int, default=2,
                    help="reader processes of the streamed epochs (train.workers)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(epoch(Path(a.child[0]), a.child[1] == "stream", int(a.child[2]))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = a.dir or Path(tmp)
        results = []
        for n in a.sizes:
            store = make_store(root / f"ben{n}.zarr", n)
            for mode in ("stream", "whole"):
                r = subprocess.run([sys.executable, __file__, "--child", str(store), mode,
                                    str(a.workers)],
                                   capture_output=True, text=True, check=True)
                out = json.loads(r.stdout.strip().splitlines()[-1])
                results.append({"samples": n, "mode": mode, **out})
                readers = (f", largest of {out['workers']} reader processes "
                           f"{out['reader_peak_rss_mb']:.0f} MB" if out["workers"] else "")
                print(f"{n:>6} samples, {mode:>6}: peak RSS {out['peak_rss_mb']:.0f} MB{readers} "
                      f"(images {out['images_mb']:.0f} MB), {out['seconds']:.0f} s", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
