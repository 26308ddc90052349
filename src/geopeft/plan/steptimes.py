"""Measured step times: :class:`StepTime`, read from finished runs' ``run.json`` and from
step-time files, and written as one (``geopeft steptimes``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geopeft.config import row_backbone
from geopeft.io import read_json
from geopeft.layout import RUN_RECORD
from geopeft.plan.errors import PlanError

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
    return _spec_model({"row": row, "backbone": row_backbone(cfg, row)})


def _spec_model(spec: dict[str, Any]) -> str:
    """:func:`row_model` of a job spec (``run.json``'s ``spec``; a row and its backbone)."""
    row, bb = spec["row"], spec.get("backbone")
    if bb is None:
        return str(row["segmentation"]["model"])
    return f"{bb['name']}+fusion" if row.get("fusion") else str(bb["name"])


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
        raise PlanError(f"{path}: {RUN_RECORD} not found")
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
            runs = sorted(p.rglob(RUN_RECORD))
            if not runs:
                raise PlanError(f"{p}: no {RUN_RECORD} below this folder")
            out += [steptime_from_run(r, kind) for r in runs]
        elif p.name == RUN_RECORD or (p.suffix == ".json" and p.is_file()
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

