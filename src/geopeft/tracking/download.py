"""A training run's model, downloaded from MLflow alone, and MLflow's global tracking URI set for
one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from geopeft.layout import MODEL_ARTIFACT, PRETRAIN_ARTIFACT, ModelLayout
from geopeft.tracking.recover import resolve_run
from geopeft.tracking.store import TrackingError, _client


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI (and the ``MLFLOW_TRACKING_URI`` that MLflow sets with it)
    is ``uri`` inside the block and as it was after it: the process keeps no trace of a store
    it used (a later MLflow call in it, or a later test, would otherwise go to that store)."""
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils

    old, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def download_model(tracking_uri: str, run_id: str, dest: Path) -> tuple[Path, Path | None]:
    """Download what rebuilds a training run's model from MLflow alone: the run's ``model``
    artifacts and, for an encoder pretrained by the study (``weights: pretrain``), the
    ``backbone`` artifacts of the pretrain run it names (``pretrain_run_id`` in its run.json).
    Rebuild with ``geopeft.models.saved.load_model(model_dir, pretrain_dir=pretrain_dir)``. An
    id the store lost is looked up among the runs logged again from their folders
    (:func:`~geopeft.tracking.recover.resolve_run`).

    Args:
        tracking_uri: the study's tracking URI (its SQLite file or server).
        run_id: the training run.
        dest: an empty folder to download into.

    Returns:
        (model folder, pretrained backbone folder or None).

    Raises:
        TrackingError: the run has no model artifacts, or its pretrain run no backbone.
    """
    import json

    client = _client(tracking_uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        # an id recorded by files (run.json) that the store lost: the run logged again from them
        run_id = resolve_run(client, run_id)
        # a run's "model" is also its logged MLflow model, which MLflow looks up in the global
        # tracking store: point that at this one for the download
        with global_tracking_uri(tracking_uri):
            model_dir = Path(client.download_artifacts(run_id, MODEL_ARTIFACT, str(dest)))
        record = json.loads(ModelLayout(model_dir).record.read_text())
    except Exception as err:
        raise TrackingError(f"{tracking_uri}: run {run_id} has no readable model artifacts "
                            f"({type(err).__name__}: {err})") from None
    pre = record.get("pretrain_run_id")
    if not pre:
        return model_dir, None
    try:
        pre = resolve_run(client, pre)
        pretrain_dir = Path(client.download_artifacts(pre, PRETRAIN_ARTIFACT, str(dest)))
    except Exception as err:
        raise TrackingError(f"{tracking_uri}: run {run_id} was trained on the backbone of "
                            f"pretrain run {pre}, which has no 'backbone' artifacts "
                            f"({type(err).__name__}: {err})") from None
    return model_dir, pretrain_dir

