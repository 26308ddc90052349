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
- The socket lives in a 0700 folder and the server serves only its own user (``SO_PEERCRED``).
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
import importlib
import logging
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from geopeft import wire
from geopeft.process import START_ENV, process_started, signal_process, wait_gone, watch_process

#: The environment variable that names the server's socket for the jobs of a run.
ENV = "GEOPEFT_JOBSERVER"
#: The commands that go through the server (the ones that import torch).
COMMANDS = frozenset({"pretrain", "train", "evaluate"})
#: Environment for the server: the children set torch's thread count themselves
#: (geopeft.models.runtime), and the BLAS pools must not take every core in each of them.
SERVER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

log = logging.getLogger(__name__)


def _identity() -> dict[str, str]:
    """What must match between a client and the server: the interpreter and this package."""
    return {"python": os.path.realpath(sys.executable), "prefix": os.path.realpath(sys.prefix),
            "package": os.path.realpath(__file__)}



# ----------------------------------------------------------------------------------- client


#: How long a client waits for the server to take its job (it may still be importing).
REPLY_TIMEOUT_S = 300.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_remote(command: str, argv: Sequence[str]) -> int | None:
    """Run a ``geopeft`` command in a child of the job server named by ``$GEOPEFT_JOBSERVER``.

    Signals (SIGTERM, SIGINT, SIGHUP) are caught from the start: one that arrives before the
    server names the child is delivered to it as soon as it does (or ends this process with
    128 + n when the job never started), so no job outlives a client that was told to stop.

    Args:
        command: the sub-command (only :data:`COMMANDS` go through the server).
        argv: the whole command line after ``geopeft``.

    Returns:
        The child's exit status (128 + n when a signal n ended it), or None when the job should
        run in this process instead (no server, another command, the server refused).
    """
    path = os.environ.get(ENV)
    if not path or command not in COMMANDS:
        return None
    pending: list[int] = []
    child: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child:
            signal_process(child[0], signum)
        else:
            pending.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        env = dict(os.environ)
        started = process_started()
        if started is not None:
            env[START_ENV] = repr(started)
        wire.send(sock, {"argv": list(argv), "cwd": os.getcwd(), "env": env, **_identity()},
              fds=(0, 1, 2))
        sock.settimeout(REPLY_TIMEOUT_S)
        reply = wire.recv(sock)
        sock.settimeout(None)
    except (OSError, ConnectionError, ValueError) as err:
        reply = {"refused": f"not usable: {err}"}
    if "refused" in reply:
        sock.close()
        if pending:  # told to stop before anything ran
            return 128 + pending[0]
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"geopeft {command}: job server {path} {reply['refused']}; running in this process",
              file=sys.stderr, flush=True)
        return None
    child.append(int(reply["pid"]))
    for sig in pending:
        signal_process(child[0], sig)
    try:
        status = int(wire.recv(sock)["status"])
    except (OSError, ConnectionError, ValueError) as err:
        # the server is gone: its child must not train on unseen (it saves its state on SIGTERM)
        print(f"geopeft {command}: job server {path} lost the job (pid {child[0]}): {err}; "
              "stopping it", file=sys.stderr, flush=True)
        signal_process(child[0], signal.SIGTERM)
        wait_gone(child[0], 120.0)
        status = 1
    finally:
        sock.close()
    return status



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
    put in a new 0700 folder and named in ``$GEOPEFT_JOBSERVER``, which the jobs inherit.

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
    return Handle(proc, path)


def stop(handle: Handle | None, timeout_s: float = 60.0) -> None:
    """Stop a server from :func:`start` (SIGTERM: it stops its jobs first) and remove its folder."""
    if handle is None:
        return
    if os.environ.get(ENV) == handle.socket:
        del os.environ[ENV]
    if handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout_s)
        except subprocess.TimeoutExpired:  # the server and its jobs share its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait()
    shutil.rmtree(os.path.dirname(handle.socket), ignore_errors=True)


# ----------------------------------------------------------------------------------- server


@dataclass
class _Job:
    conn: socket.socket
    pid: int
    argv: list[str]
    stopped: bool = False

    def stop(self) -> None:
        """SIGTERM the job once (it checkpoints and exits, as on preemption)."""
        if not self.stopped:
            self.stopped = True
            signal_process(self.pid, signal.SIGTERM)


def _child(conn: socket.socket, listener: socket.socket, others: list[socket.socket], req: dict,
           fds: list[int], run: Callable[[list[str]], int]) -> None:
    """In the forked child: become the job's process and never return."""
    code = 1
    try:
        for s in (listener, conn, *others):
            s.close()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ.pop(ENV, None)  # processes this job starts (torchrun workers) start afresh
        tempfile.tempdir = None  # the job's TMPDIR (Snakemake sets one per job), not the server's
        sys.argv = ["geopeft", *req["argv"]]
        random.seed()  # a fresh process would not share its parent's random state
        try:
            import numpy as np

            np.random.seed(int.from_bytes(os.urandom(4), "little"))
        except ImportError:
            pass
        logging.root.handlers.clear()  # the job configures its own logging
        try:
            code = run(list(req["argv"]))
        except SystemExit as err:  # as the interpreter reports it
            if err.code is None or isinstance(err.code, int):
                code = err.code or 0
            else:
                print(err.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:  # noqa: BLE001 - report like an uncaught exception would
            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def serve(path: str, parent: int | None, run: Callable[[list[str]], int],
          warm: Sequence[str] = (), poll_s: float = 0.2) -> int:
    """Serve jobs on the Unix socket ``path`` until SIGTERM, or until ``parent`` is gone.

    Args:
        path: the socket; its folder should be private (0700).
        parent: the Snakemake process: when it is gone and no job runs, the server exits.
        run: the command line's entry point, called in each child with its argv.
        warm: modules to import once before serving (jobs that arrive meanwhile wait).
        poll_s: how often children and the parent are checked.

    Returns:
        0.
    """
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)  # jobs that connect while the modules load wait in the backlog
    t0 = time.perf_counter()
    for name in warm:
        try:
            importlib.import_module(name)
        except ImportError as err:
            log.warning("not preloaded: %s (%s)", name, err)
    log.info("preloaded %d modules in %.1f s; serving on %s", len(warm), time.perf_counter() - t0, path)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    jobs: dict[int, _Job] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    me = _identity()
    uid = os.getuid()
    listening = True
    parent_alive = watch_process(parent) if parent is not None else None
    try:
        while True:
            orphaned = parent_alive is not None and not parent_alive()
            if stopping or orphaned:  # Snakemake stopped us, or is gone (killed): stop the jobs
                for job in jobs.values():
                    job.stop()
                if listening:  # no new jobs: a client that connects now runs in its own process
                    sel.unregister(listener)
                    listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    listening = False
            for key, _ in sel.select(timeout=poll_s):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    _accept(conn, sel, jobs, listener, me, uid, run)
                else:
                    # a client's connection: it sends nothing after its request, so this is its end
                    job = key.data
                    sel.unregister(job.conn)
                    log.warning("client of job %d (%s) is gone: stopping the job", job.pid,
                                " ".join(job.argv[:1]))
                    job.stop()
            _reap(jobs, sel)
            if not jobs and (stopping or orphaned):
                return 0
    finally:
        for job in jobs.values():  # left by an error in this loop: never unattended
            job.stop()
        sel.close()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # the private folder of start(), once empty


def _accept(conn: socket.socket, sel: selectors.BaseSelector, jobs: dict[int, _Job],
            listener: socket.socket, me: dict[str, str], uid: int,
            run: Callable[[list[str]], int]) -> None:
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer_uid, _ = struct.unpack("3i", creds)
        conn.settimeout(30)
        req = wire.recv(conn, fds)
        conn.settimeout(None)
        refused = None
        if peer_uid != uid:
            refused = f"client uid {peer_uid} is not the server's {uid}"
        elif {k: req.get(k) for k in me} != me:
            refused = (f"the client runs {req.get('python')} with {req.get('package')}, "
                       f"the server {me['python']} with {me['package']}")
        elif len(fds) < 3:
            refused = "the client sent no standard streams"
        else:
            import threading

            if threading.active_count() > 1:
                refused = "the server has threads: forking it is unsafe"
        if refused:
            wire.send(conn, {"refused": refused})
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        others = [j.conn for j in jobs.values()]
        # a signal the client forwards at once must find the job's own dispositions, not the
        # server's handlers: blocked across the fork, released in the child once they are reset
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            raise
        if pid == 0:
            _child(conn, listener, others, req, fds, run)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        job = _Job(conn, pid, list(req["argv"]))
        jobs[pid] = job  # tracked before its client hears of it: a lost client stops it
        sel.register(conn, selectors.EVENT_READ, job)
        log.info("job %d: geopeft %s", pid, " ".join(req["argv"][:1]))
        try:
            wire.send(conn, {"pid": pid})
        except OSError:
            log.warning("client of job %d is gone before it started: stopping the job", pid)
            job.stop()
    except (OSError, ConnectionError, ValueError, KeyError) as err:
        log.warning("bad request: %s", err)
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _reap(jobs: dict[int, _Job], sel: selectors.BaseSelector) -> None:
    while jobs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job = jobs.pop(pid, None)
        if job is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        log.info("job %d ended with status %d", pid, code)
        try:
            sel.unregister(job.conn)
        except (KeyError, ValueError):
            pass
        try:
            wire.send(job.conn, {"status": code})
        except OSError:
            pass
        job.conn.close()
