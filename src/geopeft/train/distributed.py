"""Multi-process training (DDP under torchrun): ranks, gradient and metric all-reduce, the
per-step random streams, and the relaunch of a training command under torchrun."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import torch

log = logging.getLogger(__name__)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed job (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sync_gradients(params: list[torch.Tensor], world: int) -> None:
    """Average the gradients of ``params`` over all ranks (one flat all-reduce)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over all ranks (float64; on the device for nccl)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (itself when alone)."""
    return flag if world == 1 else sum_over_ranks([float(flag)], device)[0] > 0


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the augmentation and dropout of ``rank`` at optimizer step ``step`` under DDP: the
    per-rank random streams are a function of the step, so a resumed run (whose state rank 0
    saved) draws exactly what the interrupted one would have drawn on every rank."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def join_process_group(device: str) -> None:
    """Inside torchrun: pick this rank's GPU and join the process group (nccl on GPUs, gloo on
    CPU).

    Args:
        device: the job's ``train.device`` (``cpu`` keeps the ranks on the CPU).
    """
    import torch.distributed as dist

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("joined the process group: backend %s, rank %d of %d", dist.get_backend(),
             dist.get_rank(), dist.get_world_size())


def leave_process_group() -> None:
    """Destroy the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(argv: list[str], nproc: int) -> int:
    """Run ``geopeft`` with ``argv`` in ``nproc`` processes under torchrun; its exit code.

    Args:
        argv: the command line of this process (``--nproc`` is dropped: torchrun would take
            it for its own).
        nproc: processes to start on this node.
    """
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        kept.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "geopeft.cli", *kept]
    log.info("running %d processes under torchrun", nproc)
    return subprocess.call(cmd)


__all__ = ["any_rank", "dist_info", "join_process_group", "leave_process_group", "relaunch",
           "step_seed", "sum_over_ranks", "sync_gradients"]
