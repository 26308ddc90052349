"""Fine-tuning strategies: which parameters train.

* ``full``   -- every parameter trains.
* ``linear`` -- the backbone is frozen; only the new modules (head; fusion blocks) train
  (linear probe, or decoder-only).
* ``lora``   -- HF peft adapters on the encoder's target modules (``lora.method``: LoRA, DoRA,
  LoHa, LoKr; rank, alpha, dropout from config); the encoder is frozen and the new modules train
  and are saved with the adapter (``modules_to_save``).
* ``e2e``    -- end to end: every parameter trains, the encoder at ``encoder_lr_factor`` x the
  head's learning rate (see :func:`param_groups`).
* ``scratch`` -- every parameter trains from a random initialisation (the backbone's weights
  are ignored).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from geopeft.spec import PEFT_METHODS, STRATEGIES, LoraSpec


def new_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the modules created for the task (head, fusion blocks).

    peft selects ``modules_to_save`` by name suffix, so each name must not also end another
    module's name (``norm`` would catch the encoder's ``encoder.norm``): checked here.
    """
    names = list(model.new_modules())  # type: ignore[operator]
    if not names:
        raise ValueError("the model has no head module")
    for n in names:
        clash = [k for k, _ in model.named_modules() if k != n and k.endswith(n)]
        if clash:
            raise ValueError(f"new module {n!r} would also select {clash[:3]} as a module to save")
    return names


def is_new(name: str, new: list[str]) -> bool:
    """Whether the parameter or module ``name`` belongs to one of the new modules ``new``."""
    return any(name == m or name.startswith(m + ".") for m in new)


def encoder_targets(model: nn.Module, suffixes: list[str]) -> list[str]:
    """Full names of the encoder's linear layers whose names end in one of ``suffixes``.

    Args:
        model: the model (its new modules are never targets).
        suffixes: module name suffixes, e.g. q, k, v.
    """
    new = new_module_names(model)
    out = [name for name, mod in model.named_modules()
           if isinstance(mod, nn.Linear) and not is_new(name, new)
           and any(name == s or name.endswith("." + s) for s in suffixes)]
    if not out:
        raise ValueError(f"lora.target_modules {suffixes}: no linear layer of the encoder matches")
    return out


def peft_config(lora: LoraSpec, targets: list[str], modules_to_save: list[str]) -> Any:
    """The peft config of ``lora.method``: LoRA, DoRA (weight-decomposed LoRA), LoHa or LoKr.

    Args:
        lora: the adapter's settings.
        targets: full names of the encoder's modules to adapt.
        modules_to_save: the new modules (trained and saved with the adapter).
    """
    import peft

    method = lora.method
    r, alpha, dropout = int(lora.r), float(lora.alpha), float(lora.dropout)
    common = {"r": r, "target_modules": targets, "modules_to_save": modules_to_save}
    if method in ("lora", "dora"):
        return peft.LoraConfig(lora_alpha=alpha, lora_dropout=dropout, bias="none",
                               use_dora=method == "dora", **common)
    if method == "loha":
        return peft.LoHaConfig(alpha=alpha, rank_dropout=dropout, **common)
    if method == "lokr":
        return peft.LoKrConfig(alpha=alpha, rank_dropout=dropout, **common)
    raise ValueError(f"lora.method: {method!r} is not one of {PEFT_METHODS}")


def apply_strategy(model: nn.Module, method: str, lora: LoraSpec | None = None,
                   default_targets: list[str] | None = None) -> nn.Module:
    """Set ``requires_grad`` (and wrap with peft for LoRA); returns the model to train.

    The task's new modules (head, fusion blocks) train under every strategy; ``linear`` freezes
    the rest; ``lora`` adapts the encoder's ``lora.target_modules`` (default: the backbone's
    declared targets, ``default_targets``) and saves the new modules with the adapter.

    Args:
        model: the model with its new modules (``new_modules()``).
        method: one of :data:`~geopeft.spec.STRATEGIES`.
        lora: the adapter of a ``lora`` row (default: LoRA r 8, alpha 16).
        default_targets: the backbone's declared adapter targets.
    """
    if method not in STRATEGIES:
        raise ValueError(f"strategy {method!r} is not one of {STRATEGIES}")
    new = new_module_names(model)
    if method in ("full", "e2e", "scratch"):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "linear":
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new))
        return model
    from peft import get_peft_model

    lora = lora or LoraSpec()
    suffixes = list(lora.target_modules or default_targets or ["q", "k", "v"])
    try:
        cfg = peft_config(lora, encoder_targets(model, suffixes), new)
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise ValueError(f"lora.target_modules {suffixes}: {err}") from None


def param_groups(model: nn.Module, lr: float, encoder_lr_factor: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups: new modules (and adapters) at ``lr``, the encoder at ``lr x factor``.

    Args:
        model: the model (a peft model for LoRA).
        lr: the head's learning rate.
        encoder_lr_factor: the encoder's learning rate over ``lr``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = new_module_names(base)
    prefix = "base_model.model." if base is not model else ""
    new = [prefix + n for n in new]
    head_params, encoder_params = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = is_new(name, new) or "lora_" in name or "hada_" in name or "lokr_" in name
        (head_params if is_head or encoder_lr_factor == 1.0 else encoder_params).append(p)
    groups = [{"params": head_params, "lr": lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": lr * encoder_lr_factor})
    return groups


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's saved copies of new modules count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if ".original_module." not in n)
    return trainable, total
