"""MLflow tracking with an experiment created once, before any job starts.

MLflow 3 refuses the plain file store; the default tracking URI is a SQLite file under
``results/``. Two traps shape this module:

* jobs that create a fresh SQLite DB at the same time can break it for good, and
* processes racing to create one experiment silently log into "Default".

So :func:`init_experiment` runs once, in a local Snakemake rule, creates the DB and the
experiment and writes its id to a JSON file; every job opens its run **by that id**
(:class:`RunLogger`). Metrics go out in batches (one ``log_batch`` per epoch).

**Server mode** (``mlflow.tracking_uri: http://host:port``): :func:`serve` (``geopeft
mlflow-server``) runs ``mlflow server`` with a SQLite or PostgreSQL backend and an artifact
root, bound to 127.0.0.1 unless told otherwise, with job execution off (a few processes); jobs
log over HTTP and upload artifacts through the server. A job checks the server before it starts
(:func:`check_server`: a clear error when it is down) and MLflow's HTTP retries are bounded
(:data:`HTTP_RETRY_ENV`) so a transient failure mid-run is retried, a dead server fails the job.
Over HTTP, metrics are logged **asynchronously** by one background thread per job (one request
in flight, as with synchronous logging, so dozens of jobs do not exhaust the server's database
connections): a request costs tens of milliseconds, which the training loop would otherwise wait
for every epoch. Pending requests are awaited before the run ends, on SIGTERM (the run ends
``KILLED``) and before reading metrics back; a batch lost to a SIGKILL is logged again on resume
from the checkpointed history. (MLflow's own async logging is not used: ending a run with it
waits up to a second for its queue thread.)
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geopeft.errors import GeopeftError
from geopeft.io import read_json, write_json

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LEN = 6000


# bounded retries of MLflow's HTTP client: 5 tries with backoff 1, 2, 4, 8 s, 30 s per request
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(GeopeftError, RuntimeError):
    """The MLflow tracking server cannot be reached."""


def is_http(uri: str) -> bool:
    """Whether a tracking URI is an MLflow server (HTTP), not a local store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, attempts: int = 3, timeout: float = 5.0) -> None:
    """Fail fast, with a message saying how to start it, when the tracking server is down."""
    import time
    import urllib.error
    import urllib.request

    last: Exception | None = None
    for i in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(min(2**i, 4))
    raise TrackingError(
        f"mlflow.tracking_uri: the MLflow server at {uri} does not answer ({last}); start it with "
        f"`geopeft mlflow-server --backend-store-uri sqlite:///results/mlflow.db "
        f"--artifacts-destination results/mlartifacts --port {uri.rsplit(':', 1)[-1].strip('/')}`"
    )


def serve(backend_store_uri: str, artifacts_destination: Path, host: str = "127.0.0.1",
          port: int = 5000, workers: int = 2) -> int:
    """Run ``mlflow server`` in the foreground (until stopped); returns its exit code."""
    import os
    import subprocess
    import sys

    _ensure_sqlite_parent(backend_store_uri)
    Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", Path(artifacts_destination).resolve().as_uri(),
           "--host", host, "--port", str(port), "--workers", str(workers)]
    return subprocess.call(cmd, env=env)


def _client(tracking_uri: str) -> Any:
    import os

    from mlflow.tracking import MlflowClient

    if is_http(tracking_uri):
        for k, v in HTTP_RETRY_ENV.items():
            os.environ.setdefault(k, v)

    return MlflowClient(tracking_uri=tracking_uri)


def _ensure_sqlite_parent(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


#: The study's pretraining run goes to an experiment of its own, named after the study's.
PRETRAIN_SUFFIX = " (pretraining)"
#: The key of the study's shared view of its runs table (``?viewStateShareKey=geopeft``).
VIEW_KEY = "geopeft"
#: What a run's table shows in the study view, besides the primary test metric(s).
VIEW_PARAMS = ("strategy", "label_fraction", "seed")
VIEW_METRICS = ("trainable_params", "wall_time_s")


def view_url(experiment_id: str) -> str:
    """The path (after the UI's address) of a study's runs table with its columns."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def study_view(metrics: list[str], time_series: bool = False) -> dict[str, Any]:
    """The shared view state of a study's runs table (MLflow's ``mlflow.sharedViewState.<key>``
    experiment tag): strategy, label fraction, seed (and sequence length), the primary test
    metric(s), trainable parameters and wall time as columns, best first."""
    params = (*VIEW_PARAMS, "sequence_length") if time_series else VIEW_PARAMS
    columns = ([f"params.`{p}`" for p in params]
               + [f"metrics.`{m}`" for m in (*metrics, *VIEW_METRICS)])
    return {"selectedColumns": columns, "orderByKey": f"metrics.`{metrics[0]}`",
            "orderByAsc": False} if metrics else {"selectedColumns": columns}


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
    and description, and write ``{experiment_id, ...}`` to ``out``.

    Args:
        tracking_uri: SQLite file or MLflow server.
        name: the experiment.
        artifact_root: where runs' artifacts go.
        out: the experiment file the jobs read (ids, URI).
        metrics: the study's primary test metrics (``test_overall_accuracy``, ...): the view's
            columns and order.
        time_series: whether runs differ by sequence length (a column of the view).
    """
    import json

    if is_http(tracking_uri):
        check_server(tracking_uri)
    _ensure_sqlite_parent(tracking_uri)
    client = _client(tracking_uri)
    exp_id = _create(client, tracking_uri, name, artifact_root)
    pre_id = _create(client, tracking_uri, name + PRETRAIN_SUFFIX, artifact_root)
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                              json.dumps(study_view(list(metrics or []), time_series)))
    if not client.get_experiment(exp_id).tags.get(NOTE_TAG):
        client.set_experiment_tag(exp_id, NOTE_TAG, _description(name, exp_id, pre_id, None))
    client.set_experiment_tag(pre_id, NOTE_TAG, (
        f"The pretraining run of study **{name}**: the embedded backbone trained on the "
        f"synthetic source set, kept apart from the study's runs, which start from it "
        f"(their run.json names this run)."))
    info = {"experiment_id": exp_id, "experiment": name, "tracking_uri": tracking_uri,
            "pretrain_experiment_id": pre_id, "pretrain_experiment": name + PRETRAIN_SUFFIX}
    write_json(out, info)
    return info


def store_name(info: Any) -> str:
    """How MLflow's Dataset column names a prepared store: dataset and bands."""
    return f"{info.dataset} {' '.join(info.bands)}"


#: The tag MLflow shows as an experiment's (or run's) description.
NOTE_TAG = "mlflow.note.content"


def _description(name: str, exp_id: str, pre_id: str | None, summary: str | None) -> str:
    lines = [f"**Study {name}** · [open the study view: strategy, label fraction, seed, test "
             f"score, trainable parameters, time]({view_url(exp_id)})", ""]
    lines.append(summary or "The summary table appears here once the study's runs.csv is made.")
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
    Rebuild with ``geopeft.models.saved.load_model(model_dir, pretrain_dir=pretrain_dir)``.

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
        # a run's "model" is also its logged MLflow model, which MLflow looks up in the global
        # tracking store: point that at this one for the download
        with global_tracking_uri(tracking_uri):
            model_dir = Path(client.download_artifacts(run_id, "model", str(dest)))
        record = json.loads((model_dir / "run.json").read_text())
    except Exception as err:
        raise TrackingError(f"{tracking_uri}: run {run_id} has no readable model artifacts "
                            f"({type(err).__name__}: {err})") from None
    pre = record.get("pretrain_run_id")
    if not pre:
        return model_dir, None
    try:
        pretrain_dir = Path(client.download_artifacts(pre, "backbone", str(dest)))
    except Exception as err:
        raise TrackingError(f"{tracking_uri}: run {run_id} was trained on the backbone of "
                            f"pretrain run {pre}, which has no 'backbone' artifacts "
                            f"({type(err).__name__}: {err})") from None
    return model_dir, pretrain_dir


#: The tag that names a run's study row and job spec: an interrupted attempt's run is found by
#: it and reused, so a row has one run whatever its attempts.
RUN_KEY_TAG = "geopeft.run_key"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for a server)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def stale_experiment(experiment_file: Path, info: dict | None = None) -> str | None:
    """Why the experiment file no longer describes a usable store, or None when it does.

    Reads the SQLite store directly (no MLflow import, nothing created): the database file is
    gone, or holds no experiment with the recorded id and name (deleted and initialised again).
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
            row = con.execute("select name from experiments where experiment_id = ?",
                              (int(info["experiment_id"]),)).fetchone()
    except sqlite3.Error as err:
        return f"the MLflow store {db} cannot be read ({err})"
    if row is None or row[0] != info["experiment"]:
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

        A ``run_id`` the store no longer has (the store was created again) is replaced by a new
        run, said in the log (:attr:`replaced`). With ``run_key`` and no ``run_id``, an
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
            logging.getLogger(__name__).warning(
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
        import re
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(re.sub(r"[^\w\-. :/]", "_", k), float(v), ts, step)
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
