"""Benchmark: `snakemake -n` on a generated 1,000-run study (target: under 10 s).

Writes a study with 5 strategies x 4 label fractions x 50 seeds = 1,000 training runs (plus
their evaluations, subsets, aggregation) over the embedded world, and times a dry run of the
whole DAG in a fresh work folder, as a user planning a cluster study would run it first. Also
times the 12-run default study the same way, side by side, and reports both.

    uv run python bench/dryrun_study.py [--seeds 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def study(seeds: int) -> dict:
    with open(ROOT / "config" / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["study"] = "bench_1000"
    cfg["strategies"].update({"e2e": {"strategy": "e2e", "encoder_lr_factor": 0.1},
                              "scratch": {"strategy": "scratch"}})
    cfg["grid"] = {"strategy": ["full", "lora", "linear", "e2e", "scratch"],
                   "label_fraction": [0.01, 0.1, 0.5, 1.0], "seed": list(range(seeds))}
    return cfg


def dry_run(config: Path, work: Path) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                        str(work), "--configfile", str(config), "-n", "--quiet", "all"],
                       capture_output=True, text=True, env=env, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return dt, r.stdout


def slurm_probe() -> float | None:
    """Seconds `scontrol show config` takes: the SLURM executor plugin runs it whenever snakemake
    starts, so a slurm.conf whose controller is down adds its connect timeout to every run."""
    if shutil.which("scontrol") is None:
        return None
    t0 = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.yaml"
        big.write_text(yaml.safe_dump(study(a.seeds)))
        times: dict[str, list[float]] = {"default (12 runs)": [], f"{5 * 4 * a.seeds} runs": []}
        for i in range(a.repeats):
            for name, cfg in (("default (12 runs)", ROOT / "config" / "config.yaml"),
                              (f"{5 * 4 * a.seeds} runs", big)):
                dt, out = dry_run(cfg, Path(tmp) / f"w{i}-{len(name)}")
                times[name].append(dt)
        for name, ts in times.items():
            print(f"{name:>18}: median {statistics.median(ts):6.2f} s  (runs: "
                  + ", ".join(f"{t:.2f}" for t in ts) + ")")
        big_t = statistics.median(times[f"{5 * 4 * a.seeds} runs"])
        print(f"1,000-run dry run: {big_t:.2f} s, target < 10 s: {'met' if big_t < 10 else 'NOT met'}; "
              f"ratio to the 12-run study: {big_t / statistics.median(times['default (12 runs)']):.2f}")
    probe = slurm_probe()
    if probe is not None and probe > 1:
        print(f"note: `scontrol show config` takes {probe:.1f} s here (SLURM client configured, controller "
              "unreachable); the SLURM executor plugin runs it at every snakemake start, so each time "
              "above includes it. scripts/slurm/stop.sh removes the configuration start.sh wrote.")


if __name__ == "__main__":
    main()
