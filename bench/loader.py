"""Benchmark: a training epoch fed from the zarr store through geopeft's data path vs the same
tensors already in memory, side by side.

The store is the default study's (the embedded EuroSAT-RGB world at 64 px, prepared by
``geopeft prepare``; ``--samples`` scenes, 60 % of them in the training split). ``store``: what a
training job does, :func:`geopeft.data.dataset.load_split` of the training split from the store,
then one epoch of :func:`geopeft.train.loop.fit`; ``memory``: the same epoch on the split loaded
beforehand. The model is the default study's shrunk ViT (or ``--arch`` at ``--size``), full
fine-tuning, batch ``--batch``, one CPU thread. A third variant, ``stream``, leaves the
images in the store and reads them chunk by chunk in the epoch's chunk order, as a job does
with a split too large for its memory (:mod:`geopeft.data.stream`), its chunks decompressed
ahead by ``--workers`` reader processes (``train.workers``). The variants run
interleaved (each round in another order), ``--repeats`` times, every epoch in a fresh process
(as every job is: no variant inherits another's memory or reader processes); the medians give
images/s and
the ratios store / memory and stream / memory (target >= 0.97): what reading the data costs a
job on top of training. Where the epochs vary more than the load
costs (a shared 2-core machine), the ratio is also given from its parts: the median epoch in
memory over itself plus the median time of loading the split.

    uv run python bench/loader.py [--samples 1000] [--repeats 3] [--batch 64] [--workers 2]
    uv run python bench/loader.py --arch vit_base_patch16_224 --samples 400 --chunk 64
    uv run python bench/loader.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_BACKBONE = {"name": "vit_tiny_patch16_224", "weights": "none",
                    "kwargs": {"img_size": 64, "patch_size": 8, "depth": 4, "embed_dim": 96,
                               "num_heads": 3}}


def make_store(tmp: Path, samples: int, size: int, chunk: int | None = None) -> Path:
    """The default study's store: the embedded EuroSAT-RGB world, prepared (``chunk``: samples
    per store chunk, default the writer's)."""
    from geopeft.data import prepare as prep
    from geopeft.data.synthetic import WorldSpec, generate_eurosat

    generate_eurosat(WorldSpec(seed=0, n_samples=samples, source_samples=0, size=size), None,
                     tmp / "rgb")
    default = prep.CHUNK
    prep.CHUNK = chunk or default
    try:
        prep.prepare("eurosat_rgb", tmp / "rgb", ["B04", "B03", "B02"], tmp / "rgb.zarr")
    finally:
        prep.CHUNK = default
    return tmp / "rgb.zarr"


def epoch(store: Path, backbone: dict, batch: int, loaded: object | None,
          stream: bool = False, workers: int = 0) -> tuple[float, float]:
    """Seconds of loading the training split (0 when ``loaded``) and of one training epoch
    (``stream``: the images left in the store, read chunk by chunk in the epoch's chunk order
    by ``workers`` reader processes)."""
    from geopeft.data.dataset import load_split, store_info
    from geopeft.models.classifier import build_classifier
    from geopeft.spec import TrainArgs
    from geopeft.strategies import apply_strategy
    from geopeft.train.loop import fit

    info = store_info(store)
    args = TrainArgs(epochs=1, batch_size=batch, warmup_epochs=0, progress=False, threads=1)
    t0 = time.perf_counter()
    train = loaded if loaded is not None else load_split(store, "train", stream=stream)
    if stream:  # as load_splits does: the readers start before the model is built
        train.x.workers = workers
        train.x.start_readers()
    t1 = time.perf_counter()
    torch.manual_seed(0)
    model, _ = build_classifier(backbone, info, len(info.classes))
    model = apply_strategy(model, "full")
    t2 = time.perf_counter()
    fit(model, train, None, args)
    t3 = time.perf_counter()
    if stream:
        train.x.close()  # (a job's readers end with it)
    return t1 - t0, t3 - t2


def child(spec: dict) -> dict:
    """One variant's epoch in this (fresh) process: seconds of loading and of training."""
    from geopeft.data.dataset import load_split

    store = Path(spec["store"])
    loaded = load_split(store, "train") if spec["variant"] == "memory" else None
    load, train = epoch(store, spec["backbone"], spec["batch"], loaded,
                        stream=spec["variant"] == "stream", workers=spec["workers"])
    return {"load": load, "train": train}


def run(store: Path, backbone: dict, batch: int, repeats: int, workers: int = 0) -> dict:
    """Every epoch in a fresh process (as a job runs; no variant inherits another's memory or
    processes), the variants interleaved in rotating order."""
    from geopeft.data.dataset import load_split

    n = len(load_split(store, "train"))
    variants = ["store", "stream", "memory"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    loads: list[float] = []
    for i in range(repeats):  # each round in another order: a drift moves all alike
        for v in variants[i % 3 :] + variants[: i % 3]:
            spec = {"store": str(store), "backbone": backbone, "batch": batch, "variant": v,
                    "workers": workers}
            r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                               capture_output=True, text=True, check=True)
            got = json.loads(r.stdout.strip().splitlines()[-1])
            times[v].append(got["load"] + got["train"])
            if v == "store":
                loads.append(got["load"])
    med = {k: statistics.median(v) for k, v in times.items()}
    load_med = statistics.median(loads)
    from geopeft.data.stream import StoreImages

    chunks = len(set(StoreImages(store, loaded_idx(store)).chunk_of().tolist()))
    return {"samples": n, "batch": batch, "backbone": backbone, "repeats": repeats,
            "workers": workers, "chunks": chunks, "load_s": round(load_med, 4), "epoch_s": med,
            "images_per_s": {k: round(n / v, 1) for k, v in med.items()},
            "store_vs_memory": round(med["memory"] / med["store"], 3),
            "stream_vs_memory": round(med["memory"] / med["stream"], 3),
            # the same ratio from its parts: the load's share, free of the epochs' noise
            "store_vs_memory_from_load": round(med["memory"] / (med["memory"] + load_med), 4),
            "epoch_spread": round((max(times["memory"]) - min(times["memory"]))
                                  / med["memory"], 3)}


def loaded_idx(store: Path) -> object:
    """The store positions of the training split."""
    from geopeft.data.dataset import load_split

    return load_split(store, "train", stream=True).x.idx


def report(out: dict) -> str:
    return (f"{out['samples']} training samples in {out['chunks']} store chunks, batch "
            f"{out['batch']}, reader processes {out['workers']}, "
            f"{out['backbone']['name']} {out['backbone'].get('kwargs', {})}: epoch from the store "
            f"{out['epoch_s']['store']:.2f} s ({out['images_per_s']['store']} img/s), in memory "
            f"{out['epoch_s']['memory']:.2f} s ({out['images_per_s']['memory']} img/s), streamed "
            f"chunk by chunk {out['epoch_s']['stream']:.2f} s (ratio "
            f"{out['stream_vs_memory']:.3f}); loaded whole / in memory: ratio "
            f"{out['store_vs_memory']:.3f} (median of {out['repeats']} interleaved rounds; the "
            f"in-memory epochs spread over {out['epoch_spread']:.0%} of their median). Loading "
            f"the split: {out['load_s']:.3f} s (median), so the ratio from its parts is "
            f"{out['store_vs_memory_from_load']:.3f}")


def main(argv: list[str] | None = None) -> int:
    from geopeft.spec import TrainArgs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000, help="scenes in the store (default "
                                                             "study: 1000)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--arch", help="a timm ViT instead of the default study's shrunk one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, help="samples per store chunk (default: the writer's, "
                                              "~16 MB up to 256 samples)")
    ap.add_argument("--workers", type=int, default=TrainArgs.workers,
                    help="reader processes of the streamed epoch (train.workers)")
    ap.add_argument("--smoke", action="store_true", help="200 scenes at 32 px, 1 round")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    if a.smoke:
        a.samples, a.size, a.repeats = 200, 32, 1
    backbone = ({"name": a.arch, "weights": "none", "kwargs": {"img_size": a.size}} if a.arch
                else {**DEFAULT_BACKBONE, "kwargs": {**DEFAULT_BACKBONE["kwargs"],
                                                     "img_size": a.size}})
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), a.samples, a.size, a.chunk)
        out = run(store, backbone, a.batch, a.repeats, a.workers)
    print(report(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
