"""Scale, planned before launch: what a study will cost, before it is submitted (``geopeft plan``).

For a study (resolved as Snakemake resolves it, :func:`geopeft.config.resolve`) the plan gives:

- **jobs per rule**, counted from the same study rows (:func:`geopeft.config.study_rows`) and
  the same file names the rules use; ``tests/test_plan.py`` holds the counts equal to
  ``snakemake -n``'s job stats;
- **GPU-hours** of the train and evaluate jobs from a **measured** step time (:class:`StepTime`:
  seconds per training and per validation sample, measured by a finished run or a rehearsal,
  ``geopeft steptimes`` reads them out of ``run.json`` files) x the real split sizes (the
  dataset sources' declared facts, :meth:`geopeft.data.sources.Source.split_sizes`) x label
  fraction x epochs x dates; without a measurement for the GPU kind asked, the plan says so
  and gives no hours;
- the **wall time** on N GPUs of that kind (each run's train then evaluate job, longest first on
  the least-loaded GPU), and the jobs whose estimate exceeds the study's runtime per GPU job
  (``resources.runtime`` minutes x attempt, ``retries`` of the profile): they resume from their
  checkpoint in a later attempt, or cannot finish;
- the **SLURM overhead**: submissions one by one vs as job arrays (the profile's
  ``slurm-array-jobs``), and the projected share of GPU time from the per-job overhead measured
  by ``bench/slurm_overhead.py`` on a real SLURM.

Every figure says where it came from (file, key, measurement); nothing is assumed silently.

The package, by job: :mod:`~geopeft.plan.jobs` (jobs per rule, each GPU job's resources),
:mod:`~geopeft.plan.steptimes` (measured step times, read and written), :mod:`~geopeft.plan.curve`
(per-sample times by dates), :mod:`~geopeft.plan.cluster` (the profile, the SLURM overhead),
:mod:`~geopeft.plan.estimate` (the plan) and :mod:`~geopeft.plan.report` (its text). Every public
name is importable from ``geopeft.plan``.
"""

from __future__ import annotations

from geopeft.plan.cluster import (
    DEFAULT_OVERHEAD,
    DEFAULT_PROFILE,
    OVERHEAD_GOAL,
    Profile,
    check_profile,
    read_overhead,
    read_profile,
)
from geopeft.plan.curve import Curve, curves
from geopeft.plan.errors import PlanError
from geopeft.plan.estimate import Plan, RunCost, make_plan
from geopeft.plan.jobs import GPU_RULES, LOCAL_RULES, RULE_ORDER, job_resources, rule_jobs, train_samples
from geopeft.plan.report import format_plan
from geopeft.plan.steptimes import (
    StepTime,
    load_measurements,
    read_steptimes,
    row_model,
    steptime_from_run,
    write_steptimes,
)

__all__ = [
    "DEFAULT_OVERHEAD",
    "DEFAULT_PROFILE",
    "GPU_RULES",
    "LOCAL_RULES",
    "OVERHEAD_GOAL",
    "RULE_ORDER",
    "Curve",
    "Plan",
    "PlanError",
    "Profile",
    "RunCost",
    "StepTime",
    "check_profile",
    "curves",
    "format_plan",
    "job_resources",
    "load_measurements",
    "make_plan",
    "read_overhead",
    "read_profile",
    "read_steptimes",
    "row_model",
    "rule_jobs",
    "steptime_from_run",
    "train_samples",
    "write_steptimes",
]
