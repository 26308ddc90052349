"""One GPU per job on a workstation: claim free devices with lock files, set CUDA_VISIBLE_DEVICES.

Snakemake limits how many GPU jobs run at once (``--resources gpu=N``, see ``profiles/default``)
but does not say which device each job gets, so without this every job would start on GPU 0.
Before CUDA is initialised, a job that will use CUDA calls :func:`claim`: it takes an exclusive
``flock`` on ``gpu<i>.lock`` for the first free device(s) in ``$GEOPEFT_GPU_LOCK_DIR`` (default
``/tmp/geopeft-gpu-locks-<uid>``) and sets ``CUDA_VISIBLE_DEVICES`` to them. The locks are held
until the process ends (a crash or kill releases them). When ``CUDA_VISIBLE_DEVICES`` is already
set -- by SLURM, or by the user -- nothing is claimed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_HELD: list[IO[str]] = []


def lock_dir() -> Path:
    """The folder of the per-GPU lock files (``GEOPEFT_GPU_LOCK_DIR``, else one per user in /tmp)."""
    return Path(os.environ.get("GEOPEFT_GPU_LOCK_DIR", f"/tmp/geopeft-gpu-locks-{os.getuid()}"))


def device_count() -> int:
    """Visible NVIDIA devices, without initialising CUDA in this process (0 without any)."""
    import shutil
    import subprocess

    forced = os.environ.get("GEOPEFT_GPU_COUNT")
    if forced is not None:
        return int(forced)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def per_job(setting: int | str, local: bool, visible: int | None = None) -> int:
    """The GPUs each GPU job asks for: Snakemake's ``gpu`` resource of pretrain, train, evaluate.

    Snakemake limits the ``gpu`` resource only when one is provided (``--resources gpu=N``, as
    ``profiles/default`` does); a job that asks ``gpu=1`` on a machine without a GPU would then
    run one at a time and leave the other cores idle. ``auto`` asks for a GPU only where there is
    one: always on a cluster executor (the jobs run on GPU nodes), on a local machine only when
    it has NVIDIA devices.

    Args:
        setting: ``resources.gpus`` of the config: a count, or ``"auto"``.
        local: whether the jobs run on this machine (Snakemake's ``workflow.local_exec``).
        visible: the machine's device count (default: :func:`device_count`).

    Returns:
        The count for each job (0: a CPU job).
    """
    if setting != "auto":
        return int(setting)
    if not local:
        return 1
    return 1 if (device_count() if visible is None else visible) > 0 else 0


def claim(n: int = 1, timeout_s: float = 3600.0, poll_s: float = 2.0) -> list[int] | None:
    """Claim ``n`` free GPUs for this process and restrict CUDA to them.

    Returns the device indices, or None when nothing was claimed (``CUDA_VISIBLE_DEVICES`` already
    set, or no GPU). Waits (bounded by ``timeout_s``) while all devices are taken.

    Raises:
        RuntimeError: ``n`` is more than the machine has, or no device came free in time.
    """
    if n <= 0 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    total = device_count()
    if total == 0:
        return None
    if n > total:
        raise RuntimeError(f"the job asks for {n} GPUs but this machine has {total}")
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + timeout_s
    while True:
        got: list[tuple[int, IO[str]]] = []
        for i in range(total):
            fh = open(d / f"gpu{i}.lock", "a+")  # noqa: SIM115 - held for the process lifetime
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            got.append((i, fh))
            if len(got) == n:
                break
        if len(got) == n:
            _HELD.extend(fh for _, fh in got)
            ids = [i for i, _ in got]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
            log.info("claimed GPU(s) %s (CUDA_VISIBLE_DEVICES=%s)", ids, os.environ["CUDA_VISIBLE_DEVICES"])
            return ids
        for _, fh in got:
            fh.close()
        if time.monotonic() > end:
            raise RuntimeError(f"no {n} free GPU(s) among {total} after {timeout_s:.0f} s "
                               f"(locks in {d}); is --resources gpu=N larger than the GPU count?")
        time.sleep(poll_s)
