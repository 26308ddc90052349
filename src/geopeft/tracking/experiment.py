"""The study's experiments: created once before any job (:func:`init_experiment`), their view
and description, and the check that the experiment file still describes its store."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from geopeft.io import read_json, write_json
from geopeft.layout import RUN_RECORD, RUNS_CSV
from geopeft.tracking.store import (
    TrackingError,
    _client,
    _ensure_sqlite_parent,
    check_server,
    damaged_store,
    is_http,
    set_aside,
    sqlite_path,
)

#: The study's pretraining run goes to an experiment of its own, named after the study's.
PRETRAIN_SUFFIX = " (pretraining)"
#: The key of the study's shared view of its runs table (``?viewStateShareKey=geopeft``).
VIEW_KEY = "geopeft"
#: What a run's table shows in the study view, besides the primary test metric(s).
VIEW_PARAMS = ("strategy", "label_fraction", "seed")
VIEW_METRICS = ("trainable_params", "wall_time_s")
#: The study view's order, best first: the final model's validation score (each task's primary
#: score, logged per epoch; the app's and every "best run" choice is made on it too).
VIEW_ORDER = "val_score"


def view_url(experiment_id: str) -> str:
    """The path (after the UI's address) of a study's runs table with its columns."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def study_view(metrics: list[str], time_series: bool = False) -> dict[str, Any]:
    """The shared view state of a study's runs table (MLflow's ``mlflow.sharedViewState.<key>``
    experiment tag): strategy, label fraction, seed (and sequence length), the validation score,
    the primary test metric(s), trainable parameters and wall time as columns, best on
    **validation** first: an ordering is a choice, and nothing is chosen on test."""
    params = (*VIEW_PARAMS, "sequence_length") if time_series else VIEW_PARAMS
    columns = ([f"params.`{p}`" for p in params]
               + [f"metrics.`{m}`" for m in (VIEW_ORDER, *metrics, *VIEW_METRICS)])
    return {"selectedColumns": columns, "orderByKey": f"metrics.`{VIEW_ORDER}`",
            "orderByAsc": False}


def _create(client: Any, tracking_uri: str, name: str, artifact_root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None and is_http(tracking_uri):  # artifacts go through the server's store
        return str(client.create_experiment(name))
    if exp is None:
        artifact_root = Path(artifact_root).resolve()
        artifact_root.mkdir(parents=True, exist_ok=True)
        return str(client.create_experiment(name, artifact_location=artifact_root.as_uri()))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


def init_experiment(tracking_uri: str, name: str, artifact_root: Path, out: Path,
                    metrics: list[str] | None = None, time_series: bool = False) -> dict[str, str]:
    """Create (or find) experiment ``name`` and its pretraining experiment, set the study's view
    and description, and write ``{experiment_id, ...}`` to ``out``. A damaged SQLite store is
    first set aside (:func:`set_aside_damaged`, said in the log) and created again.

    Args:
        tracking_uri: SQLite file or MLflow server.
        name: the experiment.
        artifact_root: where runs' artifacts go.
        out: the experiment file the jobs read (ids, URI).
        metrics: the study's primary test metrics (``test_overall_accuracy``, ...): the view's
            columns and order.
        time_series: whether runs differ by sequence length (a column of the view).
    """
    import logging

    moved = set_aside_damaged(tracking_uri)
    if moved:
        logging.getLogger("geopeft.tracking").warning("%s", moved)
    info = create_experiments(tracking_uri, name, artifact_root, metrics, time_series)
    write_json(out, info)
    return info


def set_aside_damaged(tracking_uri: str) -> str | None:
    """When the SQLite store of ``tracking_uri`` is damaged, move it aside (kept, never deleted)
    and say so in one line; None when it is sound, absent or a server."""
    db = sqlite_path(tracking_uri)
    why = damaged_store(db) if db is not None else None
    if not why:
        return None
    backup = set_aside(db)
    return (f"the MLflow store {db} is damaged ({why}): moved it to {backup}, creating the "
            f"store and the experiment again")


def create_experiments(tracking_uri: str, name: str, artifact_root: Path,
                       metrics: list[str] | None = None,
                       time_series: bool = False) -> dict[str, str]:
    """:func:`init_experiment` without the experiment file: create (or find) the experiments,
    set their view and description, and return what the file holds."""
    import json

    if is_http(tracking_uri):
        check_server(tracking_uri)
    _ensure_sqlite_parent(tracking_uri)
    client = _client(tracking_uri)
    exp_id = _create(client, tracking_uri, name, artifact_root)
    pre_id = _create(client, tracking_uri, name + PRETRAIN_SUFFIX, artifact_root)
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                              json.dumps(study_view(list(metrics or []), time_series)))
    exp = client.get_experiment(exp_id)
    if not exp.tags.get(NOTE_TAG):
        client.set_experiment_tag(exp_id, NOTE_TAG, _description(name, exp_id, pre_id, None))
    client.set_experiment_tag(pre_id, NOTE_TAG, (
        f"The pretraining run of study **{name}**: the embedded backbone trained on the "
        f"synthetic source set, kept apart from the study's runs, which start from it "
        f"(their {RUN_RECORD} names this run)."))
    # a store deleted and created again gives its experiments the same ids: the creation time
    # tells them apart (stale_experiment)
    return {"experiment_id": exp_id, "experiment": name, "tracking_uri": tracking_uri,
            "pretrain_experiment_id": pre_id, "pretrain_experiment": name + PRETRAIN_SUFFIX,
            "created": exp.creation_time}


def store_name(info: Any) -> str:
    """How MLflow's Dataset column names a prepared store: dataset and bands."""
    return f"{info.dataset} {' '.join(info.bands)}"


#: The tag MLflow shows as an experiment's (or run's) description.
NOTE_TAG = "mlflow.note.content"


def _description(name: str, exp_id: str, pre_id: str | None, summary: str | None) -> str:
    lines = [f"**Study {name}** · [open the study view: strategy, label fraction, seed, test "
             f"score, trainable parameters, time]({view_url(exp_id)})", ""]
    lines.append(summary or f"The summary table appears here once the study's {RUNS_CSV} is made.")
    if pre_id is not None:
        lines += ["", f"The pretraining run is in the experiment "
                      f"[{name}{PRETRAIN_SUFFIX}](#/experiments/{pre_id}/runs)."]
    return "\n".join(lines)


def describe_experiment(experiment_file: Path, summary: str) -> None:
    """Write the study's summary (Markdown) into its experiment's description, under the link to
    its view (the ``aggregate`` rule, once every run is evaluated)."""
    info = read_json(experiment_file)
    check_experiment(experiment_file, info)
    client = _client(info["tracking_uri"])
    client.set_experiment_tag(info["experiment_id"], NOTE_TAG, _description(
        info["experiment"], info["experiment_id"], info.get("pretrain_experiment_id"), summary))


def stale_experiment(experiment_file: Path, info: dict | None = None) -> str | None:
    """Why the experiment file no longer describes a usable store, or None when it does.

    Reads the SQLite store directly (no MLflow import, nothing created): the database file is
    gone, or holds no experiment with the recorded id, name and creation time (deleted and
    initialised again).
    A server's store is checked by the jobs themselves. ``info``: the file's content, where the
    caller has read it already.
    """
    import sqlite3

    info = info if info is not None else read_json(experiment_file)
    db = sqlite_path(info["tracking_uri"])
    if db is None:
        return None
    if not db.is_file():
        return f"the MLflow store {db} is gone"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("select name, creation_time from experiments where "
                              "experiment_id = ?", (int(info["experiment_id"]),)).fetchone()
    except sqlite3.Error as err:
        return f"the MLflow store {db} cannot be read ({err})"
    if row is None or row[0] != info["experiment"] or info.get("created", row[1]) != row[1]:
        return (f"the MLflow store {db} has no experiment {info['experiment']!r} with id "
                f"{info['experiment_id']} (it was deleted and created again)")
    return None


def check_experiment(experiment_file: Path, info: dict | None = None) -> None:
    """Fail, saying how to recover, when the experiment file describes a store that is gone.

    Args:
        experiment_file: the study's ``mlflow_experiment.json``.
        info: its content, where the caller has read it already.

    Raises:
        TrackingError: naming the experiment file, what is wrong and what to run.
    """
    why = stale_experiment(experiment_file, info)
    if why:
        raise TrackingError(
            f"{experiment_file}: {why}. Rerun snakemake: it notices and runs mlflow_init again, "
            f"which creates the store and the experiment (or delete {experiment_file} and run "
            f"`geopeft mlflow-init`); trained runs and training states are kept")

