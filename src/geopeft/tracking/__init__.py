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

The modules: :mod:`~geopeft.tracking.store` (the SQLite file or server, the client),
:mod:`~geopeft.tracking.experiment` (the study's experiments, their view and staleness),
:mod:`~geopeft.tracking.recover` (a store created again: a damaged one set aside, the runs logged
again from their folders), :mod:`~geopeft.tracking.runs` (:class:`RunLogger`) and
:mod:`~geopeft.tracking.download` (a run's model). Every public name is importable from ``geopeft.tracking``.
"""

from __future__ import annotations

from geopeft.tracking.download import download_model, global_tracking_uri
from geopeft.tracking.experiment import (
    NOTE_TAG,
    PRETRAIN_SUFFIX,
    VIEW_KEY,
    VIEW_METRICS,
    VIEW_PARAMS,
    check_experiment,
    create_experiments,
    describe_experiment,
    init_experiment,
    set_aside_damaged,
    stale_experiment,
    store_name,
    study_view,
    view_url,
)
from geopeft.tracking.recover import RELOGGED_TAG, recover_experiment, resolve_run
from geopeft.tracking.runs import (
    DATASET_ATTEMPTS,
    MAX_PARAM_LEN,
    MAX_PARAMS_PER_BATCH,
    RUN_KEY_TAG,
    RunLogger,
    flatten,
    git_commit,
)
from geopeft.tracking.store import (
    HTTP_RETRY_ENV,
    TrackingError,
    check_server,
    damaged_store,
    is_http,
    serve,
    set_aside,
    sqlite_path,
)

__all__ = [
    "DATASET_ATTEMPTS", "HTTP_RETRY_ENV", "MAX_PARAMS_PER_BATCH", "MAX_PARAM_LEN", "NOTE_TAG",
    "PRETRAIN_SUFFIX", "RELOGGED_TAG", "RUN_KEY_TAG", "VIEW_KEY", "VIEW_METRICS", "VIEW_PARAMS",
    "RunLogger", "TrackingError", "check_experiment", "check_server", "create_experiments",
    "damaged_store", "describe_experiment", "download_model", "flatten", "git_commit",
    "global_tracking_uri", "init_experiment", "is_http", "recover_experiment", "resolve_run",
    "serve", "set_aside", "set_aside_damaged", "sqlite_path", "stale_experiment", "store_name",
    "study_view", "view_url",
]
