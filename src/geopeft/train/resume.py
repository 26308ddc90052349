"""The resumable state of a run in training (not its saved model, :mod:`geopeft.models.saved`):
preemption-safe, periodic, atomic, verified checkpoints and SIGTERM handling.

A run's state folder (``results/<study>/runs/<run>/state/``, beside the final ``model/`` folder
so that Snakemake's clean-up of a failed job's outputs leaves it alone) holds
``step-<n>.pt`` files with everything needed to continue bit for bit: trainable parameters,
optimizer and scheduler state, the RNG states (python, numpy, torch, the data-order generator),
epoch, position in the epoch and its sample order, running sums, history and the MLflow run id.

Each file is written under a temporary name, fsynced and renamed; a ``step-<n>.json`` sidecar
written after it records its sha256. :meth:`Checkpointer.latest` loads the newest state whose
checksum matches and falls back to the previous one when the newest is corrupt or partial (a
kill mid-write); it keeps the last ``keep`` states.

Beside the states, ``clock.json`` records the run's wall time as it passes (every
``clock_every_s``, at the end of a step; :meth:`Checkpointer.record_clock`), so that an attempt
killed with SIGKILL between two states still counts in the run's ``wall_time_s`` up to its last
record; and ``failed.json`` records a training that diverged (:func:`record_failure`), so that
Snakemake's retry of the same spec can stop at once with the same error instead of training into
it again (:func:`known_failure`).

SLURM sends SIGTERM before killing a preempted or timed-out job: :func:`stop_requested` turns
it into a flag the training loop checks after every step; the loop then writes a final state and
raises :class:`Preempted`, and the job exits non-zero so Snakemake retries it (or SLURM requeues
it), and the restarted job resumes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from geopeft.errors import GeopeftError
from geopeft.io import read_json, write_json
from geopeft.process import noted_snakemake

log = logging.getLogger(__name__)
_STEP = re.compile(r"^step-(\d{8})\.pt$")


class Preempted(RuntimeError):
    """Training stopped on SIGTERM after writing a checkpoint; rerun the job to resume."""


class _StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.installed = False

    def install(self) -> None:
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
        self.installed = True


_STOP = _StopFlag()


def stop_when_orphaned(exit_code: int, grace_s: float = 30.0, poll_s: float = 0.1) -> None:
    """Make a torchrun worker stop when its launcher is gone.

    torchrun starts its workers in sessions of their own, so a launcher killed with its process
    group (SIGKILL, a cancelled local job) would leave them training on as orphans, racing a
    retried job. A daemon thread notices the parent change, requests a clean stop as SIGTERM
    does (every rank stops after the same step, rank 0 saves the state) and ends the process
    with ``exit_code`` after ``grace_s`` if it is still alive (a peer rank died mid-step).
    """
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(poll_s)
        log.warning("the torchrun launcher (pid %d) is gone: stopping after this step", ppid)
        _STOP.event.set()
        time.sleep(grace_s)
        os._exit(exit_code)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


class RunLocked(GeopeftError, RuntimeError):
    """Another trainer holds the run's lock: two trainers must never train one run at once."""


_LOCKS: list[Any] = []


def lock_run(state_dir: Path) -> Path:
    """Take the run's exclusive lock for this process's life, or fail naming the holder.

    The lock is an ``flock`` on ``.<state>.lock`` next to the state folder (which a finishing
    trainer removes), so the OS releases it when the holder dies, however it dies; the holder
    writes its PID in it.

    Returns:
        The lock file.

    Raises:
        RunLocked: another process holds it (its PID is in the message).
    """
    import fcntl

    state_dir = Path(state_dir)
    path = state_dir.parent / f".{state_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunLocked(f"{state_dir}: another trainer (pid {holder}) is training this run (lock "
                        f"{path}); stop it or let it finish, then rerun") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _LOCKS.append(fh)
    return path


def stop_when_snakemake_is_gone(poll_s: float = 1.0) -> int | None:
    """Stop this job (SIGTERM to itself: a trainer saves its state and exits 75) when the
    Snakemake process it runs under is gone, e.g. killed with SIGKILL, which leaves its jobs
    running as orphans that would race the rerun. Returns the watched PID (None: none found).

    The Snakemake is the one the job noted at its start (:func:`geopeft.process.noted_snakemake`),
    so a job whose Snakemake was killed before it got here (while it waited for the job server)
    still finds it.

    Raises:
        Preempted: that Snakemake is already gone: nothing is trained (a rerun resumes).
    """
    noted = noted_snakemake()
    if noted is None:
        return None
    target, alive = noted  # the same process, not a new one with a recycled PID
    if not alive():
        raise Preempted(f"Snakemake (pid {target}) that started this job is gone: not training; "
                        "rerun to resume")

    def watch() -> None:
        while alive():
            time.sleep(poll_s)
        log.warning("Snakemake (pid %d) is gone: stopping this job", target)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="snakemake-watch", daemon=True).start()
    return target


def install_sigterm_handler() -> None:
    """Make SIGTERM request a clean stop (checked by the training loop) instead of killing."""
    _STOP.install()


def stop_requested() -> bool:
    """Whether SIGTERM (or a lost launcher) asked training to stop after this step."""
    return _STOP.event.is_set()


def rng_state() -> dict[str, Any]:
    """The states of python's, numpy's and torch's (and CUDA's) global generators."""
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`."""
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


CLOCK = "clock.json"
"""The run's wall time so far and its attempts, in the state folder (:meth:`Checkpointer.clock`)."""
FAILED = "failed.json"
"""The record of a diverged training, in the state folder (:func:`record_failure`)."""


class Checkpointer:
    """Writes and finds training states in ``directory``.

    Args:
        directory: the run's state folder (created on first save).
        every_steps: save every this many optimisation steps (0: only by time, at epoch ends and
            on SIGTERM).
        every_minutes: save when this much time passed since the last save (0: never by time).
        keep: how many states to keep (the previous one is the fallback for a corrupt newest).
        clock_every_s: record the run's wall time (:meth:`record_clock`) at most this often; an
            attempt killed between two states loses at most this, plus one step, of it.
        fingerprint: the job spec's fingerprint, written with each state and clock record: a
            state saved for other settings (a rerun after the study changed: another lr, more
            epochs) is never resumed, it is removed with a warning and training starts over.
    """

    def __init__(self, directory: Path, every_steps: int = 0, every_minutes: float = 10.0,
                 keep: int = 2, clock_every_s: float = 10.0, fingerprint: str | None = None):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.every_steps = int(every_steps)
        self.every_minutes = float(every_minutes)
        self.keep = max(1, int(keep))
        self.clock_every_s = float(clock_every_s)
        self._last = time.monotonic()
        self._clock_last = time.monotonic()

    def record_clock(self, wall_time_s: float, attempts: int) -> None:
        """Record the run's wall time and attempts so far (atomically, in ``clock.json``) when
        ``clock_every_s`` passed since the last record; cheap to call after every step."""
        now = time.monotonic()
        if now - self._clock_last < self.clock_every_s:
            return
        write_json(self.directory / CLOCK, {"wall_time_s": wall_time_s, "attempts": attempts,
                                            "spec": self.fingerprint})
        self._clock_last = now

    def clock(self) -> dict[str, Any] | None:
        """The last :meth:`record_clock` of the run's attempts (None: none, or unreadable)."""
        path = self.directory / CLOCK
        try:
            rec = read_json(path)
            if not self._same_spec(rec):
                return None
            return {"wall_time_s": float(rec["wall_time_s"]), "attempts": int(rec["attempts"])}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: not a usable clock record (%s); ignored", path, err)
            return None

    def _same_spec(self, record: dict[str, Any]) -> bool:
        """Whether a state's or clock's record was written for this job's settings (a record
        or a job without a fingerprint, as before they were written, counts as the same)."""
        theirs = record.get("spec")
        return theirs is None or self.fingerprint is None or theirs == self.fingerprint

    def last_step(self) -> int | None:
        """The step of the newest state file (None: no state saved yet)."""
        states = self.states()
        return int(_STEP.match(states[-1].name)[1]) if states else None

    def due(self, step: int) -> bool:
        """Whether the state after optimisation step ``step`` (1-based) should be saved."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and time.monotonic() - self._last >= 60 * self.every_minutes

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as ``step-<step>.pt`` atomically, then its checksum sidecar."""
        import hashlib

        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step-{step:08d}.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        write_json(path.with_suffix(".json"), {"step": step, "sha256": hashlib.sha256(data).hexdigest(),
                                               "bytes": len(data), "time": time.time(),
                                               "spec": self.fingerprint})
        self._last = time.monotonic()
        for old in self.states()[:-self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def states(self) -> list[Path]:
        """State files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if _STEP.match(p.name))

    def latest(self) -> dict[str, Any] | None:
        """The newest state that verifies, or None; corrupt or partial states are skipped."""
        import hashlib

        import torch

        for path in reversed(self.states()):
            meta_path = path.with_suffix(".json")
            try:
                meta = read_json(meta_path)
                if not self._same_spec(meta):
                    log.warning("%s: saved for other settings (spec %s, this job's %s): not "
                                "resumed, removed; training starts over", path, meta.get("spec"),
                                self.fingerprint)
                    path.unlink(missing_ok=True)
                    meta_path.unlink(missing_ok=True)
                    continue
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                    raise ValueError("sha256 mismatch")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            except Exception as err:  # missing sidecar, truncated file, foreign content
                log.warning("%s: not a usable checkpoint (%s); trying the previous one", path, err)
                continue
            log.info("resuming from %s (step %d)", path, meta["step"])
            return state
        return None

    def clear(self) -> None:
        """Remove the state folder (after the final model is written)."""
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


def record_failure(state_dir: Path, fingerprint: str, error: str, **details: Any) -> Path:
    """Record in the run's state folder (atomically, ``failed.json``) that training the spec
    ``fingerprint`` failed in a way a retry repeats (a diverged loss), with its message and
    ``details`` (step, loss)."""
    path = Path(state_dir) / FAILED
    write_json(path, {"fingerprint": fingerprint, "error": error, **details})
    return path


def known_failure(state_dir: Path, fingerprint: str, attempt: int) -> dict[str, Any] | None:
    """The failure an earlier attempt recorded for the spec ``fingerprint`` when this one is a
    retry of it (``attempt`` above 1: Snakemake's retry, which would fail the same way), else
    None; a record of another spec, or met by a first attempt (a rerun the user started), is
    removed and training goes ahead."""
    path = Path(state_dir) / FAILED
    try:
        rec = read_json(path)
    except FileNotFoundError:
        return None
    except ValueError as err:  # written atomically: only a foreign file gets here
        log.warning("%s: not a usable failure record (%s); removed", path, err)
        rec = None
    if isinstance(rec, dict) and attempt > 1 and rec.get("fingerprint") == fingerprint:
        return rec
    if isinstance(rec, dict):
        log.info("%s: %s; training again", path,
                 "recorded for other settings" if rec.get("fingerprint") != fingerprint
                 else "a rerun (attempt 1) of the settings that failed")
    path.unlink(missing_ok=True)
    return None
