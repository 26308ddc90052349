"""A process as ``/proc`` tells it: its fields, whether it still runs (a recycled PID does not
count), when it started; and signalling and waiting for one that may be gone.

Used by training jobs (their start-up time, :func:`geopeft.train.resume.stop_when_snakemake_is_gone`)
and by the job server (:mod:`geopeft.jobserver`), which must stay a module only the command line
imports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

#: Set in a forked job: when its client process started (epoch seconds).
START_ENV = "GEOPEFT_PROCESS_START"


def proc_stat(pid: int | str = "self") -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (0: state, 1: parent PID,
    19: start time in clock ticks since boot), or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def watch_process(pid: int) -> Callable[[], bool]:
    """A check that process ``pid`` still runs: False once it has exited (a zombie included), or
    once its PID belongs to another process (its start time in ``/proc`` differs from now's).

    The job server watches Snakemake with it, and so does a job that runs without the server
    (:func:`geopeft.train.resume.stop_when_snakemake_is_gone`): a recycled PID fools neither.
    """
    first = proc_stat(pid)
    started = first[19] if first is not None and len(first) > 19 else None

    def alive() -> bool:
        if started is None:
            return False
        fields = proc_stat(pid)
        return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")

    return alive


def process_started() -> float | None:
    """When this job's process started (epoch seconds), for the start-up time a job reports.

    A job the server forked counts from its client's start (``$GEOPEFT_PROCESS_START``), any
    other process from the kernel's record (``/proc``); None where neither is known.
    """
    if START_ENV in os.environ:
        return float(os.environ[START_ENV])
    fields = proc_stat()
    if fields is None:
        return None
    try:
        ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def seconds_since_start() -> float | None:
    """Seconds since this job's process started (:func:`process_started`), or None."""
    started = process_started()
    return None if started is None else time.time() - started


def wait_gone(pid: int, timeout_s: float) -> None:
    """Wait until process ``pid`` has exited (gone, or a zombie), at most ``timeout_s`` seconds."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        fields = proc_stat(pid)
        if fields is None or fields[0] == "Z":
            return
        time.sleep(0.1)


def signal_process(pid: int, sig: int) -> None:
    """Send signal ``sig`` to process ``pid``; nothing when there is no such process."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
