"""A study's store created again at the start of a run (:func:`recover_experiment`): a damaged
SQLite file set aside, the experiments created as ``mlflow_init`` creates them, and every run
whose folder holds its outputs (the pretraining run's backbone, each trained model) logged again
from it, tagged with the id its files record (:data:`RELOGGED_TAG`). A lookup of that id
(:func:`resolve_run`: :func:`~geopeft.tracking.download_model`, a job reopening its run) finds
the run logged again: nothing is retrained and no file of ``results/`` is rewritten."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geopeft.io import read_json, write_json
from geopeft.layout import MODEL_ARTIFACT, PRETRAIN_ARTIFACT, PretrainLayout, RunLayout
from geopeft.tracking.experiment import (
    NOTE_TAG,
    VIEW_PARAMS,
    create_experiments,
    set_aside_damaged,
    stale_experiment,
)
from geopeft.tracking.store import _client, metric_key

#: The tag of a run logged again from its folder: the id of the run its files record (in a
#: store since lost), by which :func:`resolve_run` finds it.
RELOGGED_TAG = "geopeft.relogged_from"
#: What an MLflow run id looks like (anything else is never put in a search filter).
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def recover_experiment(experiment_file: Path, tracking_uri: str, name: str, artifact_root: Path,
                       metrics: list[str] | None = None, time_series: bool = False,
                       pretrain_dir: Path | None = None,
                       run_dirs: Iterable[Path] = ()) -> list[str]:
    """When the experiment file no longer describes a usable store (damaged, gone, created
    again without the experiment): set a damaged store aside, create the experiments as
    :func:`~geopeft.tracking.init_experiment` does, log the pretraining run and each trained
    run again from their folders, and only then rewrite the experiment file (a recovery killed
    half-way is taken up by the next one, which logs only the runs still missing).

    Args:
        experiment_file: the study's ``mlflow_experiment.json`` (absent: nothing to recover,
            ``mlflow_init`` creates it).
        tracking_uri, name, artifact_root, metrics, time_series: as for ``init_experiment``.
        pretrain_dir: the study's pretrained backbone folder, if it uses one.
        run_dirs: the study's run folders (``runs/<run>``); those without a model are skipped.

    Returns:
        What was found and done, one line each; empty when the store is usable.
    """
    experiment_file = Path(experiment_file)
    if not experiment_file.is_file():
        return []
    moved = set_aside_damaged(tracking_uri)
    why = stale_experiment(experiment_file)
    if not (moved or why):
        return []
    lines = [f"{experiment_file}: {moved or why + '; creating the store and the experiment again'}"]
    info = create_experiments(tracking_uri, name, artifact_root, metrics, time_series)
    client = _client(tracking_uri)
    known = relogged(client, [info["experiment_id"], info["pretrain_experiment_id"]])
    count = 0
    if pretrain_dir is not None and Path(PretrainLayout(Path(pretrain_dir)).record).is_file():
        count += relog_pretrain(client, info["pretrain_experiment_id"], Path(pretrain_dir), known)
    for run_dir in run_dirs:
        if Path(RunLayout(Path(run_dir)).record).is_file():
            count += relog_run(client, info["experiment_id"], Path(run_dir), known)
    write_json(experiment_file, info)
    if count:
        lines.append(f"{tracking_uri}: logged {count} run(s) again from their folders under "
                     f"{experiment_file.parent} (tag {RELOGGED_TAG}: the id their files record)")
    return lines


def relogged(client: Any, experiment_ids: list[str]) -> dict[str, str]:
    """The runs logged again in these experiments: ``{recorded id: id in this store}``."""
    runs = client.search_runs(experiment_ids, f"tags.`{RELOGGED_TAG}` LIKE '%'",
                              max_results=50000)
    return {r.data.tags[RELOGGED_TAG]: r.info.run_id for r in runs}


def resolve_run(client: Any, run_id: str, experiment_ids: list[str] | None = None) -> str:
    """The id of ``run_id`` in this store: itself when the store has it, else the run logged
    again from its files (:data:`RELOGGED_TAG`), else ``run_id`` unchanged (the caller's
    lookup then fails as it would have). ``experiment_ids``: where to look (default: every
    experiment)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return run_id
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    if not _RUN_ID.match(run_id):
        return run_id
    ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`{RELOGGED_TAG}` = '{run_id}'", max_results=1)
    return runs[0].info.run_id if runs else run_id


def relog_pretrain(client: Any, experiment_id: str, pretrain_dir: Path,
                   known: dict[str, str]) -> int:
    """Log the pretraining run again from its folder (its ``backbone`` artifacts, final
    validation score and time); 0 when it has no recorded id or is logged already, else 1."""
    record = read_json(PretrainLayout(pretrain_dir).record)
    old = record.get("mlflow_run_id")
    if not old or old in known:
        return 0
    scores = {k: record[k] for k in ("final_val_acc", "wall_time_s")
              if isinstance(record.get(k), int | float)}
    _log_again(client, experiment_id, old, "pretrain", pretrain_dir, PRETRAIN_ARTIFACT,
               [(0, scores)], {}, {"role": "pretrain"})
    return 1


def relog_run(client: Any, experiment_id: str, run_dir: Path, known: dict[str, str]) -> int:
    """Log a trained run again from its folder: its ``model`` artifacts, the params of the study
    view, its history per epoch and its costs, and its test metrics and confusion table as
    ``evaluation`` artifacts where they exist; 0 when it has no recorded id or is logged
    already, else 1."""
    layout = RunLayout(run_dir)
    record = read_json(layout.record)
    old = record.get("mlflow_run_id")
    if not old or old in known:
        return 0
    row = record.get("spec", {}).get("row", {})
    params = {k: str(row[k]) for k in (*VIEW_PARAMS, "method", "sequence_length") if k in row}
    costs = {k: v for k, v in record.items() if k in (
        "trainable_params", "total_params", "train_samples", "wall_time_s", "train_time_s",
        "images_per_s", "peak_memory_mb") and isinstance(v, int | float)}
    history = [(e, m) for e, m in enumerate(record.get("history", []))]
    run_id = _log_again(client, experiment_id, old, row.get("name", Path(run_dir).name),
                        Path(layout.model), MODEL_ARTIFACT, [*history, (0, costs)], params,
                        {"role": "finetune", "study": str(record.get("spec", {}).get("study", ""))})
    for done in (layout.metrics, layout.confusion):
        if Path(done).is_file():
            client.log_artifact(run_id, str(done), "evaluation")
    return 1


def _log_again(client: Any, experiment_id: str, old: str, name: str, folder: Path,
               artifact_path: str, metrics: list[tuple[int, dict[str, Any]]],
               params: dict[str, str], tags: dict[str, str]) -> str:
    import time

    from mlflow.entities import Metric, Param

    note = (f"Logged again from {folder} after the tracking store was created again; the run "
            f"its files record, {old}, was in the store that was lost.")
    run = client.create_run(experiment_id, run_name=name, tags={
        "mlflow.runName": name, RELOGGED_TAG: old, NOTE_TAG: note, **tags})
    run_id = run.info.run_id
    ts = int(time.time() * 1000)
    batch = [Metric(metric_key(k), float(v), ts, step) for step, m in metrics
             for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    for i in range(0, len(batch), 1000):  # MLflow's limit of metrics per batch
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    if params:
        client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params.items())])
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not f.name.startswith(".snakemake"):  # Snakemake's marker of a directory output
            rel = f.parent.relative_to(folder).as_posix()
            client.log_artifact(run_id, str(f), artifact_path if rel == "." else
                                f"{artifact_path}/{rel}")
    client.set_terminated(run_id, "FINISHED")
    return run_id


__all__ = ["RELOGGED_TAG", "recover_experiment", "relog_pretrain", "relog_run", "relogged",
           "resolve_run"]
