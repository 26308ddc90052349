"""Benchmark: a linear probe trained on its frozen encoder's features, computed once, against the
same row on images (issue 36, item 4), side by side in one process.

The default study's linear row: its embedded world (EuroSAT-RGB layout, ``--samples`` scenes of
64 px, 60/20/20 split), its encoder (the 4-block ViT of width 96 at 64 px, random weights here:
the cost is the point, not the accuracy), 8 epochs, batch 32, augmentation on, so its features
are the 8 dihedral views of every sample. Three timings of the same row (``train_row``, the
function the workflow's jobs run; MLflow to a local SQLite store):

- images: the row as before, the encoder run on every sample of every epoch;
- features: the features job (``make_features``: every sample, 8 views of the train split's), once;
- on features: the row trained on them.

It prints each, the ratio of the row's training on images to on features (the goal: at least
5x), and what a study's linear rows pay in all: ``--rows`` rows sharing one features job (the
default study has 4: 2 seeds x 10 % and 100 % of the labels; all counted here as 100 % rows,
while a 10 % row on images costs about a tenth). Times are wall seconds of ``train_row`` (data,
model, MLflow run, training, saving; after an untimed first row that pays the process's lazy
imports) and of the features job.

With ``--series`` it times the embedded time-series study's decoder-only row the same three
ways instead: its PASTIS-like world (``--samples`` patches of 32 px, 38-61 dates), its encoder
(the 4-block ViT of width 96, 4 px patches: 8 x 8 tokens per date, four tapped levels) and
decoder (UPerNet of 64 channels + the shared L-TAE), 15 dates, batch 4, 12 epochs, augmentation
off (a time-series row that augments trains on images: the 8 views of every date's levels cost
more than they save); the features job encodes every date of every patch once, and the study's
12 decoder-only rows (2 fractions x 3 lengths x 2 seeds, all counted here as 100 %, 15-date
rows) share it.

    uv run python bench/features.py [--samples 1000] [--epochs 8] [--rows 4] [--json out.json]
    uv run python bench/features.py --series [--samples 200] [--epochs 12] [--rows 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def measure(samples: int, epochs: int, rows: int, work: Path) -> dict:
    from conftest import job_spec

    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic import WorldSpec, generate_eurosat
    from geopeft.tracking import init_experiment
    from geopeft.train.run import train_row

    world = WorldSpec(seed=0, n_samples=samples, source_samples=10, size=64)
    generate_eurosat(world, work / "ms", work / "rgb")
    store = work / "rgb.zarr"
    prepare("eurosat_rgb", work / "rgb", ["B04", "B03", "B02"], store)
    exp = work / "exp.json"
    init_experiment(f"sqlite:///{work / 'mlflow.db'}", "bench", work / "art", exp)
    backbone = {"name": "vit_tiny_patch16_224", "weights": "none", "sha256": None,
                "input_size": None, "normalize": "auto",
                "kwargs": {"img_size": 64, "patch_size": 8, "depth": 4, "embed_dim": 96,
                           "num_heads": 3}}
    spec = job_spec({"backbone": backbone,
                     "row": {"method": "linear", "name": "linear-f1-s0",
                             "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01,
                                       "augment": True, "device": "cpu",
                                       "checkpoint_every": 0}}})
    # a first row pays the process's lazy imports and MLflow's first run: not timed
    warm = job_spec({"backbone": backbone, "row": {"method": "linear", "name": "warm-up",
                                                   "train": {"epochs": 1, "device": "cpu",
                                                             "checkpoint_every": 0}}})
    train_row(warm, store, None, exp, work / "warm-up")
    return {"samples": samples, "epochs": epochs, "rows": rows,
            **three_ways(spec, store, exp, work)}


def three_ways(spec, store: Path, exp: Path, work: Path) -> dict:  # noqa: ANN001
    """The row on images, the features job, the row on features: wall seconds of each (after
    the caller's untimed warm-up row), and what each trained."""
    from geopeft.train.run import make_features, train_row

    t = time.perf_counter()
    images = train_row(spec, store, None, exp, work / "images")
    t_images = time.perf_counter() - t
    t = time.perf_counter()
    attrs = make_features(spec, store, work / "f.zarr")
    t_features = time.perf_counter() - t
    t = time.perf_counter()
    on = train_row(spec, store, None, exp, work / "on-features", features=work / "f.zarr")
    t_on = time.perf_counter() - t
    return {"views": attrs["views"], "dim": attrs["dim"],
            "train_samples": images["train_samples"],
            "images_s": round(t_images, 2), "features_job_s": round(t_features, 2),
            "on_features_s": round(t_on, 2),
            "images_train_s": round(images["train_time_s"], 2),
            "on_features_train_s": round(on["train_time_s"], 2),
            "val_images": images["history"][-1]["val_score"],
            "val_on_features": on["history"][-1]["val_score"]}


def measure_series(samples: int, epochs: int, rows: int, work: Path) -> dict:
    from conftest import job_spec

    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic_pastis import generate_pastis
    from geopeft.tracking import init_experiment
    from geopeft.train.run import train_row

    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    generate_pastis(work / "PASTIS", n_patches=samples, size=32, seed=0)
    store = work / "pastis.zarr"
    prepare("pastis", work / "PASTIS", bands, store)
    exp = work / "exp.json"
    init_experiment(f"sqlite:///{work / 'mlflow.db'}", "bench", work / "art", exp)

    def spec(name: str, n_epochs: int):
        return job_spec({
            "backbone": {"name": "embedded", "weights": "none",
                         "kwargs": {"img_size": 32, "patch_size": 4}},
            "data": {"dataset": "pastis", "bands": bands},
            "row": {"method": "linear", "name": name, "seed": 0, "dataset": "pastis",
                    "segmentation": {"channels": 64}, "sequence_length": 15,
                    "temporal": {"length": 15, "ladder": [15, 6, 1], "pad": "mask",
                                 "reference": "2018-09-01"},
                    "train": {"epochs": n_epochs, "batch_size": 4, "lr": 0.003,
                              "warmup_epochs": 1, "eval_batch_size": 16, "augment": False,
                              "device": "cpu", "checkpoint_every": 0}}})

    train_row(spec("warm-up", 1), store, None, exp, work / "warm-up")  # lazy imports: untimed
    row = spec("decoder_only-f1-t15-s0", epochs)
    return {"series": True, "samples": samples, "epochs": epochs, "rows": rows,
            **three_ways(row, store, exp, work)}


def report(m: dict) -> str:
    per_row = m["on_features_s"] + m["features_job_s"] / m["rows"]
    what = (f"decoder-only time series (UPerNet + L-TAE), {m['train_samples']} train patches "
            f"x 15 dates x {m['epochs']} epochs (of {m['samples']}), augmentation off"
            if m.get("series") else
            f"linear probe, {m['train_samples']} train samples x {m['epochs']} epochs "
            f"(of {m['samples']}), augmentation on ({m['views']} views)")
    score = "val mIoU" if m.get("series") else "val accuracy"
    lines = [
        f"{what}:",
        f"  on images (the encoder every epoch)   {m['images_s']:8.2f} s "
        f"(training {m['images_train_s']:.2f} s)",
        f"  features job (once, every sample)     {m['features_job_s']:8.2f} s",
        f"  on features                           {m['on_features_s']:8.2f} s "
        f"(training {m['on_features_train_s']:.2f} s)",
        f"  ratio, the row on images / on features: {m['images_s'] / m['on_features_s']:.1f}x "
        f"(goal: 5x)",
        f"  a row's share with {m['rows']} rows per features job: {per_row:.2f} s, "
        f"{m['images_s'] / per_row:.1f}x less than on images",
        f"  the {m['rows']} rows: {m['rows'] * m['images_s']:.1f} s on images, "
        f"{m['features_job_s'] + m['rows'] * m['on_features_s']:.1f} s with features",
        f"  {score}: {m['val_images']:.4f} on images, {m['val_on_features']:.4f} on features"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", action="store_true",
                    help="the embedded time-series study's decoder-only row")
    ap.add_argument("--samples", type=int, help="scenes (default 1000) or patches (200)")
    ap.add_argument("--epochs", type=int, help="default 8, or 12 with --series")
    ap.add_argument("--rows", type=int, help="rows per features job (default 4, or 12)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="geopeft-features-") as tmp:
        if a.series:
            m = measure_series(a.samples or 200, a.epochs or 12, a.rows or 12, Path(tmp))
        else:
            m = measure(a.samples or 1000, a.epochs or 8, a.rows or 4, Path(tmp))
    print(report(m))
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
