"""Where and how models run: seeding and deterministic kernels, the device, autocast, peak memory.

Shared by training and evaluation, so both run a model the same way.
"""

from __future__ import annotations

import os
import random
import resource
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic.

    Args:
        seed: the seed of every generator.
        threads: CPU threads torch may use.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms() also imports torch._inductor (~5 s per job on a small
    # CPU); the C-level switch it wraps sets the same flag without that import.
    if hasattr(torch._C, "_set_deterministic_algorithms"):
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    else:  # pragma: no cover - future torch
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``train.device`` setting.

    Args:
        name: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        RuntimeError: ``cuda`` was asked for and no CUDA device is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def autocast(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on CUDA when ``amp`` is on; a no-op context elsewhere."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated, else the process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["autocast", "peak_memory_mb", "resolve_device", "seed_everything"]
