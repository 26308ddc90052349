"""``geopeft plan``'s text: each number of a :class:`~geopeft.plan.estimate.Plan` with where it
came from (:func:`format_plan`)."""

from __future__ import annotations

import math

from geopeft.layout import RUN_RECORD
from geopeft.plan.cluster import DEFAULT_OVERHEAD, OVERHEAD_GOAL
from geopeft.plan.estimate import Plan, RunCost
from geopeft.plan.jobs import GPU_RULES, LOCAL_RULES

# --------------------------------------------------------------------------- output


def _h(seconds: float) -> str:
    """Seconds as hours (h) or minutes (min) for people."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _submissions(plan: Plan) -> list[str]:
    """SLURM submissions one by one and with the profile's arrays."""
    prof = plan.profile
    single = plan.slurm_jobs()
    lines = [f"SLURM submissions: {single} one by one (every job but the local rules)"]
    arrays = [r for r in plan.jobs if r not in LOCAL_RULES
              and (r in prof.array_rules or "all" in prof.array_rules)]
    if arrays:
        waves = plan.jobs.get("subset", 0) + 1
        lines.append(f"  with slurm-array-jobs {','.join(prof.array_rules)} ({prof.path}): train "
                     f"as one array per wave of ready jobs (about {waves}: the full-label rows, "
                     f"then each label subset's), at most {prof.array_limit} tasks each; evaluate "
                     f"jobs as their train jobs finish (those ready together share an array)")
    return lines


def format_plan(plan: Plan) -> str:
    """The plan as text: jobs per rule, data, step times, hours, wall time, runtime flags,
    SLURM overhead; each number with where it came from.

    Args:
        plan: the plan (:func:`make_plan`).
    """
    out = [f"Plan of study {plan.study} ({plan.where}): {plan.rows} runs"]
    out.append("")
    out.append("Jobs per rule (as Snakemake expands the study; local = runs where Snakemake runs):")
    width = max(len(r) for r in plan.jobs)
    for rule, n in plan.jobs.items():
        tag = "local" if rule in LOCAL_RULES else (
            f"GPU x{plan.gpus_per_job}" if rule in GPU_RULES else "CPU")
        out.append(f"  {rule.ljust(width)}  {n:5d}  {tag}")
    out.append(f"  {'total'.ljust(width)}  {sum(plan.jobs.values()):5d}")
    out += _submissions(plan)
    out.append("")
    for ds, s in plan.sizes.items():
        if s:
            out.append(f"Data {ds}: train {s['train']:,} / val {s['val']:,} / test {s['test']:,} "
                       f"samples: {plan.size_sources[ds]}")
        else:
            out.append(f"Data {ds}: split sizes unknown ({plan.size_sources[ds]})")
    if plan.sample_dates:
        out.append(f"Work: {plan.sample_dates:,.0f} training sample-dates (train subset x "
                   f"epochs x dates, summed over the runs; subsets as label fraction x train "
                   f"split, a few more at 1 % as every class keeps a sample)")
    out += plan.features
    out.append("")
    out += _format_costs(plan)
    out.append("")
    out += _format_overhead(plan)
    if plan.notes:
        out.append("")
        out.append("Notes:")
        out += [f"  - {n}" for n in plan.notes]
    return "\n".join(out)


def _unit(plan: Plan) -> str:
    return "CPU" if plan.kind == "cpu" else "GPU"


def _format_costs(plan: Plan) -> list[str]:
    out: list[str] = []
    if plan.kind is None:
        return ["Step time: none measured, so no GPU-hours or wall time. Pass --measured with a "
                f"finished run's {RUN_RECORD}, a folder of runs or a step-time file (geopeft "
                "steptimes), and --gpu-kind."]
    unit = _unit(plan)
    out.append(f"Step times measured on {plan.kind} (seconds per sample at the measured dates; "
               f"other lengths linear in the dates, in proportion from one length):")
    notes: list[str] = []
    for (model, method), c in sorted(plan.measured.items()):
        pts = ", ".join(f"{'' if t is None else f'T={t}: '}train {a:.4g}"
                        + ("" if v is None else f", val {v:.4g}") for t, a, v in c.points)
        up = "" if c.startup_s is None else f", start-up {c.startup_s:.1f} s"
        out.append(f"  {model} {method}: {pts}{up}")
        out += [f"      from {o}" for o in c.origins[:2]]
        if len(c.origins) > 2:
            out.append(f"      and {len(c.origins) - 2} more")
        notes += [n for n in c.notes if n not in notes]
    out += [f"  measured: {n}" for n in notes]
    if plan.unmeasured:
        out.append(f"Not measured on {plan.kind}: "
                   + ", ".join(f"{m} {k}" for m, k in plan.unmeasured)
                   + f"; no {unit}-hours or wall time for the study until they are")
    if not plan.runs:
        return out
    out.append("")
    out.append(f"Estimated on {plan.kind} (train job = start-up + epochs x (train subset x train "
               f"s + val split x val s); evaluate job = start-up + test split x val s):")
    by: dict[str, list[RunCost]] = {}
    for r in plan.runs:
        by.setdefault(r.strategy, []).append(r)
    for strat, rs in by.items():
        longest = max(rs, key=lambda r: r.train_job_s)
        hours = sum(r.train_job_s + r.eval_job_s for r in rs) * plan.gpus_per_job / 3600
        out.append(f"  {strat}: {len(rs)} runs, {hours:,.2f} {unit}-h; longest train job "
                   f"{_h(longest.train_job_s)} ({longest.name}), evaluate up to "
                   f"{_h(max(r.eval_job_s for r in rs))}")
    gh = plan.gpu_hours
    if gh is not None:
        train_h = sum(r.train_job_s for r in plan.runs) * plan.gpus_per_job / 3600
        out.append(f"{unit}-hours: {gh:,.2f} ({train_h:,.2f} train, {gh - train_h:,.2f} evaluate; "
                   f"{plan.gpus_per_job} {unit} per job)")
        out.append(f"Wall time on {plan.gpus} x {plan.kind}: {plan.wall_hours():,.2f} h (train "
                   f"and evaluate jobs: each run's train then evaluate job, longest first; lower "
                   f"bound {gh / plan.gpus:,.2f} h)")
    out.append("")
    out += _format_limits(plan)
    return out


def _format_limits(plan: Plan) -> list[str]:
    retries = plan.profile.retries
    src = f"retries {retries} in {plan.profile.path}" if plan.profile.path else "no profile"
    out = [f"Runtime limit: {plan.runtime_min:g} min per GPU job x attempt (resources.runtime of "
           f"the study; {src})"]
    over = [r for r in plan.runs if r.train_job_s > plan.runtime_min * 60]
    evals = [r for r in plan.runs if r.eval_job_s > plan.runtime_min * 60]
    if not over and not evals:
        out.append(f"  every job fits in its first attempt (longest train job "
                   f"{_h(max(r.train_job_s for r in plan.runs))})")
        return out
    lost = [r for r in over if r.attempts == 0]
    resumed = [r for r in over if r.attempts > 1]
    if resumed:
        out.append(f"  FLAG {len(resumed)} train jobs exceed {plan.runtime_min:g} min and resume "
                   f"from their checkpoint in a later attempt: "
                   + ", ".join(f"{r.name} ({_h(r.train_job_s)}, {r.attempts} attempts)"
                               for r in sorted(resumed, key=lambda r: -r.train_job_s)[:8])
                   + (" ..." if len(resumed) > 8 else ""))
    if lost:
        out.append(f"  FLAG {len(lost)} train jobs cannot finish in {retries + 1} attempts "
                   f"({plan.runtime_min:g} min x 1..{retries + 1}): "
                   + ", ".join(f"{r.name} ({_h(r.train_job_s)})"
                               for r in sorted(lost, key=lambda r: -r.train_job_s)[:8])
                   + (" ..." if len(lost) > 8 else "") + "; raise resources.runtime")
    if evals:
        out.append(f"  FLAG {len(evals)} evaluate jobs exceed {plan.runtime_min:g} min")
    return out


def _format_overhead(plan: Plan) -> list[str]:
    if plan.overhead is None:
        return ["SLURM overhead: not measured (bench/slurm_overhead.py writes "
                f"{DEFAULT_OVERHEAD})"]
    o = plan.overhead
    per = o["per_job_s"]
    out = [f"SLURM overhead per job ({o['path']}: {o.get('jobs', '?')} tiny jobs on "
           f"{o.get('machine', 'a local SLURM')}, {o.get('date', '')}): "
           f"{float(per['individual']):.2f} s one by one, {float(per['array']):.2f} s as arrays"]
    gh = plan.gpu_hours
    for mode in ("individual", "array"):
        oh = plan.overhead_hours(mode)
        label = "one by one" if mode == "individual" else "with the profile's arrays"
        if gh:
            out.append(f"  {label}: {plan.gpu_jobs()} GPU jobs x overhead = {oh:.2f} GPU-h, "
                       f"{100 * oh / gh:.2f} % of the {gh:,.2f} {_unit(plan)}-h"
                       + (f"; wall time on {plan.gpus} GPUs {plan.wall_hours(mode):,.2f} h"
                          if plan.wall_hours(mode) else ""))
        else:
            need = oh / OVERHEAD_GOAL if oh is not None else math.nan
            out.append(f"  {label}: {plan.gpu_jobs()} GPU jobs x overhead = {oh:.2f} GPU-h "
                       f"({oh / plan.gpus:.2f} h of wall time on {plan.gpus} GPUs); below "
                       f"{100 * OVERHEAD_GOAL:g} % of the GPU time if the study takes more than "
                       f"{need:.1f} GPU-h (a mean GPU job of "
                       f"{_h(need * 3600 / max(plan.gpu_jobs(), 1))})")
    return out
