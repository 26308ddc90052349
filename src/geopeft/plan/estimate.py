"""The plan of a study: its jobs, data and work, and the time of every run where its (model,
method) was measured (:func:`make_plan`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopeft.config import is_series, resolve, study_rows
from geopeft.data.sources import BUILTIN
from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.plan.cluster import (
    DEFAULT_OVERHEAD,
    DEFAULT_PROFILE,
    Profile,
    check_profile,
    read_overhead,
    read_profile,
)
from geopeft.plan.curve import Curve, curves
from geopeft.plan.errors import PlanError
from geopeft.plan.jobs import (
    GPU_RULES,
    LOCAL_RULES,
    features_lines,
    job_resources,
    rule_jobs,
    train_samples,
)
from geopeft.plan.steptimes import load_measurements, row_model

# --------------------------------------------------------------------------- the plan


@dataclass
class RunCost:
    """The estimated cost of one study row."""

    name: str
    strategy: str
    model: str
    method: str
    dates: int | None
    train_samples: int
    epochs: int
    train_job_s: float
    eval_job_s: float
    attempts: int = 1
    """Attempts the train job needs within the runtime limit (0: it cannot finish)."""


@dataclass
class Plan:
    """Everything ``geopeft plan`` prints (:func:`format_plan`)."""

    study: str
    where: str
    jobs: dict[str, int]
    rows: int
    gpus_per_job: int
    sizes: dict[str, dict[str, int] | None]
    size_sources: dict[str, str]
    sample_dates: float
    """Training samples x epochs (x dates) of the whole study: its work, without any timing."""
    kind: str | None = None
    gpus: int = 1
    measured: dict[tuple[str, str], Curve] = field(default_factory=dict)
    unmeasured: list[tuple[str, str]] = field(default_factory=list)
    runs: list[RunCost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    """What each GPU job asks for and how it holds its data (:func:`job_resources`)."""
    features: list[str] = field(default_factory=list)
    """The features jobs and the disk their stores take (:func:`features_lines`)."""
    runtime_min: float = 0.0
    profile: Profile = field(default_factory=lambda: Profile(None))
    overhead: dict[str, Any] | None = None

    @property
    def gpu_hours(self) -> float | None:
        """GPU-hours of the train and evaluate jobs (None: not every row was measured)."""
        if not self.runs or self.unmeasured:
            return None
        return sum(r.train_job_s + r.eval_job_s for r in self.runs) * self.gpus_per_job / 3600

    def slurm_jobs(self) -> int:
        """Jobs that go through SLURM (every rule but the local ones)."""
        return sum(n for r, n in self.jobs.items() if r not in LOCAL_RULES)

    def gpu_jobs(self) -> int:
        """Jobs of the GPU rules (pretrain, features, train, evaluate)."""
        return sum(self.jobs.get(r, 0) for r in GPU_RULES)

    def overhead_hours(self, mode: str) -> float | None:
        """GPU-slot hours the SLURM overhead costs the GPU jobs, ``mode`` ``individual`` or
        ``array`` (the profile's mode is array for its ``slurm-array-jobs`` rules)."""
        if self.overhead is None:
            return None
        per = self.overhead["per_job_s"]
        total = 0.0
        for rule in GPU_RULES:
            arr = mode == "array" and (rule in self.profile.array_rules
                                       or "all" in self.profile.array_rules)
            total += self.jobs.get(rule, 0) * float(per["array" if arr else "individual"])
        return total * self.gpus_per_job / 3600

    def wall_hours(self, with_overhead: str | None = None) -> float | None:
        """The wall time on :attr:`gpus` GPUs: each run's train then evaluate job as one
        chain, longest first onto the GPU free first (None: not every row was measured)."""
        if self.gpu_hours is None:
            return None
        slots = max(self.gpus // max(self.gpus_per_job, 1), 1)
        extra = 0.0
        if with_overhead and self.overhead is not None:
            per = self.overhead["per_job_s"]
            for rule in ("train", "evaluate"):
                arr = with_overhead == "array" and (rule in self.profile.array_rules
                                                    or "all" in self.profile.array_rules)
                extra += float(per["array" if arr else "individual"])
        loads = [0.0] * slots
        for c in sorted((r.train_job_s + r.eval_job_s + extra for r in self.runs), reverse=True):
            i = loads.index(min(loads))
            loads[i] += c
        return max(loads) / 3600


def _attempts(job_s: float, runtime_min: float, retries: int) -> int:
    """Attempts a job of ``job_s`` needs when attempt k may run k x ``runtime_min`` and each
    resumes from the last checkpoint (0: more than ``retries`` + 1 attempts)."""
    if runtime_min <= 0:
        return 1
    done, k = 0.0, 0
    while done < job_s:
        k += 1
        if k > retries + 1:
            return 0
        done += runtime_min * 60 * k
    return max(k, 1)


def make_plan(configfiles: Sequence[str] = (), overrides: dict[str, Any] | None = None,
              measured: Sequence[str | Path] = (), measured_kind: str | None = None,
              gpu_kind: str | None = None, gpus: int = 1,
              profile: str | Path | None = DEFAULT_PROFILE,
              overhead: str | Path | None = None) -> Plan:
    """The plan of a study.

    Args:
        configfiles: the study files (as ``snakemake --configfile``; empty: the default study).
        overrides: ``--config`` overrides.
        measured: run records, folders of them, step-time files (:func:`load_measurements`).
        measured_kind: the device kind of GPU ``run.json`` files among ``measured``.
        gpu_kind: the kind to plan for (default: the one kind measured).
        gpus: GPUs of that kind the study runs on.
        profile: the Snakemake cluster profile (retries, arrays; None: none).
        overhead: the SLURM overhead measurement (None: :data:`DEFAULT_OVERHEAD` when present).

    Raises:
        PlanError: an input is missing or malformed, or nothing was measured on ``gpu_kind``.
        ConfigError: the study is invalid.
    """
    if gpus < 1:
        raise PlanError(f"--gpus: at least 1, got {gpus}")
    cfg = resolve(list(configfiles), overrides)
    where = ", ".join(map(str, configfiles)) or "config/config.yaml"
    rows = study_rows(cfg)
    jobs = rule_jobs(cfg)
    from geopeft.gpus import per_job

    gpus_per_job = max(per_job(cfg["resources"]["gpus"], local=False), 1)
    data = cfg["data"]
    sizes: dict[str, dict[str, int] | None] = {}
    size_sources: dict[str, str] = {}
    for ds in sorted({r["dataset"] for r in rows}):
        if data["source"] == "synthetic":
            sizes[ds] = None
            size_sources[ds] = ("the embedded world's (data.synthetic); its prepared store "
                                "holds the counts, no published sizes apply")
        else:
            sizes[ds] = SOURCES[ds].split_sizes(data["options"])
            origin = (", declared in geopeft.data.sources" if ds in BUILTIN
                      else ", counted in the study's table")
            size_sources[ds] = (f"{SOURCES[ds].published_splits_source}{origin}" if sizes[ds]
                                else "no split sizes declared by its source")
    prof = read_profile(profile) if profile is not None and (
        Path(profile).exists() or Path(profile) != DEFAULT_PROFILE) else Profile(None)
    if overhead is None and DEFAULT_OVERHEAD.is_file():
        overhead = DEFAULT_OVERHEAD
    plan = Plan(study=cfg["study"], where=where, jobs=jobs, rows=len(rows),
                gpus_per_job=gpus_per_job, sizes=sizes, size_sources=size_sources,
                sample_dates=0.0, gpus=gpus, runtime_min=float(cfg["resources"]["runtime"]),
                profile=prof, overhead=read_overhead(overhead) if overhead else None)
    steps = load_measurements(list(measured), measured_kind) if measured else []
    kinds = sorted({s.kind for s in steps})
    if gpu_kind is None and len(kinds) == 1:
        gpu_kind = kinds[0]
    if gpu_kind is not None and steps and gpu_kind not in kinds:
        raise PlanError(f"--gpu-kind {gpu_kind}: no step time measured on {gpu_kind} (measured: "
                        f"{', '.join(kinds)}; from {', '.join(map(str, measured))})")
    if gpu_kind is None and len(kinds) > 1:
        raise PlanError(f"--gpu-kind: the measurements hold several kinds ({', '.join(kinds)}); "
                        f"say which one to plan for")
    plan.resources = job_resources(cfg)
    plan.features = features_lines(cfg)
    plan.kind = gpu_kind
    plan.measured = curves(steps, gpu_kind) if gpu_kind else {}
    _estimate(plan, cfg, rows)
    plan.notes += check_profile(plan.profile, plan.jobs)
    return plan



def _estimate(plan: Plan, cfg: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The work of every row, and its time where its (model, method) was measured."""
    missing: set[tuple[str, str]] = set()
    used_no_val = used_no_startup = False
    batches: set[str] = set()
    for r in rows:
        sizes = plan.sizes.get(r["dataset"])
        n = train_samples(sizes, r["label_fraction"])
        dates = r.get("sequence_length") if is_series(r["dataset"]) else None
        epochs = int(r["train"]["epochs"])
        if n is not None:
            plan.sample_dates += n * epochs * (dates or 1)
        key = (row_model(cfg, r), r["method"])
        curve = plan.measured.get(key)
        if curve is None:
            missing.add(key)
            continue
        if n is None or sizes is None:
            continue
        train_s, val_s = curve.at(dates)
        if val_s is None:
            used_no_val = True
        if curve.startup_s is None:
            used_no_startup = True
        if curve.batch_sizes and r["train"]["batch_size"] not in curve.batch_sizes:
            batches.add(f"{key[0]} {key[1]}: measured at batch "
                        f"{'/'.join(map(str, curve.batch_sizes))}, the study uses "
                        f"{r['train']['batch_size']}")
        up = curve.startup_s or 0.0
        fit = epochs * (n * train_s + sizes["val"] * (val_s or 0.0))
        evaluate = up + sizes["test"] * (val_s or 0.0)
        cost = RunCost(r["name"], r["strategy"], key[0], key[1], dates, n, epochs, up + fit,
                       evaluate)
        cost.attempts = _attempts(cost.train_job_s, plan.runtime_min, plan.profile.retries)
        plan.runs.append(cost)
    plan.unmeasured = sorted(missing)
    if any(v is None for v in plan.sizes.values()):
        plan.notes.append("split sizes unknown for " + ", ".join(
            f"{d} ({plan.size_sources[d]})" for d, v in plan.sizes.items() if v is None)
            + ": no hours for their rows")
    if used_no_val:
        plan.notes.append("validation not measured for some (model, method): their per-epoch "
                          "validation and the evaluate job's prediction are left out")
    if used_no_startup:
        plan.notes.append("start-up not measured for some (model, method): left out")
    plan.notes += sorted(batches)

