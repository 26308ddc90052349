"""SLURM submission and scheduling overhead per job: one sbatch per job vs job arrays.

Runs a trivial Snakemake workflow of N tiny GPU jobs (each asks ``gpu=1`` as geopeft's train jobs
do, sleeps a moment and writes its own start and end time into its output) through the SLURM
executor plugin with the project's profiles, once with every job submitted on its own
(``--slurm-array-jobs none``) and once as job arrays (``--slurm-array-jobs train``), alternating
for ``--repeats``. Per-job overhead = (GPU slots x workflow wall time - the jobs' own run time)
/ jobs: the GPU-slot seconds each job costs beyond its own command (submission, scheduling,
the job step's start of Snakemake, status polling, and the workflow's own start and end spread
over its jobs). ``per_job_gap_s`` leaves out the workflow's start and end (first job start to
last job end only).

Needs the local SLURM (as root: ``scripts/slurm/start.sh``; stop it with
``scripts/slurm/stop.sh``)::

    sudo scripts/slurm/start.sh
    python3 -m uv run --locked python bench/slurm_overhead.py --jobs 50 \\
        --out config/measurements/slurm_overhead.json
    sudo scripts/slurm/stop.sh

The JSON it writes is what ``geopeft plan`` reads (``per_job_s.individual`` / ``.array``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNAKEFILE = """
N = int(config["jobs_n"])
SLEEP = float(config["sleep_s"])


rule all:
    input:
        expand("out/{i}.txt", i=range(N)),


rule train:
    output:
        "out/{i}.txt",
    resources:
        gpu=1,
        cpus_per_gpu=1,
        mem_mb=200,
        runtime=5,
    shell:
        "s=$(date +%s.%N); sleep {SLEEP}; e=$(date +%s.%N); echo $s $e > {output}"
"""


def gpu_slots() -> int:
    """GPUs of the local SLURM's nodes (``sinfo`` Gres ``gpu:N``)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    total = 0
    for line in out.split():
        for part in line.split(","):
            if part.startswith("gpu:"):
                total += int(part.rsplit(":", 1)[-1].split("(")[0])
    if not total:
        raise SystemExit(f"sinfo lists no GPUs ({out.strip()!r}); start scripts/slurm/start.sh")
    return total


def run_once(n: int, sleep: float, arrays: bool, work: Path) -> dict[str, float]:
    """One workflow of ``n`` tiny jobs through SLURM; wall time and the jobs' own times."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "Snakefile").write_text(SNAKEFILE)
    # --config first: Snakemake appends the profiles' arguments after the command line's
    cmd = [sys.executable, "-m", "snakemake", "--config", f"jobs_n={n}", f"sleep_s={sleep}",
           "-s", str(work / "Snakefile"), "-d", str(work),
           "--workflow-profile", str(ROOT / "profiles" / "slurm"),
           "--profile", str(ROOT / "scripts" / "slurm" / "ci-site"),
           "--slurm-array-jobs", "train" if arrays else "none"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.time() - t0
    (work / "snakemake.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"snakemake failed ({r.returncode}), log {work / 'snakemake.log'}:\n"
                         f"{(r.stdout + r.stderr)[-3000:]}")
    spans = [tuple(map(float, (work / "out" / f"{i}.txt").read_text().split())) for i in range(n)]
    log = (r.stdout + r.stderr).splitlines()
    sbatch = sum(1 for ln in log if "has been submitted with SLURM jobid" in ln
                 or "Submitted array job" in ln)
    return {"wall_s": wall, "run_s": sum(e - s for s, e in spans),
            "busy_s": max(e for _, e in spans) - min(s for s, _ in spans),
            "sbatch_calls": float(sbatch)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50, help="tiny jobs per workflow (default 50)")
    p.add_argument("--sleep", type=float, default=1.0, help="each job's own run time, s")
    p.add_argument("--repeats", type=int, default=1, help="workflows per mode, alternating")
    p.add_argument("--out", help="JSON to write (geopeft plan reads per_job_s)")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    slots = gpu_slots()
    base = Path(args.work or tempfile.mkdtemp(prefix="slurm-overhead-"))
    runs: dict[str, list[dict[str, float]]] = {"individual": [], "array": []}
    for rep in range(args.repeats):
        for mode in ("individual", "array"):
            res = run_once(args.jobs, args.sleep, mode == "array", base / f"{mode}-{rep}")
            res["per_job_s"] = (slots * res["wall_s"] - res["run_s"]) / args.jobs
            res["per_job_gap_s"] = (slots * res["busy_s"] - res["run_s"]) / args.jobs
            runs[mode].append(res)
            print(f"{mode:10s} rep {rep}: wall {res['wall_s']:.1f} s, jobs' own {res['run_s']:.1f} "
                  f"s on {slots} GPU slots -> {res['per_job_s']:.2f} s per job "
                  f"({res['per_job_gap_s']:.2f} s between first start and last end)", flush=True)
    med = {m: statistics.median(r["per_job_s"] for r in rs) for m, rs in runs.items()}
    gap = {m: statistics.median(r["per_job_gap_s"] for r in rs) for m, rs in runs.items()}
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    doc = {
        "what": "GPU-slot seconds per job beyond its own command: (slots x wall - run) / jobs",
        "per_job_s": med, "per_job_gap_s": gap, "jobs": args.jobs, "sleep_s": args.sleep,
        "gpu_slots": slots, "repeats": args.repeats, "runs": runs,
        "machine": f"{os.cpu_count()}-core {platform.machine()} VM, {slurm} single node "
                   f"(scripts/slurm/start.sh), no slurmdbd (squeue status)",
        "versions": {k: version(k) for k in ("snakemake", "snakemake-executor-plugin-slurm",
                                             "snakemake-executor-plugin-slurm-jobstep")},
        "profile": "profiles/slurm + scripts/slurm/ci-site",
        "date": datetime.date.today().isoformat(),
        "load_avg_1_5_15": os.getloadavg(),  # other work on the machine inflates the overhead
        "command": "python bench/slurm_overhead.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps({k: doc[k] for k in ("per_job_s", "per_job_gap_s")}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
