"""A warm process that forks the training jobs of a local Snakemake run.

Every ``pretrain``, ``train`` and ``evaluate`` job of the default study spends about 10 s importing
torch, timm, peft, MLflow and zarr before its first step, longer than many of its jobs train. On a
local run the workflow starts one job server (``geopeft jobserver``, from ``onstart`` in
``workflow/rules/common.smk``): it imports those modules once, then forks one child per job. The
job's own ``geopeft`` process stays the Snakemake job (a client): it sends its command line,
working folder, environment and standard streams (the log file) to the server over a Unix socket
in a private folder, forwards SIGTERM, SIGINT and SIGHUP to the child and exits with the child's
status. The child runs the same ``geopeft`` code a fresh process would, so results are identical
(a test compares them bitwise).

Safety:

- The server never runs torch itself (no OpenMP pool, no CUDA context before the fork) and forks
  only while it has no Python thread besides its main one; otherwise it refuses and the client
  runs the job in its own process, as it does when the server is unreachable or is another
  Python or another copy of geopeft.
- The socket lives in a 0700 folder and the server serves only its own user (``SO_PEERCRED``,
  checked before a byte of the request is read). A request is read as it arrives, bounded in size
  (:data:`geopeft.wire.MAX_MESSAGE_BYTES`) and time (:data:`REQUEST_TIMEOUT_S`): a silent or
  oversized one is dropped and stalls no other client.
- A client that dies (SIGKILL of Snakemake and its job) closes its connection: the server sends
  SIGTERM to that child, which stops as a preempted job does (its state kept for the rerun).
- When Snakemake (``--parent``) is gone -- killed, so its jobs would train on as orphans and
  race a rerun -- and on SIGTERM (``onsuccess``/``onerror``), the server stops its children
  (SIGTERM: they save their state) and exits once they have.

The job's environment is the client's, applied before the job runs: Snakemake's per-job
variables (thread counts, ``TMPDIR``) reach it; torch's thread count is set by the job itself.
Variables a library reads once at import (e.g. ``HF_HOME``) come from the server's environment,
which is Snakemake's, the one every job inherits.

Opt out with ``jobserver: false`` in the config (every job a fresh process); SLURM and
conda/apptainer runs never use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from geopeft.jobserver.client import COMMANDS, ENV, REPLY_TIMEOUT_S, run_remote
from geopeft.jobserver.server import REQUEST_TIMEOUT_S, serve
from geopeft.process import SNAKEMAKE_ENV, process_key

__all__ = ["COMMANDS", "ENV", "REPLY_TIMEOUT_S", "REQUEST_TIMEOUT_S", "SERVER_ENV", "Handle",
           "run_remote", "serve", "start", "stop"]

#: Environment for the server: the children set torch's thread count themselves
#: (geopeft.models.runtime), and the BLAS pools must not take every core in each of them.
SERVER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------- start and stop


@dataclass
class Handle:
    """A started job server: its process and the socket its jobs use."""

    process: subprocess.Popen
    socket: str


def start(log_path: str | os.PathLike, parent: int | None = None) -> Handle | None:
    """Start ``geopeft jobserver`` for the jobs of this process (Snakemake's ``onstart``).

    The server runs the ``geopeft`` found on ``PATH`` -- the one the jobs' shells run -- in a
    session of its own (Ctrl-C reaches the jobs through their clients, not twice). Its socket is
    put in a new 0700 folder and named in ``$GEOPEFT_JOBSERVER``, which the jobs inherit, with
    ``parent`` in ``$GEOPEFT_SNAKEMAKE`` (a job that starts after it is gone stops).

    Args:
        log_path: the server's log file (its folder is created).
        parent: the process whose end stops the server (default: this one).

    Returns:
        The handle for :func:`stop`, or None when no ``geopeft`` executable is on ``PATH``.
    """
    exe = shutil.which("geopeft")
    if exe is None:
        return None
    folder = tempfile.mkdtemp(prefix="geopeft-jobserver-")  # 0700
    path = os.path.join(folder, "sock")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [exe, "jobserver", "--socket", path, "--parent", str(parent or os.getpid())],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV}, start_new_session=True)
    end = time.monotonic() + 30  # bound before the imports: jobs never find it missing
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    os.environ[ENV] = path
    key = process_key(parent or os.getpid())
    if key is not None:
        os.environ[SNAKEMAKE_ENV] = key
    return Handle(proc, path)


def stop(handle: Handle | None, timeout_s: float = 60.0) -> None:
    """Stop a server from :func:`start` (SIGTERM: it stops its jobs first) and remove its folder."""
    if handle is None:
        return
    if os.environ.get(ENV) == handle.socket:
        del os.environ[ENV]
        os.environ.pop(SNAKEMAKE_ENV, None)
    if handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout_s)
        except subprocess.TimeoutExpired:  # the server and its jobs share its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait()
    shutil.rmtree(os.path.dirname(handle.socket), ignore_errors=True)
