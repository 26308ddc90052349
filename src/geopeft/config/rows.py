"""The study's rows and job specs: the grid and explicit rows expanded, each row resolved
(defaults <- strategy <- row), and the spec every job receives."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.data.sources import get_source
from geopeft.io import canonical_json
from geopeft.layout import DataLayout, TrackingLayout
from geopeft.settings.data import Synthetic
from geopeft.spec import TRAIN_KEYS, JobSpec
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY
from geopeft.tasks import TASKS

# What the study may use of each dataset, asked of its source (geopeft.data.sources).
#: Datasets a study may train on (the schema's ``dataset`` enum, checked by tests/test_spec.py).
TRAINABLE_DATASETS = tuple(n for n, s in SOURCES.items() if s.study_dataset)
#: Datasets the embedded synthetic world holds (``data.source: synthetic``).
SYNTHETIC_DATASETS = tuple(n for n in TRAINABLE_DATASETS if SOURCES[n].embedded)
#: Datasets of image time series: rows get a sequence length and a segmentation model.
TIME_SERIES_DATASETS = tuple(n for n in TRAINABLE_DATASETS if SOURCES[n].time_series)
def is_series(dataset: str) -> bool:
    """Whether a dataset's samples are image time series (rows get a sequence length and a
    segmentation model): a built-in one of :data:`TIME_SERIES_DATASETS`, or a dataset of your own
    registered with a segmentation task."""
    return dataset in SOURCES and SOURCES[dataset].time_series


#: Datasets whose embedded world one rule writes alone (``geopeft synthesize --world``).
WORLD_DATASETS = tuple(n for n in SYNTHETIC_DATASETS if SOURCES[n].world)


def trainable(dataset: str) -> bool:
    """Whether a study may train on ``dataset`` (a built-in study dataset, or a dataset of your
    own once registered); a study of another only fetches and prepares it."""
    return get_source(dataset).study_dataset


def _backbones(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(config key, backbone config) of the study's backbone and every strategy's own."""
    return [("backbone", cfg["backbone"])] + [
        (f"strategies.{k}.backbone", s["backbone"]) for k, s in cfg["strategies"].items()
        if s.get("backbone") is not None]


def uses_backbone(strategy: dict[str, Any]) -> bool:
    """Whether a strategy's rows have an encoder: every model but U-TAE, which has none."""
    return strategy["segmentation"]["model"] != "utae"



def _fmt_fraction(f: float) -> str:
    return f"{f:g}"


def study_datasets(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key, dataset) of every dataset the study uses."""
    out = [("data.dataset", cfg["data"]["dataset"])]
    out += [(f"grid.dataset[{i}]", d) for i, d in enumerate(cfg["grid"]["dataset"])]
    out += [(f"runs[{i}].dataset", r["dataset"]) for i, r in enumerate(cfg["runs"])
            if "dataset" in r]
    return out


def report_task(rows: Any) -> tuple[str, str]:
    """The task of a study's rows (``multiclass``, ``multilabel``, ``segmentation``, or the
    tasks joined by ``+``) and its primary metric in words (per dataset when they differ).

    Args:
        rows: the study's rows (each with its ``dataset``).
    """
    by_ds = {r["dataset"]: SOURCES[r["dataset"]].task for r in rows}
    tasks = sorted(set(by_ds.values()))
    if len(tasks) == 1:
        return tasks[0], TASKS[tasks[0]].metric_words
    return "+".join(tasks), ", ".join(f"{TASKS[t].metric_words} ({ds})" for ds, t in by_ds.items())


def view_columns(datasets: Any) -> tuple[list[str], bool]:
    """What the study view of an MLflow experiment shows for these datasets: their primary test
    metrics (``test_overall_accuracy``, ...) and whether runs differ by sequence length
    (``geopeft mlflow-init`` and the store created again at the start of a run)."""
    sources = [get_source(d) for d in datasets]
    metrics = list(dict.fromkeys(f"test_{TASKS[s.task].primary_metric}" for s in sources))
    return metrics, any(s.time_series for s in sources)


def study_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the grid and explicit rows into resolved run configurations, one per job.

    Each row holds everything a training job needs: ``name``, ``dataset``, ``strategy`` (the
    key), ``method`` (a strategy of :data:`geopeft.strategies.REGISTRY`), ``label_fraction``,
    ``seed``, ``train`` (defaults <- strategy <- row overrides), ``lora`` for LoRA rows, the
    strategy's own settings (``prompt`` of VPT rows), ``fusion`` for
    Fusion-LoRA rows, ``backbone`` when the strategy names its own encoder, and for time-series
    datasets ``sequence_length``, ``temporal`` (length, the study's ladder of lengths, pad rule,
    reference date) and ``segmentation`` (the model). With several datasets in ``grid.dataset``,
    grid run names start with the dataset; time-series run names hold ``-t<length>``. A row
    of a strategy with ``lr_sweep`` (that sets no ``lr`` of its own) becomes one row per rate,
    named ``<strategy>-lr<rate>-...`` (an explicit name gets ``-lr<rate>``), with ``train.lr``
    the rate and ``lr_sweep`` the strategy's rates (what :mod:`geopeft.paper.selection` chooses
    among).
    """
    grid = cfg["grid"]
    datasets = grid["dataset"] or [cfg["data"]["dataset"]]
    prefix = len(datasets) > 1
    temporal = cfg["temporal"]
    grid_lengths = list(grid["sequence_length"])
    rows: list[dict[str, Any]] = []
    for ds in datasets:
        lengths = (grid_lengths or [None]) if is_series(ds) else [None]
        for s in grid["strategy"]:
            for f in grid["label_fraction"]:
                for length in lengths:
                    for seed in grid["seed"]:
                        rows.append({"strategy": s, "label_fraction": f, "seed": seed, "dataset": ds,
                                     **({"prefix": ds} if prefix else {}),
                                     **({"sequence_length": length} if length else {})})
    rows += [dict(r) for r in cfg["runs"]]
    # the study's ladder of lengths: shorter selections are drawn from longer ones (nested)
    ladder = sorted({int(r.get("sequence_length") or temporal["length"]) for r in rows
                     if is_series(r.get("dataset") or cfg["data"]["dataset"])},
                    reverse=True)
    out = []
    for r in rows:
        sweep = cfg["strategies"][r["strategy"]].get("lr_sweep")
        if sweep and "lr" not in r:  # one row per rate of the strategy's sweep
            out += [_resolve(cfg, r, ladder, (rate, list(sweep))) for rate in sweep]
        else:
            out.append(_resolve(cfg, r, ladder, None))
    return out


def _resolve(cfg: dict[str, Any], r: dict[str, Any], ladder: list[int],
             sweep: tuple[float, list[float]] | None) -> dict[str, Any]:
    """One resolved row of :func:`study_rows` from a grid or explicit row (``sweep``: the rate
    this row runs and the strategy's ``lr_sweep``, or None)."""
    temporal = cfg["temporal"]
    strat = cfg["strategies"][r["strategy"]]
    fraction = float(r["label_fraction"])
    seed = int(r["seed"])
    series = is_series(r.get("dataset") or cfg["data"]["dataset"])
    length = int(r.get("sequence_length") or temporal["length"])
    train = {k: v for k, v in cfg["train"].items()}
    train.update({k: strat[k] for k in TRAIN_KEYS if k in strat})
    strategy = STRATEGY_REGISTRY[strat["strategy"]]
    if "encoder_lr_factor" in strat:  # the study's strategy sets it
        train["encoder_lr_factor"] = strat["encoder_lr_factor"]
    elif strategy.encoder_lr_factor is not None:  # the strategy's default (e2e)
        train["encoder_lr_factor"] = strategy.encoder_lr_factor
    train.update({k: r[k] for k in TRAIN_KEYS if k in r})
    t = f"-t{length}" if series else ""
    rate = f"-lr{sweep[0]:g}" if sweep else ""
    if sweep:
        train["lr"] = sweep[0]
    prefix = f"{r['prefix']}-" if r.get("prefix") else ""
    row = {
        "name": (f"{r['name']}{rate}" if r.get("name") else
                 f"{prefix}{r['strategy']}{rate}-f{_fmt_fraction(fraction)}{t}-s{seed}"),
        "dataset": r.get("dataset") or cfg["data"]["dataset"],
        "strategy": r["strategy"],
        "method": strat["strategy"],
        "label_fraction": fraction,
        "seed": seed,
        "train": train,
    }
    if strategy.uses_adapter:
        row["lora"] = dict(strat["lora"])
    if strategy.settings_key:  # the strategy's own settings (VPT's prompt)
        row[strategy.settings_key] = dict(strat[strategy.settings_key])
    if strat.get("fusion") is not None:
        row["fusion"] = dict(strat["fusion"])
    if strat.get("backbone") is not None:
        row["backbone"] = dict(strat["backbone"])
    if series:
        row["sequence_length"] = length
        row["temporal"] = {"length": length, "ladder": ladder, "pad": temporal["pad"],
                           "reference": temporal["reference_date"]}
        row["segmentation"] = dict(strat["segmentation"])
    if sweep:
        row["lr_sweep"] = sweep[1]
    return row


def row_backbone(cfg: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The backbone config of a row: its strategy's own, else the study's; None for U-TAE,
    which has no backbone.

    Args:
        cfg: the validated study.
        row: one of its rows (:func:`study_rows`).
    """
    strategy = cfg["strategies"][row["strategy"]]
    if not uses_backbone(strategy):
        return None
    return strategy.get("backbone") or cfg["backbone"]


def base_spec(cfg: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """The part of every job spec that comes from the study, not from the row.

    Args:
        cfg: the validated study.
        dataset: the row's dataset (default ``data.dataset``).
    """
    data = cfg["data"]
    return {"study": cfg["study"],
            "data": {"dataset": dataset or data["dataset"], "bands": data["bands"],
                     "source": data["source"]},
            "backbone": cfg["backbone"], "threads": cfg["threads"],
            **({"rehearsal": True} if cfg.get("rehearsal") else {})}


def job_spec(cfg: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Everything one training job receives (the ``--spec`` of the train rule): editing another
    row leaves it unchanged.

    Args:
        cfg: the validated study.
        row: one of its rows (:func:`study_rows`).
    """
    return dict(base_spec(cfg, row["dataset"]), row=row, backbone=row_backbone(cfg, row))


def pretrain_source(cfg: dict[str, Any]) -> str:
    """The embedded pretraining source set of a study: its dataset's
    (:attr:`~geopeft.data.sources.base.Source.pretrain_source`)."""
    return SOURCES[cfg["data"]["dataset"]].pretrain_source


def job_specs(cfg: dict[str, Any]) -> list[JobSpec]:
    """The typed job spec of every row of a validated study, in row order."""
    return [JobSpec.from_dict(job_spec(cfg, row), f"study {cfg['study']}: row {row['name']}")
            for row in study_rows(cfg)]


def pretrain_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The spec of the pretrain rule (the embedded backbone on the synthetic source set)."""
    return dict(base_spec(cfg), pretrain=cfg["pretrain"])


def features_rows(cfg: dict[str, Any], rows: list[dict[str, Any]] | None = None,
                  ) -> dict[str, tuple[str, Any]]:
    """The rows that train their head on a frozen encoder's features: run name -> (features key,
    the row's typed job spec); rows of one key share one features job
    (:meth:`geopeft.spec.JobSpec.features_key`)."""
    from geopeft.spec import JobSpec

    out = {}
    for r in study_rows(cfg) if rows is None else rows:
        if not trainable(r["dataset"]):
            continue
        spec = JobSpec.from_dict(job_spec(cfg, r))
        if spec.features_reason() is None:
            out[r["name"]] = (spec.features_key(), spec)
    return out


def bands_id(bands: list[str]) -> str:
    """File-name token of a band selection, e.g. ``B04-B03-B02``."""
    return "-".join(bands)


def settings_tag(value: Any) -> str:
    """A short, stable tag of some settings: the first 8 hex digits of their canonical JSON's
    sha256."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:8]


def data_layout(cfg: dict[str, Any]) -> DataLayout[str]:
    """The study's data tree (geopeft.layout.DataLayout), tagged by the settings that shape its
    data, so that two studies whose data settings differ never share a folder: the raw world
    by the synthetic world's settings when they are not the defaults (``data.synthetic``), by
    ``data.raw_dir`` when it is not the default one (``local``), by ``data.remotes`` when the
    study declares its own (``download``); the prepared stores also by ``data.options`` when
    any is set. The default study's data keep the untagged names."""
    data = cfg["data"]
    source = data["source"]
    world: Any = None
    if source == "synthetic" and data["synthetic"] != asdict(Synthetic()):
        world = data["synthetic"]
    elif source == "local" and data.get("raw_dir") and data["raw_dir"] != str(
            DataLayout(Path(data["root"]), "local").raw(data["dataset"])):
        world = data["raw_dir"]
    elif source == "download" and data["remotes"]:
        world = data["remotes"]
    options = {k: v for k, v in data["options"].items() if v is not None}
    if data.get("generic") is not None:  # a dataset of your own: its declaration shapes it
        options["generic"] = data["generic"]
    return DataLayout(data["root"], source, settings_tag(world) if world is not None else "",
                      settings_tag(options) if options else "")


def tracking_uri(cfg: dict[str, Any]) -> str:
    """The study's MLflow tracking URI: ``mlflow.tracking_uri``, else SQLite in ``results_dir``."""
    uri = cfg["mlflow"]["tracking_uri"]
    if uri:
        return str(uri)
    return TrackingLayout(Path(cfg["results_dir"])).uri
