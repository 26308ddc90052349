"""Benchmark: the README's first command (the default study, end to end) on a fresh copy.

Copies this working tree (tracked and untracked, not ignored: what a fresh clone has, plus local
changes) into a scratch folder, runs ``snakemake --cores all`` there with this environment's
``snakemake`` and ``geopeft`` (the set-up ``uv`` does is not timed), and reports:

- the wall time of the whole command;
- how many pretrain/train/evaluate jobs ran at once (from Snakemake's log);
- the time per rule, and the share of the training jobs' time spent before their first step
  (``startup_s`` of each run's ``run.json``: process start to first step);
- the machine, the date and the job-server setting.

With ``--compare`` it runs the study a second time in a second copy with ``--config
jobserver=false`` (every job a fresh process) and prints the ratio of the two wall times.

    uv run python bench/default_study.py [--compare] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = "eurosat_lora_synthetic"
HEAVY = ("pretrain", "train", "evaluate")


def copy_tree(dest: Path) -> None:
    """The files a clone would have, with this tree's local changes."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def job_spans(log: Path) -> list[tuple[str, float, float]]:
    """(rule, start, end) in seconds of every job in a Snakemake log (1 s resolution)."""
    stamp = None
    started: dict[str, tuple[str, float]] = {}
    spans = []
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line)
        if m:
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m and stamp is not None:
            for nxt in lines[i + 1: i + 15]:
                j = re.search(r"jobid: (\d+)", nxt)
                if j:
                    started[j.group(1)] = (m.group(1), stamp)
                    break
        m = re.match(r"Finished jobid: (\d+)", line)
        if m and m.group(1) in started and stamp is not None:
            rule, t0 = started.pop(m.group(1))
            spans.append((rule, t0, stamp))
    return spans


def max_concurrent(spans: list[tuple[str, float, float]], rules: tuple[str, ...]) -> int:
    """The most jobs of ``rules`` running at one time (a job ending frees its slot first)."""
    mine = [(s, e) for r, s, e in spans if r in rules]
    events = sorted([(s, 1) for s, _ in mine] + [(e, -1) for _, e in mine])
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def run_once(work: Path, extra: list[str]) -> dict:
    copy_tree(work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env["PYTHONPATH"] = str(work / "src")  # the copy's code, as an installed clone would run
    t0 = time.perf_counter()
    proc = subprocess.run(["snakemake", "--cores", "all", *extra], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake failed in {work}:\n{proc.stderr[-3000:]}")
    log = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))[-1]
    spans = job_spans(log)
    per_rule: dict[str, list[float]] = {}
    for rule, s, e in spans:
        per_rule.setdefault(rule, []).append(e - s)
    runs = [json.loads(p.read_text()) for p in (work / "results" / STUDY / "runs").glob("*/model/run.json")]
    startup = sum(r.get("startup_s") or 0.0 for r in runs)
    train_jobs = sum(per_rule.get("train", []))
    provided = re.search(r"Provided resources: (.*)", proc.stdout + proc.stderr)
    return {
        "wall_s": wall, "per_rule": per_rule, "runs": len(runs),
        "concurrent": max_concurrent(spans, HEAVY),
        "startup_s": startup, "train_job_s": train_jobs,
        "provided": provided.group(1) if provided else "none",
    }


def report(name: str, r: dict) -> None:
    print(f"\n[{name}] wall time {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min); "
          f"{r['runs']} runs; at most {r['concurrent']} pretrain/train/evaluate jobs at once; "
          f"Snakemake provided resources: {r['provided']}")
    print(f"{'rule':12s} {'jobs':>5s} {'sum s':>7s} {'mean s':>7s}")
    for rule, v in sorted(r["per_rule"].items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:12s} {len(v):5d} {sum(v):7.0f} {sum(v) / len(v):7.1f}")
    if r["train_job_s"]:
        print(f"train jobs: {r['startup_s']:.0f} s of {r['train_job_s']:.0f} s before their first step "
              f"({100 * r['startup_s'] / r['train_job_s']:.0f} %)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", action="store_true", help="also run with jobserver=false")
    p.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    args = p.parse_args()
    print(f"{dt.date.today()} {platform.node()}: {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="geopeft-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        results = {"job server (default)": run_once(base / "default", [])}
        if args.compare:
            results["no job server"] = run_once(base / "nojobserver", ["--config", "jobserver=false"])
        for name, r in results.items():
            report(name, r)
        if args.compare:
            a, b = results["job server (default)"], results["no job server"]
            print(f"\nwall time, job server / fresh processes: {a['wall_s'] / b['wall_s']:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
