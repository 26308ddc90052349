"""One job's MLflow run (:class:`RunLogger`): opened by the experiment's id, params, metrics
(batched; over HTTP sent by a background thread), artifacts and the datasets it read."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from geopeft.io import read_json
from geopeft.tracking.experiment import check_experiment, stale_experiment
from geopeft.tracking.recover import resolve_run
from geopeft.tracking.store import TrackingError, _client, check_server, is_http, metric_key

#: Params sent in one ``log_batch`` request (MLflow's limit per batch).
MAX_PARAMS_PER_BATCH = 100
#: Characters kept of a param's value (MLflow refuses longer values).
MAX_PARAM_LEN = 6000

#: The tag that names a run's study row and job spec: an interrupted attempt's run is found by
#: it and reused, so a row has one run whatever its attempts.
RUN_KEY_TAG = "geopeft.run_key"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (lists kept as JSON-like text)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


def git_commit(cwd: str | Path = ".") -> str:
    """The checkout's commit (suffix ``-dirty`` with uncommitted changes), else ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Sender:
    """One daemon thread that runs submitted calls in order; :meth:`wait` returns their errors."""

    def __init__(self) -> None:
        import queue

        self._queue: queue.Queue[tuple[Any, tuple[Any, ...], dict[str, Any]]] = queue.Queue()
        self._errors: list[Exception] = []
        self._thread: Any = None

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
            self._thread.start()
        self._queue.put((fn, args, kwargs))

    def _run(self) -> None:
        while True:
            fn, args, kwargs = self._queue.get()
            try:
                fn(*args, **kwargs)
            except Exception as err:  # reported by wait()
                self._errors.append(err)
            finally:
                self._queue.task_done()

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def wait(self) -> list[Exception]:
        self._queue.join()
        errors, self._errors = self._errors, []
        return errors


#: Tries of logging a run's dataset input when a concurrent job created the same record first.
DATASET_ATTEMPTS = 3


def _duplicate_record(err: BaseException) -> bool:
    """``err`` is a tracking store's refusal of a record that another writer created first
    (SQLite's, PostgreSQL's or MySQL's unique constraint, directly or as MLflow's message)."""
    text = f"{type(err).__name__}: {err}"
    return any(s in text for s in ("UNIQUE constraint failed", "IntegrityError",
                                   "duplicate key value", "Duplicate entry"))


class RunLogger:
    """One MLflow run inside a pre-created experiment (by id); batched logging."""

    def __init__(self, experiment_file: Path, run_name: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                 run_id: str | None = None, asynchronous: bool | None = None,
                 run_key: str | None = None, pretraining: bool = False):
        """Open run ``run_id``, or create one named ``run_name``, in the experiment of
        ``experiment_file``; ``asynchronous`` (default: for an HTTP tracking URI) makes
        :meth:`log_metrics` return without waiting for the server.

        A ``run_id`` the store no longer has (the store was created again) is the run logged again
        from its folder where there is one (:func:`~geopeft.tracking.recover.resolve_run`), else
        replaced by a new run, said in the log (:attr:`replaced`). With ``run_key`` and no ``run_id``, an
        unfinished run with that key (:data:`RUN_KEY_TAG`, left by an attempt killed before it
        could record its id) is reused (:attr:`reused`) instead of opening a second one.
        ``pretraining``: the run goes to the study's pretraining experiment (the study's own
        with an experiment file written before it had one).

        Raises:
            TrackingError: the store or the experiment is gone (nothing is created), or the
                server does not answer.
        """
        import logging

        from mlflow.entities import Param, RunTag

        info = read_json(experiment_file)
        self.experiment_file = Path(experiment_file)
        self.tracking_uri = info["tracking_uri"]
        self.asynchronous = is_http(self.tracking_uri) if asynchronous is None else asynchronous
        self._sender = _Sender()
        if is_http(self.tracking_uri):
            check_server(self.tracking_uri)
        check_experiment(experiment_file, info)  # before the client: it would create an empty store
        self.experiment_id = info["experiment_id"]
        if pretraining and info.get("pretrain_experiment_id"):
            self.experiment_id = info["pretrain_experiment_id"]
        self.client = _client(self.tracking_uri)
        self.replaced: str | None = None
        self.reused = False
        if run_id is not None and not self._exists(run_id):
            # logged again from its folder when the store was created again (recover_experiment)
            again = resolve_run(self.client, run_id, [str(self.experiment_id)])
            if again != run_id:
                logging.getLogger("geopeft.tracking").info(
                    "MLflow run %s is logged again in %s as run %s", run_id, self.tracking_uri,
                    again)
                run_id = again
        if run_id is not None and not self._exists(run_id):
            logging.getLogger("geopeft.tracking").warning(  # the name from before the split
                "MLflow run %s recorded by an earlier attempt is not in %s (the store was created "
                "again): logging to a new run; training resumes from its saved state", run_id,
                self.tracking_uri)
            self.replaced, run_id = run_id, None
        if run_id is None and run_key is not None:
            run_id = self._unfinished(run_key)
            self.reused = run_id is not None
        if run_id is None:
            run_tags = {"mlflow.runName": run_name or ""}
            if run_key is not None:
                run_tags[RUN_KEY_TAG] = run_key
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
        flat = flatten(params or {})
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _exists(self, run_id: str) -> bool:
        """Whether the store has the run (only "does not exist" counts as no: an unreachable
        server or a locked database is an error, not a reason to open a second run)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return run.info.experiment_id == str(self.experiment_id)

    def _unfinished(self, run_key: str) -> str | None:
        """A run of ``run_key`` left RUNNING with nothing logged: an attempt killed between
        creating it and recording its id (None when there is none). A run that logged metrics
        is another training's history and is never continued by a fresh one."""
        runs = self.client.search_runs(
            [str(self.experiment_id)], f"tags.`{RUN_KEY_TAG}` = '{run_key}' and "
            "attributes.status = 'RUNNING'", order_by=["attributes.start_time DESC"],
            max_results=10)
        for run in runs:
            if not run.data.metrics:
                return run.info.run_id
        return None

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log a dict of metrics in one request (characters MLflow refuses in names, e.g. the
        comma of a class name, become ``_``)."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), ts, step)
                 for k, v in metrics.items()]
        if self.asynchronous:
            self._sender.submit(self.client.log_batch, self.run_id, metrics=batch)
        else:
            self._guard(self.client.log_batch, self.run_id, metrics=batch)

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the MLflow client; when it fails because the store went away during the job
        (deleted: SQLite then reports a read-only database), say that instead."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            why = stale_experiment(self.experiment_file)
            if why is None:
                raise
            raise TrackingError(
                f"{self.experiment_file}: {why} while this job ran (MLflow: "
                f"{str(err).splitlines()[0][:200]}). Rerun snakemake: mlflow_init creates it "
                f"again and the job resumes from its saved training state") from err

    def pending(self) -> int:
        """Metric batches not yet confirmed by the tracking store."""
        return self._sender.pending()

    def flush(self) -> None:
        """Wait for the metrics logged asynchronously; a request that failed after MLflow's
        bounded retries raises :class:`TrackingError`."""
        errors = self._sender.wait()
        if errors:
            raise TrackingError(f"mlflow.tracking_uri {self.tracking_uri}: run {self.run_id}: "
                                f"{len(errors)} metric batch(es) could not be logged: {errors[0]}")

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` was logged in this run (for idempotent logging on resume)."""
        self.flush()
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_once(self, metrics: dict[str, float], step: int, done: set[int]) -> None:
        """Log ``metrics`` at ``step`` unless ``step`` is in ``done`` (steps already logged by an
        earlier attempt of this run); adds ``step`` to ``done``. A resumed run so ends with one
        value per step."""
        if step not in done:
            self.log_metrics(metrics, step)
            done.add(step)

    def set_running(self) -> None:
        """Mark the run as running again (a resumed attempt)."""
        self._guard(self.client.update_run, self.run_id, status="RUNNING")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._guard(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self._guard(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, fingerprint: str, path: Path, context: str,
                    profile: dict[str, Any]) -> None:
        """Record the prepared store a run read (MLflow's dataset input: the runs table's Dataset
        column): ``name`` and ``context`` (``train``, ``test``; named ``<name> · <context>``), the
        store's fingerprint as digest, its path as source and a ``profile`` (samples, label
        fraction, ...)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        # one dataset per split: MLflow keeps a run's first input of a (name, digest) only
        ds = Dataset(name=f"{name} · {context}", digest=fingerprint[:16], source_type="local",
                     source=json.dumps({"uri": Path(path).resolve().as_uri()}),
                     profile=json.dumps({"fingerprint": fingerprint, **profile}))
        inputs = [DatasetInput(ds, [InputTag("mlflow.data.context", context)])]
        # Jobs started together (a job array, two CPU jobs of a study) log the same dataset at
        # the same moment: the store creates its record once and the loser's insert fails on the
        # unique (experiment, name, digest). The record is then there, and logging again links
        # this run to it.
        for attempt in range(DATASET_ATTEMPTS):
            try:
                return self._guard(self.client.log_inputs, self.run_id, datasets=inputs)
            except Exception as err:
                if attempt == DATASET_ATTEMPTS - 1 or not _duplicate_record(err):
                    raise

    def log_dict(self, obj: dict[str, Any], artifact_file: str) -> None:
        """Store a dict (e.g. the resolved config) as a JSON artifact."""
        self._guard(self.client.log_dict, self.run_id, obj, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Wait for pending metrics, then end the run with ``status`` (``FAILED`` if metrics
        were lost)."""
        try:
            self.flush()
        except TrackingError:
            self.client.set_terminated(self.run_id, status="FAILED")
            raise
        self._guard(self.client.set_terminated, self.run_id, status=status)
