"""The job's side of the job server (:mod:`geopeft.jobserver`): a ``geopeft`` process that sends
its job to the server, forwards signals to the child that runs it and exits with its status."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from geopeft import wire
from geopeft.process import (
    START_ENV,
    noted_snakemake,
    process_started,
    signal_process,
    wait_gone,
)

#: The environment variable that names the server's socket for the jobs of a run.
ENV = "GEOPEFT_JOBSERVER"
#: The commands that go through the server (the ones that import torch).
COMMANDS = frozenset({"pretrain", "features", "train", "evaluate"})
#: How long a client waits for the server to take its job (it may still be importing).
REPLY_TIMEOUT_S = 300.0
#: The signals a client forwards to its job.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def identity() -> dict[str, str]:
    """What must match between a client and the server: the interpreter and this package."""
    return {"python": os.path.realpath(sys.executable), "prefix": os.path.realpath(sys.prefix),
            "package": os.path.realpath(__file__)}


def run_remote(command: str, argv: Sequence[str]) -> int | None:
    """Run a ``geopeft`` command in a child of the job server named by ``$GEOPEFT_JOBSERVER``.

    Signals (SIGTERM, SIGINT, SIGHUP) are caught from the start: one that arrives before the
    server names the child is delivered to it as soon as it does (or ends this process with
    128 + n when the job never started), so no job outlives a client that was told to stop. A
    Snakemake that is gone before the job started (killed while the server was still loading)
    stops it the same way, as SIGTERM would.

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
    snakemake = noted_snakemake()
    pending: list[int] = []
    child: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child:
            signal_process(child[0], signum)
        else:
            pending.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        env = dict(os.environ)
        started = process_started()
        if started is not None:
            env[START_ENV] = repr(started)
        try:
            wire.send(sock, {"argv": list(argv), "cwd": os.getcwd(), "env": env, **identity()},
                      fds=(0, 1, 2))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before its request was read (another user): the answer says why
        reply = _reply(sock, snakemake)
    except (OSError, ConnectionError, ValueError) as err:
        reply = {"refused": f"not usable: {err}"}
    if "refused" in reply:
        sock.close()
        if snakemake is not None and not snakemake[1]() and not pending:
            print(f"geopeft {command}: Snakemake (pid {snakemake[0]}) is gone: not running this "
                  "job", file=sys.stderr, flush=True)
            pending.append(signal.SIGTERM)
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



def _reply(sock: socket.socket, snakemake: tuple[int, Callable[[], bool]] | None) -> dict:
    """The server's answer to a request: it names the job's child or refuses (also when
    Snakemake is gone first: the job must not start); at most :data:`REPLY_TIMEOUT_S`."""
    end = time.monotonic() + REPLY_TIMEOUT_S
    while not select.select([sock], [], [], 0.1)[0]:
        if snakemake is not None and not snakemake[1]():
            return {"refused": "has not started the job"}
        if time.monotonic() > end:
            raise TimeoutError(f"no answer within {REPLY_TIMEOUT_S:.0f} s")
    sock.settimeout(max(1.0, end - time.monotonic()))
    reply = wire.recv(sock)
    sock.settimeout(None)
    return reply
