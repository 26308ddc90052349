"""The cluster side of a plan: the Snakemake profile's settings, the SLURM overhead measured by
``bench/slurm_overhead.py``, and the profile settings that would lose array jobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geopeft.io import read_json
from geopeft.plan.errors import PlanError
from geopeft.plan.jobs import GPU_RULES

#: The overhead share of GPU time the study aims at (issue 18: < 2 %).
OVERHEAD_GOAL = 0.02
#: The SLURM overhead measurement ``bench/slurm_overhead.py`` wrote, read by default.
DEFAULT_OVERHEAD = Path("config/measurements/slurm_overhead.json")
#: The cluster profile read by default (relative to the working directory).
DEFAULT_PROFILE = Path("profiles/slurm")


@dataclass(frozen=True)
class Profile:
    """What the plan needs of a Snakemake cluster profile."""

    path: Path | None
    retries: int = 0
    jobs: int | None = None
    array_rules: tuple[str, ...] = ()
    array_limit: int = 1000
    max_jobs_per_timespan: str = "100/1s"
    default_runtime: float | None = None


def read_profile(path: str | Path | None) -> Profile:
    """A Snakemake profile's ``retries``, ``jobs``, ``slurm-array-jobs``, ``slurm-array-limit``,
    ``max-jobs-per-timespan`` and default runtime.

    Args:
        path: the profile folder (its ``config.yaml``) or file; None: no profile.

    Raises:
        PlanError: the profile folder has no ``config.yaml``, or it is not a mapping.
    """
    if path is None:
        return Profile(None)
    path = Path(path)
    f = path / "config.yaml" if path.is_dir() or not path.suffix else path
    if not f.is_file():
        raise PlanError(f"{f}: profile not found")
    doc = yaml.safe_load(f.read_text()) or {}
    if not isinstance(doc, dict):
        raise PlanError(f"{f}: a profile must be a mapping")
    arrays = str(doc.get("slurm-array-jobs") or "").replace(";", ",")
    return Profile(f, retries=int(doc.get("retries", 0)), jobs=doc.get("jobs"),
                   array_rules=tuple(r.strip() for r in arrays.split(",") if r.strip()),
                   array_limit=int(doc.get("slurm-array-limit", 1000)),
                   max_jobs_per_timespan=str(doc.get("max-jobs-per-timespan", "100/1s")),
                   default_runtime=(doc.get("default-resources") or {}).get("runtime"))


def read_overhead(path: str | Path) -> dict[str, Any]:
    """The SLURM overhead ``bench/slurm_overhead.py`` measured (``per_job_s``: seconds of a
    GPU slot per job beyond the job's own command, ``individual`` and ``array``).

    Args:
        path: the JSON file ``bench/slurm_overhead.py --out`` wrote.

    Raises:
        PlanError: the file is missing or lacks ``per_job_s.individual`` / ``per_job_s.array``.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: SLURM overhead measurement not found (bench/slurm_overhead.py "
                        f"writes it)")
    doc = read_json(path)
    per = doc.get("per_job_s") if isinstance(doc, dict) else None
    if not isinstance(per, dict) or not {"individual", "array"} <= set(per):
        raise PlanError(f"{path}: per_job_s.individual and per_job_s.array are required")
    return dict(doc, path=str(path))


def _per_timespan(spec: str) -> float:
    """The jobs Snakemake may start per timespan (``max-jobs-per-timespan``, e.g. ``100/1s``):
    the most one job selection takes."""
    return float(spec.partition("/")[0])


def check_profile(prof: Profile, jobs: dict[str, int]) -> list[str]:
    """Array submission in snakemake-executor-plugin-slurm 2.8 needs every ready job of an array
    rule selected at once: a batch smaller than the rule's ready jobs is dropped and never runs
    (plugin issue #473), which ``jobs`` or ``max-jobs-per-timespan`` below the rule's jobs
    cause.

    Args:
        prof: the cluster profile (:func:`read_profile`).
        jobs: jobs per rule (:func:`geopeft.plan.jobs.rule_jobs`).

    Returns:
        A note for the plan per setting that drops array batches (none: the profile is safe).
    """
    notes: list[str] = []
    arrays = [r for r in ("train", "evaluate") if r in prof.array_rules or "all" in prof.array_rules]
    if not arrays:
        return notes
    widest = max(jobs.get(r, 0) for r in arrays)
    queued = sum(jobs.get(r, 0) for r in GPU_RULES)
    if prof.jobs is not None and int(prof.jobs) < queued:
        notes.append(f"{prof.path}: jobs {prof.jobs} < {queued} (the GPU jobs that may be "
                     f"queued at once) with slurm-array-jobs: the SLURM plugin 2.8 drops "
                     f"array batches it was not given whole (issue #473); raise jobs")
    if _per_timespan(prof.max_jobs_per_timespan) < widest:
        notes.append(f"{prof.path}: max-jobs-per-timespan {prof.max_jobs_per_timespan} "
                     f"selects fewer than the {widest} jobs of one array rule at once: the "
                     f"SLURM plugin 2.8 drops the rest (issue #473); raise it")
    return notes
