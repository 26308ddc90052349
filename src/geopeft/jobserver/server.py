"""The job server's process (:mod:`geopeft.jobserver`): it admits its user's connections, reads
their requests and forks one child per job, which becomes the job's ``geopeft`` process."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from geopeft import wire
from geopeft.jobserver.client import ENV, FORWARDED, identity
from geopeft.process import signal_process, watch_process

log = logging.getLogger("geopeft.jobserver")  # the server's log names the package

# ----------------------------------------------------------------------------------- server

#: How long an accepted connection may take to send its request (a client sends it at once):
#: a silent one is closed then; other clients are served meanwhile.
REQUEST_TIMEOUT_S = 5.0


@dataclass
class _Request:
    """A connection whose request is still arriving."""

    conn: socket.socket
    deadline: float
    reader: wire.Reader = field(default_factory=wire.Reader)

    def drop(self, sel: selectors.BaseSelector, why: str) -> None:
        """Close the connection unanswered (its client runs the job in its own process)."""
        log.warning("request dropped: %s", why)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(self.conn)
        self.conn.close()
        for fd in self.reader.fds:
            os.close(fd)


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
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
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
          warm: Sequence[str] = (), poll_s: float = 0.2,
          request_timeout_s: float = REQUEST_TIMEOUT_S) -> int:
    """Serve jobs on the Unix socket ``path`` until SIGTERM, or until ``parent`` is gone.

    Args:
        path: the socket; its folder should be private (0700).
        parent: the Snakemake process: when it is gone and no job runs, the server exits.
        run: the command line's entry point, called in each child with its argv.
        warm: modules to import once before serving (jobs that arrive meanwhile wait).
        poll_s: how often children and the parent are checked.
        request_timeout_s: how long a connection may take to send its request.

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
    me = identity()
    uid = os.getuid()
    listening = True
    parent_alive = watch_process(parent) if parent is not None else None
    try:
        while True:
            orphaned = parent_alive is not None and not parent_alive()
            if stopping or orphaned:  # Snakemake stopped us, or is gone (killed): stop the jobs
                for job in jobs.values():
                    job.stop()
                for req in _requests(sel):
                    req.drop(sel, "the server is stopping")
                if listening:  # no new jobs: a client that connects now runs in its own process
                    sel.unregister(listener)
                    listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    listening = False
            for key, _ in sel.select(timeout=poll_s):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    _admit(conn, sel, uid, time.monotonic() + request_timeout_s)
                elif isinstance(key.data, _Request):
                    _read(key.data, sel, jobs, listener, me, run)
                else:
                    # a client's connection: it sends nothing after its request, so this is its end
                    job = key.data
                    sel.unregister(job.conn)
                    log.warning("client of job %d (%s) is gone: stopping the job", job.pid,
                                " ".join(job.argv[:1]))
                    job.stop()
            for req in _requests(sel):
                if time.monotonic() > req.deadline:
                    req.drop(sel, f"no request within {request_timeout_s:g} s")
            _reap(jobs, sel)
            if not jobs and (stopping or orphaned):
                return 0
    finally:
        for job in jobs.values():  # left by an error in this loop: never unattended
            job.stop()
        for req in _requests(sel):
            req.drop(sel, "the server is stopping")
        sel.close()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # the private folder of start(), once empty


def _requests(sel: selectors.BaseSelector) -> list[_Request]:
    return [key.data for key in list(sel.get_map().values()) if isinstance(key.data, _Request)]


def _peer_refusal(conn: socket.socket, uid: int) -> str | None:
    """Why the peer of ``conn`` is refused (another user than the server's ``uid``), or None."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, peer_uid, _ = struct.unpack("3i", creds)
    return None if peer_uid == uid else f"client uid {peer_uid} is not the server's {uid}"


def _admit(conn: socket.socket, sel: selectors.BaseSelector, uid: int, deadline: float) -> None:
    """A new connection: refused at once, nothing read, unless its peer is the server's user;
    else its request is read as it arrives (:func:`_read`), until ``deadline``."""
    conn.setblocking(False)
    try:
        refused = _peer_refusal(conn, uid)
        if refused:
            log.warning("refused a connection: %s", refused)
            wire.send(conn, {"refused": refused})
    except OSError as err:
        refused = str(err)
    if refused:
        conn.close()
        return
    sel.register(conn, selectors.EVENT_READ, _Request(conn, deadline))


def _read(req: _Request, sel: selectors.BaseSelector, jobs: dict[int, _Job],
          listener: socket.socket, me: dict[str, str], run: Callable[[list[str]], int]) -> None:
    """Read what has arrived of a request; once it is whole, start its job."""
    try:
        msg = req.reader.feed(req.conn)
    except (OSError, ConnectionError, ValueError) as err:
        req.drop(sel, str(err))
        return
    if msg is not None:
        sel.unregister(req.conn)
        req.conn.setblocking(True)
        _accept(req.conn, msg, req.reader.fds, sel, jobs, listener, me, run)


def _accept(conn: socket.socket, req: dict, fds: list[int], sel: selectors.BaseSelector,
            jobs: dict[int, _Job], listener: socket.socket, me: dict[str, str],
            run: Callable[[list[str]], int]) -> None:
    try:
        refused = None
        if {k: req.get(k) for k in me} != me:
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
        others = [k.fileobj for k in sel.get_map().values() if k.fileobj is not listener]
        # a signal the client forwards at once must find the job's own dispositions, not the
        # server's handlers: blocked across the fork, released in the child once they are reset
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            raise
        if pid == 0:
            _child(conn, listener, others, req, fds, run)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
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
