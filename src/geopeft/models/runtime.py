"""Where and how models run: seeding and deterministic kernels, the device, autocast, peak memory.

Shared by training and evaluation, so both run a model the same way.
"""

from __future__ import annotations

import os
import random
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


#: What ``peak_memory_mb`` measures on each kind of device (axis labels, table notes).
MEMORY_KIND = {"cuda": "CUDA max allocated",
               "cpu": "training tensors: parameters, gradients, optimizer state, saved activations"}


def peak_memory_mb(device: torch.device, tensors: dict[str, float] | None = None) -> float:
    """The training memory of a run, in MiB: on CUDA the allocator's maximum allocated; on CPU,
    where torch keeps no such count and the process's resident set is mostly torch itself,
    the training tensors of one step (:class:`SavedTensors`, :func:`training_tensors_mb`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return float((tensors or {}).get("total", float("nan")))


class SavedTensors:
    """Records, while active, every tensor autograd saves for the backward pass (the activations
    a training step holds at its peak), by storage, so a tensor saved twice counts once."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = st.nbytes()
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _storages(tensors: Any) -> dict[int, int]:
    out = {}
    for t in tensors:
        if t is not None and torch.is_tensor(t):
            st = t.untyped_storage()
            out[st.data_ptr()] = st.nbytes()
    return out


def training_tensors_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        saved: SavedTensors) -> dict[str, float]:
    """The tensors a training step holds, in MiB, after its optimiser step: every parameter and
    buffer (frozen ones too), the gradients, the optimiser state, and the activations saved for
    backward during the step (``saved``; the parameters it saved are not counted twice).

    Args:
        model: the model being trained.
        optimizer: its optimiser (its state exists after the first step).
        saved: the saved tensors recorded over the step's forward pass.

    Returns:
        ``parameters``, ``gradients``, ``optimizer``, ``activations`` and their ``total``.
    """
    params = _storages([*model.parameters(), *model.buffers()])
    grads = _storages(p.grad for p in model.parameters())
    state = _storages(v for st in optimizer.state.values() for v in st.values())
    acts = {k: v for k, v in saved.storages.items() if k not in params}
    parts = {name: sum(d.values()) / 2**20 for name, d in
             (("parameters", params), ("gradients", grads), ("optimizer", state),
              ("activations", acts))}
    parts["total"] = sum(parts.values())
    return parts


__all__ = ["MEMORY_KIND", "SavedTensors", "autocast", "peak_memory_mb", "resolve_device",
           "seed_everything", "training_tensors_mb"]
