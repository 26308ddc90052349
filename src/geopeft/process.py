"""A process as ``/proc`` tells it: its fields, whether it still runs (a recycled PID does not
count), when it started, the Snakemake it runs under; and signalling and waiting for one that
may be gone.

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
#: The Snakemake process a job runs under, as ``"<pid> <start time in clock ticks>"``: set by
#: Snakemake for its jobs when it starts a job server (:func:`geopeft.jobserver.start`) and by a
#: job's process at its start (:func:`note_snakemake`), so that a job whose Snakemake is gone
#: before it looks -- killed during the job server's warm-up -- still knows which one to watch.
SNAKEMAKE_ENV = "GEOPEFT_SNAKEMAKE"


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
    key = process_key(pid)
    return _watch(pid, key.split()[1] if key else None)


def _watch(pid: int, started: str | None) -> Callable[[], bool]:
    def alive() -> bool:
        if started is None:
            return False
        fields = proc_stat(pid)
        return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")

    return alive


def process_key(pid: int) -> str | None:
    """``"<pid> <start time in clock ticks>"``: process ``pid`` and no other that reuses its PID
    later (None: no such process)."""
    fields = proc_stat(pid)
    return f"{pid} {fields[19]}" if fields is not None and len(fields) > 19 else None


def snakemake_ancestor(max_depth: int = 16) -> int | None:
    """The PID of the Snakemake process this one runs under (its nearest ancestor whose command
    line runs ``snakemake``), or None."""
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            return None
        fields = proc_stat(pid)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
        except OSError:
            return None
        if fields is None:
            return None
        if any(Path(a.decode(errors="replace")).name == "snakemake" for a in argv):
            return pid
        pid = int(fields[1])
    return None


def note_snakemake() -> None:
    """At the start of a job's process, before anything waits: name the Snakemake it runs under
    in ``$GEOPEFT_SNAKEMAKE`` (:data:`SNAKEMAKE_ENV`) for the job, wherever it runs (the job
    server's child gets this environment). None found keeps what Snakemake set, if anything."""
    pid = snakemake_ancestor()
    key = process_key(pid) if pid is not None else None
    if key is not None:
        os.environ[SNAKEMAKE_ENV] = key


def noted_snakemake() -> tuple[int, Callable[[], bool]] | None:
    """The Snakemake this job runs under -- the one noted in ``$GEOPEFT_SNAKEMAKE``, else its
    nearest ancestor now -- and a check that it still runs (:func:`watch_process`), or None
    when the job runs under no Snakemake (started by hand)."""
    pid, _, started = os.environ.get(SNAKEMAKE_ENV, "").partition(" ")
    if pid.isdigit() and started:
        return int(pid), _watch(int(pid), started)
    ancestor = snakemake_ancestor()
    return None if ancestor is None else (ancestor, watch_process(ancestor))


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
