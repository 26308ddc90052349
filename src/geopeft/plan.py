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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from geopeft.config import (
    TIME_SERIES_DATASETS,
    TRAINABLE_DATASETS,
    WORLD_DATASETS,
    bands_id,
    pretrain_source,
    resolve,
    row_backbone,
    study_rows,
)
from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.errors import GeopeftError
from geopeft.io import read_json

#: Rules whose jobs ask for GPUs (``GPU_RESOURCES`` in ``workflow/rules/common.smk``).
GPU_RULES = ("pretrain", "train", "evaluate")
#: Rules that run where Snakemake runs (``localrules:`` in ``workflow/rules/*.smk``; ``all``
#: is a target only). ``tests/test_plan.py`` reads the rule files to keep this list true.
LOCAL_RULES = ("mlflow_init", "download", "fetch", "aggregate", "table", "paper", "all")
#: The order rules are listed in (the DAG's order).
RULE_ORDER = ("synthesize", "synthesize_layout", "download", "fetch", "prepare", "subset",
              "mlflow_init", "pretrain", "train", "evaluate", "aggregate", "figures", "table",
              "paper", "all")
#: Datasets the ``synthesize`` rule writes in one job (the rest: ``synthesize_layout``).
_SYNTHESIZE_OUTPUTS = ("eurosat_ms", "eurosat_rgb", "eurosat_ms_source", "eurosat_rgb_source")
#: The overhead share of GPU time the study aims at (issue 18: < 2 %).
OVERHEAD_GOAL = 0.02
#: The SLURM overhead measurement ``bench/slurm_overhead.py`` wrote, read by default.
DEFAULT_OVERHEAD = Path("config/measurements/slurm_overhead.json")
#: The cluster profile read by default (relative to the working directory).
DEFAULT_PROFILE = Path("profiles/slurm")


class PlanError(GeopeftError, ValueError):
    """A plan input is missing or malformed; the message names the file and key."""


# --------------------------------------------------------------------------- job resources


def job_resources(cfg: dict[str, Any]) -> list[str]:
    """What each GPU job of a resolved study asks for (``resources``, ``threads``,
    ``train.workers``) and how its training job will hold each dataset's images: loaded whole
    when the train (at the study's largest label fraction) and val splits take at most
    :data:`~geopeft.data.stream.WHOLE_SHARE` of ``mem_mb``, else streamed from the store
    (:func:`~geopeft.data.stream.stream_decision` makes the job's own decision by the store, also
    under a smaller cgroup or SLURM limit, and logs it). Printed by ``geopeft validate
    --resolved`` and ``geopeft plan``.

    Args:
        cfg: the resolved study.
    """
    from geopeft.data.stream import WHOLE_SHARE

    res, threads, workers = cfg["resources"], int(cfg["threads"]), int(cfg["train"]["workers"])
    cpus = threads + workers
    out = [f"Resources of each GPU job (pretrain, train, evaluate): gpus {res['gpus']}, "
           f"cpus_per_gpu {res['cpus_per_gpu']} (threads {threads} + train.workers {workers} "
           f"reader processes when the splits stream), mem_mb {res['mem_mb']}, runtime "
           f"{res['runtime']} min"]
    if res["gpus"] != 0 and cpus > res["cpus_per_gpu"]:
        out.append(f"  warning: threads + train.workers = {cpus} > resources.cpus_per_gpu "
                   f"{res['cpus_per_gpu']}: a cluster job gets fewer CPUs than it runs; raise "
                   f"cpus_per_gpu or lower them")
    data, rows = cfg["data"], study_rows(cfg)
    half = WHOLE_SHARE * res["mem_mb"]
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds]
        sizes = None if data["source"] == "synthetic" else SOURCES[ds].split_sizes(data["options"])
        length = max((r.get("sequence_length") or 0 for r in mine), default=0) or None
        per = SOURCES[ds].sample_bytes(len(data["bands"]), data["options"], length)
        if not sizes or not per:
            out.append(f"  {ds}: size unknown before its store is prepared (embedded world, or "
                       f"no published split for these options); each job decides by its store "
                       f"(logged)")
            continue
        n = _train_samples(sizes, max(r["label_fraction"] for r in mine)) + sizes["val"]
        mb = n * per / 2**20
        how = "streamed from the store" if mb > half else "loaded whole"
        out.append(f"  {ds}: train + val images {mb:,.0f} MB ({n:,} samples x {per / 2**10:,.0f} "
                   f"KB, {np.dtype(SOURCES[ds].dtype)}{f', {length} dates' if length else ''})"
                   f" {'>' if mb > half else '<='} {WHOLE_SHARE:.0%} of mem_mb ({half:,.0f} "
                   f"MB): {how}")
    return out


# --------------------------------------------------------------------------- jobs per rule


def rule_jobs(cfg: dict[str, Any]) -> dict[str, int]:
    """Jobs per rule of a study's full run (``snakemake --forceall``), in DAG order.

    Counts what the rules' inputs ask for: one prepare job per (dataset, band selection), one
    subset per (dataset, method, label fraction < 1, seed), one train and one evaluate job per
    row, the download files of each dataset (``data.remotes`` / the source's), the pretraining
    of the embedded backbone when a row uses it.

    Args:
        cfg: the validated study (:func:`geopeft.config.resolve`).

    Returns:
        ``{rule: jobs}`` for every rule with at least one job.
    """
    from geopeft.data.fetch import remotes_for
    from geopeft.data.subsets import subset_file_name

    rows = study_rows(cfg)
    data = cfg["data"]
    bands = bands_id(data["bands"])
    jobs: dict[str, int] = {}
    if any(r["dataset"] not in TRAINABLE_DATASETS for r in rows):
        stores, rows = {(data["dataset"], bands)}, []  # the study only fetches and prepares
    else:
        stores = {(r["dataset"], bands) for r in rows}
    pretrained = any((bb := row_backbone(cfg, r)) is not None and bb["weights"] == "pretrain"
                     for r in rows)
    if pretrained:
        stores.add((pretrain_source(cfg), bands_id(cfg["pretrain"]["bands"] or data["bands"])))
    raw = sorted({ds for ds, _ in stores})
    if data["source"] == "synthetic":
        jobs["synthesize"] = int(any(ds in _SYNTHESIZE_OUTPUTS for ds in raw))
        jobs["synthesize_layout"] = sum(ds in WORLD_DATASETS for ds in raw)
    elif data["source"] == "download":
        jobs["download"] = sum(len(remotes_for(ds, data["mirrors"], data["remotes"])) for ds in raw)
        jobs["fetch"] = len(raw)
    jobs["prepare"] = len(stores)
    jobs["subset"] = len({(r["dataset"], subset_file_name(cfg["subsets"]["method"],
                                                          r["label_fraction"], r["seed"]))
                          for r in rows if r["label_fraction"] < 1.0})
    if rows:
        jobs.update(mlflow_init=1, pretrain=int(pretrained), train=len(rows),
                    evaluate=len(rows), aggregate=1, figures=1, table=1)
    jobs["all"] = 1
    return {r: jobs[r] for r in RULE_ORDER if jobs.get(r)}


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class StepTime:
    """A measured training cost of one model and strategy on one kind of device."""

    kind: str
    """The device kind it was measured on (``cpu``, ``h100``, ...): the plan's ``--gpu-kind``."""
    model: str
    """The encoder's zoo name, or the segmentation model without one (``utae``) (:func:`row_model`)."""
    method: str
    """What trained: ``linear``, ``lora``, ``e2e``, ``full``, ``scratch``."""
    train_s: float
    """Seconds per training sample (forward, backward, optimiser step; ``train_time_s`` /
    samples seen)."""
    sequence_length: int | None = None
    """Dates per sample when measured (time series); per-sample times scale with the dates."""
    batch_size: int | None = None
    """The batch it was measured with."""
    val_s: float | None = None
    """Seconds per validation sample (the epoch-end validation, and the checkpoint saved with
    it: ``(wall_time_s - train_time_s) / (epochs x validation samples)``); None: not measured."""
    startup_s: float | None = None
    """Seconds from the job's start to its first step; None: not measured."""
    origin: str = ""
    """Where it comes from (a ``run.json``, or a step-time file's entry and the run it names)."""
    note: str = ""
    """How it was measured (a step-time file's ``note``)."""


def row_model(cfg: dict[str, Any], row: dict[str, Any]) -> str:
    """The model a row trains, as step times name it: its encoder's zoo name (with ``+fusion``
    for Fusion-LoRA rows), or its segmentation model when it has no encoder (``utae``).

    Args:
        cfg: the validated study.
        row: one of its rows (:func:`geopeft.config.study_rows`).
    """
    bb = row_backbone(cfg, row)
    if bb is None:
        return str(row["segmentation"]["model"])
    return f"{bb['name']}+fusion" if row.get("fusion") else str(bb["name"])


def _spec_model(spec: dict[str, Any]) -> str:
    """:func:`row_model` of a job spec (``run.json``'s ``spec``)."""
    row = spec["row"]
    if spec.get("backbone") is None:
        return str(row["segmentation"]["model"])
    return f"{spec['backbone']['name']}+fusion" if row.get("fusion") else str(spec["backbone"]["name"])


def _store_split_size(store: dict[str, Any] | None, split: str) -> int | None:
    """Samples of ``split`` in the prepared store a run recorded (None: the store is gone)."""
    path = Path(store["path"]) if store and store.get("path") else None
    if path is None or not path.is_dir():
        return None
    from geopeft.data.prepare import open_store

    ds = open_store(path)
    return int((ds["split"].values == split).sum())


def steptime_from_run(path: str | Path, kind: str | None = None) -> StepTime:
    """The step time a finished run measured, from its ``run.json``.

    Training: ``train_time_s`` / (``train_samples`` x epochs run). Validation: the rest of
    ``fit``'s wall time per validation sample and epoch, when the run's prepared store is still
    there to count its validation split. Start-up: ``startup_s``.

    Args:
        path: a ``run.json`` (``results/<study>/runs/<run>/model/run.json``).
        kind: the device kind (default: ``cpu`` for a CPU run; a CUDA run must be told which GPU).

    Raises:
        PlanError: the file is missing, lacks a key, or ran on a GPU and ``kind`` is not given.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: run.json not found")
    rec = read_json(path)
    need = ("spec", "train_time_s", "train_samples", "history", "device")
    missing = [k for k in need if k not in rec]
    if missing:
        raise PlanError(f"{path}: not a run record (missing {', '.join(missing)})")
    device = str(rec["device"])
    if kind is None:
        if not device.startswith("cpu"):
            raise PlanError(f"{path}: measured on {device!r}; say which GPU it was "
                            f"(geopeft steptimes --kind h100 ...)")
        kind = "cpu"
    row = rec["spec"]["row"]
    epochs = max(len(rec["history"]), 1)
    seen = rec["train_samples"] * epochs
    n_val = _store_split_size(rec.get("store"), "val")
    val_s = None
    if n_val and rec.get("wall_time_s") is not None:
        val_s = max(float(rec["wall_time_s"]) - float(rec["train_time_s"]), 0.0) / (n_val * epochs)
    return StepTime(kind=kind, model=_spec_model(rec["spec"]), method=str(row["method"]),
                    train_s=float(rec["train_time_s"]) / max(seen, 1),
                    sequence_length=row.get("sequence_length"),
                    batch_size=row["train"].get("batch_size"), val_s=val_s,
                    startup_s=rec.get("startup_s"),
                    origin=f"{path} ({row['name']}, {device}, {epochs} epoch(s), "
                           f"{rec['train_samples']} samples)")


def _entry(d: Any, where: str, kind: str | None, note: str) -> StepTime:
    if not isinstance(d, dict):
        raise PlanError(f"{where}: an entry must be a mapping")
    for key in ("model", "method", "train_s_per_sample"):
        if key not in d:
            raise PlanError(f"{where}: missing {key}")
    k = d.get("kind", kind)
    if not k:
        raise PlanError(f"{where}: missing kind (per entry or at the top of the file)")
    try:
        train_s = float(d["train_s_per_sample"])
        val_s = None if d.get("val_s_per_sample") is None else float(d["val_s_per_sample"])
        startup = None if d.get("startup_s") is None else float(d["startup_s"])
    except (TypeError, ValueError) as err:
        raise PlanError(f"{where}: not a number ({err})") from None
    if train_s <= 0:
        raise PlanError(f"{where}.train_s_per_sample: must be > 0, got {train_s}")
    origin = d.get("from") or ""
    return StepTime(kind=str(k), model=str(d["model"]), method=str(d["method"]), train_s=train_s,
                    sequence_length=d.get("sequence_length"), batch_size=d.get("batch_size"),
                    val_s=val_s, startup_s=startup,
                    origin=f"{where}" + (f" ({origin})" if origin else ""), note=note)


def read_steptimes(path: str | Path) -> list[StepTime]:
    """The entries of a step-time file ``path`` (YAML or JSON, as :func:`write_steptimes` writes).

    The file holds ``kind`` (default of the entries), ``note`` (how it was measured) and
    ``entries``: ``model``, ``method``, ``train_s_per_sample`` and optionally
    ``sequence_length``, ``batch_size``, ``val_s_per_sample``, ``startup_s``, ``kind``, ``from``.

    Raises:
        PlanError: naming the file and the entry at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: step-time file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PlanError(f"{path}: not valid YAML/JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise PlanError(f"{path}: entries: a list of measured step times is required")
    note = str(doc.get("note") or "")
    return [_entry(e, f"{path}: entries[{i}]", doc.get("kind"), note)
            for i, e in enumerate(doc["entries"])]


def load_measurements(paths: Sequence[str | Path], kind: str | None = None) -> list[StepTime]:
    """Step times from run records and step-time files.

    Args:
        paths: ``run.json`` files, folders (every ``run.json`` below them), step-time files.
        kind: the device kind of the ``run.json`` files (:func:`steptime_from_run`).

    Raises:
        PlanError: a path is missing, or a folder holds no ``run.json``.
    """
    out: list[StepTime] = []
    for p in map(Path, paths):
        if p.is_dir():
            runs = sorted(p.rglob("run.json"))
            if not runs:
                raise PlanError(f"{p}: no run.json below this folder")
            out += [steptime_from_run(r, kind) for r in runs]
        elif p.name == "run.json" or (p.suffix == ".json" and p.is_file()
                                      and "spec" in read_json(p)):
            out.append(steptime_from_run(p, kind))
        else:
            out += read_steptimes(p)
    return out


def write_steptimes(entries: list[StepTime], out: str | Path, note: str) -> None:
    """Write step times as a step-time file (:func:`read_steptimes` reads it back).

    Args:
        entries: the step times.
        out: the YAML file to write.
        note: how they were measured (machine, threads, code version, date).
    """
    from geopeft.io import atomic_file

    def one(s: StepTime) -> dict[str, Any]:
        d: dict[str, Any] = {"model": s.model, "method": s.method, "kind": s.kind,
                             "sequence_length": s.sequence_length, "batch_size": s.batch_size,
                             "train_s_per_sample": round(s.train_s, 6),
                             "val_s_per_sample": None if s.val_s is None else round(s.val_s, 6),
                             "startup_s": None if s.startup_s is None else round(s.startup_s, 3),
                             "from": s.origin}
        return {k: v for k, v in d.items() if v is not None}

    doc = {"note": note, "entries": [one(s) for s in entries]}
    with atomic_file(out) as fh:
        fh.write("# Measured step times for `geopeft plan --measured` (geopeft steptimes).\n")
        yaml.safe_dump(doc, fh, sort_keys=False, width=100)


@dataclass(frozen=True)
class Curve:
    """Per-sample times of one (kind, model, method) as a function of the dates per sample."""

    points: tuple[tuple[int | None, float, float | None], ...]
    """(dates, train s, validation s) of each measured length, shortest first."""
    startup_s: float | None
    batch_sizes: tuple[int, ...]
    origins: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def at(self, dates: int | None) -> tuple[float, float | None]:
        """(train, validation) seconds per sample at ``dates`` per sample: linear in the dates
        between the measured lengths and beyond them (the nearest two), proportional to the
        dates from a single measured length; image rows take the mean of the measurements.

        Args:
            dates: the row's sequence length (None: an image row).
        """
        pts = self.points
        if dates is None or any(p[0] is None for p in pts):
            vals = [p[2] for p in pts if p[2] is not None]
            return (statistics.fmean(p[1] for p in pts),
                    statistics.fmean(vals) if vals else None)
        lengths = [int(p[0]) for p in pts if p[0] is not None]
        if len(pts) == 1:
            f = dates / lengths[0]
            return pts[0][1] * f, None if pts[0][2] is None else pts[0][2] * f
        i = next((k for k in range(1, len(pts) - 1) if dates <= lengths[k]), len(pts) - 1)
        t0, t1 = lengths[i - 1], lengths[i]

        def line(y0: float, y1: float) -> float:
            y = y0 + (y1 - y0) * (dates - t0) / (t1 - t0)
            near_t, near_y = (t0, y0) if abs(dates - t0) <= abs(dates - t1) else (t1, y1)
            return y if y > 0 else near_y * dates / near_t

        v0, v1 = pts[i - 1][2], pts[i][2]
        return (line(pts[i - 1][1], pts[i][1]),
                None if v0 is None or v1 is None else line(v0, v1))


def curves(steps: list[StepTime], kind: str) -> dict[tuple[str, str], Curve]:
    """The step times of ``kind``, one :class:`Curve` per (model, method); several measurements
    of one length are averaged.

    Args:
        steps: measured step times (:func:`load_measurements`).
        kind: the device kind to keep.
    """
    by: dict[tuple[str, str], list[StepTime]] = {}
    for s in steps:
        if s.kind == kind:
            by.setdefault((s.model, s.method), []).append(s)
    out = {}
    for key, ss in by.items():
        lengths = sorted({s.sequence_length for s in ss}, key=lambda t: -1 if t is None else t)
        pts = []
        for t in lengths:
            at = [s for s in ss if s.sequence_length == t]
            vals = [s.val_s for s in at if s.val_s is not None]
            pts.append((t, statistics.fmean(s.train_s for s in at),
                        statistics.fmean(vals) if vals else None))
        ups = [s.startup_s for s in ss if s.startup_s is not None]
        out[key] = Curve(tuple(pts), statistics.fmean(ups) if ups else None,
                         tuple(sorted({s.batch_size for s in ss if s.batch_size})),
                         tuple(s.origin for s in ss),
                         tuple(dict.fromkeys(s.note for s in ss if s.note)))
    return out


# --------------------------------------------------------------------------- profile, overhead


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
        """Jobs of the GPU rules (pretrain, train, evaluate)."""
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
            size_sources[ds] = (f"{SOURCES[ds].published_splits_source}, declared in "
                                f"geopeft.data.sources" if sizes[ds]
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
    plan.kind = gpu_kind
    plan.measured = curves(steps, gpu_kind) if gpu_kind else {}
    _estimate(plan, cfg, rows)
    _check_profile(plan)
    return plan


def _train_samples(sizes: dict[str, int] | None, fraction: float) -> int | None:
    if not sizes:
        return None
    return max(1, round(sizes["train"] * fraction))


def _estimate(plan: Plan, cfg: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The work of every row, and its time where its (model, method) was measured."""
    missing: set[tuple[str, str]] = set()
    used_no_val = used_no_startup = False
    batches: set[str] = set()
    for r in rows:
        sizes = plan.sizes.get(r["dataset"])
        n = _train_samples(sizes, r["label_fraction"])
        dates = r.get("sequence_length") if r["dataset"] in TIME_SERIES_DATASETS else None
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


def _per_timespan(spec: str) -> float:
    """The jobs Snakemake may start per timespan (``max-jobs-per-timespan``, e.g. ``100/1s``):
    the most one job selection takes."""
    return float(spec.partition("/")[0])


def _check_profile(plan: Plan) -> None:
    """Array submission in snakemake-executor-plugin-slurm 2.8 needs every ready job of an array
    rule selected at once: a batch smaller than the rule's ready jobs is dropped and never runs
    (plugin issue #473), which ``jobs`` or ``max-jobs-per-timespan`` below the rule's jobs
    cause."""
    prof = plan.profile
    arrays = [r for r in ("train", "evaluate") if r in prof.array_rules or "all" in prof.array_rules]
    if not arrays:
        return
    widest = max(plan.jobs.get(r, 0) for r in arrays)
    queued = sum(plan.jobs.get(r, 0) for r in GPU_RULES)
    if prof.jobs is not None and int(prof.jobs) < queued:
        plan.notes.append(f"{prof.path}: jobs {prof.jobs} < {queued} (the GPU jobs that may be "
                          f"queued at once) with slurm-array-jobs: the SLURM plugin 2.8 drops "
                          f"array batches it was not given whole (issue #473); raise jobs")
    if _per_timespan(prof.max_jobs_per_timespan) < widest:
        plan.notes.append(f"{prof.path}: max-jobs-per-timespan {prof.max_jobs_per_timespan} "
                          f"selects fewer than the {widest} jobs of one array rule at once: the "
                          f"SLURM plugin 2.8 drops the rest (issue #473); raise it")


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
                "finished run's run.json, a folder of runs or a step-time file (geopeft "
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
