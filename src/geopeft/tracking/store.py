"""The tracking store: a SQLite file or an MLflow server (its health check, ``geopeft
mlflow-server``), and the MLflow client of either."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from geopeft.errors import GeopeftError
from geopeft.layout import RESULTS, TrackingLayout

#: Bounded retries of MLflow's HTTP client: 5 tries with backoff 1, 2, 4, 8 s, 30 s per request.
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
        f"`geopeft mlflow-server --backend-store-uri {TrackingLayout(RESULTS).uri} "
        f"--artifacts-destination {TrackingLayout(RESULTS).artifacts} "
        f"--port {uri.rsplit(':', 1)[-1].strip('/')}`"
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


def metric_key(name: str) -> str:
    """A metric's name as MLflow takes it: characters it refuses (e.g. the comma of a class
    name) become ``_``."""
    import re

    return re.sub(r"[^\w\-. :/]", "_", name)


def _ensure_sqlite_parent(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for a server)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


#: SQLite's names of a file that is no database or a damaged one (extended codes start with
#: them); a locked or busy database is neither.
DAMAGED_ERRORS = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
#: The files SQLite keeps beside a database: they go with it when it is set aside.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def damaged_store(db: Path, timeout: float = 5.0) -> str | None:
    """Why the SQLite file ``db`` is damaged (no database, or ``PRAGMA quick_check`` finds a
    fault), None when it is sound, absent or busy (a writer of another study holding it past
    ``timeout`` seconds: not known to be damaged). Opened read-only: nothing is created or
    changed.

    Raises:
        sqlite3.Error: any other failure (unreadable file, ...).
    """
    import sqlite3

    if not Path(db).is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=timeout)) as con:
            faults = [r[0] for r in con.execute("pragma quick_check(3)")]
    except sqlite3.DatabaseError as err:
        name = str(getattr(err, "sqlite_errorname", ""))
        if name.startswith(DAMAGED_ERRORS):
            return str(err)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return None
        raise
    return None if faults == ["ok"] else "; ".join(faults)


def set_aside(db: Path) -> Path:
    """Move the SQLite file ``db`` (and its journal files) to ``<db>.damaged-<date-time>``,
    never deleting it; returns the new name."""
    import os
    import time

    db = Path(db)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, n = db.with_name(f"{db.name}.damaged-{stamp}"), 1
    while any(backup.with_name(backup.name + s).exists() for s in ("", *SQLITE_SIDECARS)):
        n += 1
        backup = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    # the journals first: a database left behind stays damaged (and is set aside next time),
    # while a journal left behind would be replayed into the new database
    for suffix in SQLITE_SIDECARS:
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, backup.with_name(backup.name + suffix))
    os.replace(db, backup)
    return backup

