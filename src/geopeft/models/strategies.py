"""Fine-tuning strategies: which parameters train.

* ``full``   -- every parameter trains.
* ``linear`` -- the backbone is frozen; only the new classification head trains.
* ``lora``   -- HF peft LoRA adapters on the target modules (rank, alpha, dropout from config);
  the backbone is frozen and the new head trains and is saved with the adapter
  (``modules_to_save``).
* ``e2e``    -- end to end: every parameter trains, the encoder at ``encoder_lr_factor`` x the
  head's learning rate (see :func:`param_groups`).
* ``scratch`` -- every parameter trains from a random initialisation (the backbone's weights
  are ignored).
"""

from __future__ import annotations

from typing import Any

from torch import nn

STRATEGIES = ("full", "lora", "linear", "e2e", "scratch")


def head_name(model: nn.Module) -> str:
    """Qualified name of the classification head module inside ``model``."""
    head = model.head  # type: ignore[attr-defined]
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ValueError("the model has no head module")


def apply_strategy(model: nn.Module, method: str, lora: dict[str, Any] | None = None) -> nn.Module:
    """Set ``requires_grad`` (and wrap with peft for LoRA); returns the model to train."""
    if method not in STRATEGIES:
        raise ValueError(f"strategy {method!r} is not one of {STRATEGIES}")
    head = head_name(model)
    if method in ("full", "e2e", "scratch"):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "linear":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(head + "."))
        return model
    from peft import LoraConfig, get_peft_model

    lora = lora or {}
    cfg = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.1)),
        target_modules=list(lora.get("target_modules", ["q", "k", "v"])),
        modules_to_save=[head],
        bias="none",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise ValueError(f"lora.target_modules {cfg.target_modules}: {err}") from None


def param_groups(model: nn.Module, lr: float, encoder_lr_factor: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups: the head (and adapters) at ``lr``, the encoder at ``lr x factor``."""
    head = head_name(model)
    head_params, encoder_params = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith(head + ".") or "lora_" in name or "modules_to_save" in name
        (head_params if is_head or encoder_lr_factor == 1.0 else encoder_params).append(p)
    groups = [{"params": head_params, "lr": lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": lr * encoder_lr_factor})
    return groups


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's saved head copies count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if ".original_module." not in n)
    return trainable, total
