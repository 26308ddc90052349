"""Fine-tuning strategies and peft methods: one object each, in a registry.

A study's ``strategies.<key>.strategy`` names a :class:`~geopeft.strategies.base.Strategy` of
:data:`REGISTRY` (what trains); a ``lora`` strategy's ``lora.method`` names a
:class:`~geopeft.strategies.peft.PeftMethod` of :data:`PEFT_REGISTRY` (the adapter). Every part
of geopeft that depends on the strategy asks its object: the spec (whether the encoder loads its
weights), the study's resolution (the default encoder learning-rate factor, which strategies a
model without an encoder allows, whether rows carry adapter settings), the model build (which
parameters train), the optimiser (its groups), the saved model (the peft adapter), the summary,
the paper and MLflow (the strategy in words) and the rehearsal (which weights it needs).

Adding a strategy is one object registered in :mod:`geopeft.strategies.builtin` (or in a module
of its own, imported there); adding a peft method is one entry of
:mod:`geopeft.strategies.peft`. Nothing here imports torch at import time (the study's
resolution, and so Snakemake's start, imports this package).
"""

from __future__ import annotations

from typing import Any

from geopeft.strategies.base import (
    REGISTRY,
    Strategy,
    count_parameters,
    encoder_targets,
    get,
    is_new,
    new_module_names,
    register,
)
from geopeft.strategies.bottleneck import BottleneckSpec
from geopeft.strategies.builtin import E2E, BitFit, Full, Linear, PeftAdapter, Scratch
from geopeft.strategies.peft import PEFT_REGISTRY, LoraSpec, PeftMethod, adapter_words, peft_config
from geopeft.strategies.probes import ProbeSpec
from geopeft.strategies.vpt import PromptSpec

#: The strategies a study may name, in registry order (the schema's enum).
STRATEGIES = tuple(REGISTRY)
#: The peft methods of ``strategy: lora`` rows (the schema's enum).
PEFT_METHODS = tuple(PEFT_REGISTRY)


def apply_strategy(model, method: str, lora: LoraSpec | None = None,  # noqa: ANN001
                   default_targets: list[str] | None = None,
                   options: Any = None):  # noqa: ANN201
    """The model to train under strategy ``method`` (:meth:`Strategy.prepare`).

    Args:
        model: the model with its new modules (``new_modules()``).
        method: a strategy of :data:`REGISTRY`.
        lora: the adapter of an adapter strategy (default: LoRA r 8, alpha 16).
        default_targets: the backbone's declared adapter targets.
        options: the strategy's own settings (``Strategy.settings_class``; default: its
            defaults), e.g. VPT's :class:`PromptSpec`.
    """
    return get(method).prepare(model, lora, default_targets, options)


def param_groups(model, lr: float, encoder_lr_factor: float = 1.0) -> list[dict]:  # noqa: ANN001
    """Optimiser groups of a model prepared by :func:`apply_strategy`: the new modules and the
    parameters the strategy added (adapters) at ``lr``, the rest of what trains (the encoder's)
    at ``lr x encoder_lr_factor``; one group when the factor is 1."""
    added = Strategy.added_parameters(model)
    head, encoder = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name in added or encoder_lr_factor == 1.0 else encoder).append(p)
    groups = [{"params": head, "lr": lr}]
    if encoder:
        groups.append({"params": encoder, "lr": lr * encoder_lr_factor})
    return groups


__all__ = ["E2E", "PEFT_METHODS", "PEFT_REGISTRY", "REGISTRY", "STRATEGIES", "BitFit",
           "BottleneckSpec", "Full",
           "Linear", "LoraSpec", "PeftAdapter", "PeftMethod", "ProbeSpec", "PromptSpec", "Scratch",
           "Strategy",
           "adapter_words", "apply_strategy", "count_parameters", "encoder_targets", "get",
           "is_new", "new_module_names", "param_groups", "peft_config", "register"]
