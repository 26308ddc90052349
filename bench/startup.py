"""Benchmark: a training job's start-up, from process start to its first training step, by stage.

Runs the default study's first training job (``config/config.yaml``: the shrunk ViT, LoRA on
the embedded EuroSAT-RGB world; random backbone weights instead of the pretrain rule's, one
epoch) as ``geopeft train`` in a fresh process, ``--repeats`` times, on a small embedded world
made in a temporary folder, with its own MLflow SQLite store. Each job records in ``run.json``
the seconds since its process started at each stage (``startup_stages``, written by
:func:`geopeft.train.run.train_row`): modules imported, data loaded, model built, MLflow run
open, first step. The median of each stage's share is printed, with the import time of the
heaviest packages, each measured in a fresh interpreter on top of the ones before.

Jobs that Snakemake starts through the job server (``profiles/default``) skip the imports: the
server has them loaded and forks.

    uv run python bench/startup.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("imports", "data", "model", "mlflow_run", "first_step")
PACKAGES = ("numpy", "torch", "timm", "peft", "zarr", "xarray", "mlflow", "geopeft.train.run")


def import_times() -> dict[str, float]:
    """Seconds each package adds to a fresh interpreter's imports, in the order of PACKAGES."""
    code = ("import importlib, json, time\nout = {}\n"
            f"for name in {list(PACKAGES)!r}:\n"
            "    t = time.perf_counter(); importlib.import_module(name)\n"
            "    out[name] = round(time.perf_counter() - t, 3)\n"
            "print(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def setup(tmp: Path) -> tuple[dict, Path, Path]:
    """The job spec, the store and the experiment file of a default-study job in ``tmp``."""
    from geopeft import config as gcfg
    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic import WorldSpec, generate_eurosat
    from geopeft.tracking import init_experiment

    cfg = gcfg.resolve([])
    row = gcfg.study_rows(cfg)[0]
    spec = gcfg.job_spec(cfg, row)
    spec["backbone"]["weights"] = "none"  # no pretrain job: random weights, same model
    spec["row"]["train"]["epochs"] = 1
    world = WorldSpec(seed=0, n_samples=200, source_samples=0, size=cfg["data"]["synthetic"]["size"])
    generate_eurosat(world, None, tmp / "rgb")
    store = tmp / "rgb.zarr"
    prepare("eurosat_rgb", tmp / "rgb", cfg["data"]["bands"], store)
    experiment = tmp / "mlflow_experiment.json"
    init_experiment(f"sqlite:///{tmp / 'mlflow.db'}", "startup", tmp / "artifacts", experiment)
    return spec, store, experiment


def run_job(spec: dict, store: Path, experiment: Path, out: Path) -> dict[str, float]:
    """One ``geopeft train`` in a fresh process (no job server); its start-up stages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPEFT_")}
    exe = Path(sys.executable).parent / "geopeft"
    subprocess.run([str(exe), "train", "--spec", json.dumps(spec), "--store", str(store),
                    "--experiment", str(experiment), "--out", str(out), "--gpus", "0"],
                   env=env, check=True, capture_output=True, text=True)
    return json.loads((out / "run.json").read_text())["startup_stages"]


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds each stage adds (from the previous stage's end), and the total."""
    out = {}
    for i, stage in enumerate(STAGES):
        prev = STAGES[i - 1] if i else None
        out[stage] = round(statistics.median(
            r[stage] - (r[prev] if prev else 0.0) for r in runs), 2)
    out["total"] = round(statistics.median(r["first_step"] for r in runs), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec, store, experiment = setup(Path(tmp))
        runs = [run_job(spec, store, experiment, Path(tmp) / f"model{i}")
                for i in range(a.repeats)]
    stages = summarize(runs)
    imports = import_times()
    print(f"start-up of a default-study training job, median of {a.repeats} fresh processes "
          "(seconds since the process started):")
    print("| stage | s |\n|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} |")
    print("\nimports, each on top of the ones before (one fresh interpreter):")
    print(" ".join(f"{k} {v:.2f} s;" for k, v in imports.items()))
    if a.json:
        a.json.write_text(json.dumps({"stages": stages, "runs": runs, "imports": imports},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
