"""The HF peft methods of adapter rows (``lora.method``), one entry each, and their settings.

Adding a method is one :class:`PeftMethod` in :data:`PEFT_REGISTRY`: its name, which of the
row's :class:`LoraSpec` settings it takes (and so how the adapter is worded), and the peft config
it builds from them. A method's config function receives the row's settings and the common
keywords (``target_modules``, ``modules_to_save``) and passes on what its peft config takes (IA3,
for instance, takes no rank).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from geopeft.errors import ConfigError


@dataclass(frozen=True)
class PeftMethod:
    """One peft method."""

    name: str
    """The value of ``lora.method`` that selects it."""
    summary: str
    """The method in words."""
    config: Callable[[LoraSpec, dict[str, Any]], Any]
    """Its peft config from the adapter's settings and the common keywords (``target_modules``,
    ``modules_to_save``)."""
    settings: tuple[str, ...] = ("r", "alpha", "dropout")
    """The :class:`LoraSpec` settings it takes (the words of the adapter name these)."""


def _lora(lora: LoraSpec, common: dict[str, Any], dora: bool = False) -> Any:
    import peft

    return peft.LoraConfig(r=int(lora.r), lora_alpha=float(lora.alpha),
                           lora_dropout=float(lora.dropout), bias="none", use_dora=dora, **common)


def _dora(lora: LoraSpec, common: dict[str, Any]) -> Any:
    return _lora(lora, common, dora=True)


def _loha(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    return peft.LoHaConfig(r=int(lora.r), alpha=float(lora.alpha),
                           rank_dropout=float(lora.dropout), **common)


def _lokr(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    return peft.LoKrConfig(r=int(lora.r), alpha=float(lora.alpha),
                           rank_dropout=float(lora.dropout), **common)


#: The peft methods, by name.
PEFT_REGISTRY: dict[str, PeftMethod] = {m.name: m for m in (
    PeftMethod("lora", "low-rank adaptation (Hu et al. 2022)", _lora),
    PeftMethod("dora", "weight-decomposed low-rank adaptation (Liu et al. 2024)", _dora),
    PeftMethod("loha", "low-rank Hadamard product (Hyeon-Woo et al. 2022)", _loha),
    PeftMethod("lokr", "low-rank Kronecker product (Edalati et al. 2022)", _lokr),
)}


@dataclass(frozen=True)
class LoraSpec:
    """The adapter of a ``lora`` row."""

    method: str = field(default="lora", metadata={"enum": tuple(PEFT_REGISTRY)})
    """HF peft method on the target modules (dora = weight-decomposed LoRA)."""
    r: int = field(default=8, metadata={"minimum": 1})
    """Rank of the adapter."""
    alpha: float = field(default=16, metadata={"exclusiveMinimum": 0})
    """Scaling numerator (LoRA scales the update by alpha / r)."""
    dropout: float = field(default=0.1, metadata={"minimum": 0, "maximum": 1})
    """Dropout on the adapter's input (rank dropout for LoHa and LoKr)."""
    target_modules: tuple[str, ...] | None = field(default=None, metadata={"minItems": 1})
    """Encoder module name suffixes (null = the backbone's declared targets, q/k/v for the zoo's
    ViT and Swin-V2, whose fused attention is exposed as separate q, k, v)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "lora") -> LoraSpec:
        """The adapter of a resolved ``lora`` mapping (every key present).

        Raises:
            ConfigError: a key is missing (named with ``where``).
        """
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        t = d["target_modules"]
        return cls(**{**{f.name: d[f.name] for f in fields(cls)},
                      "target_modules": tuple(t) if t is not None else None})


def peft_config(lora: LoraSpec, targets: list[str], modules_to_save: list[str]) -> Any:
    """The peft config of ``lora.method``.

    Args:
        lora: the adapter's settings.
        targets: full names of the encoder's modules to adapt.
        modules_to_save: the new modules (trained and saved with the adapter).
    """
    method = PEFT_REGISTRY.get(lora.method)
    if method is None:
        raise ValueError(f"lora.method: {lora.method!r} is not one of {tuple(PEFT_REGISTRY)}")
    common = {"target_modules": targets, "modules_to_save": modules_to_save}
    return method.config(lora, common)


def adapter_words(lora: LoraSpec, targets: list[str] | tuple[str, ...] | None = None) -> str:
    """The adapter in words: method, the settings it takes (rank, alpha, dropout) and target
    modules (``targets``, else the row's, else ``default``: the backbone's declared ones)."""
    on = targets or lora.target_modules
    where = ",".join(on) if on else "default"
    method = PEFT_REGISTRY.get(lora.method)
    taken = method.settings if method is not None else ("r", "alpha", "dropout")
    values = " ".join(f"{k} {getattr(lora, k):g}" for k in taken)
    return f"{lora.method} {values} on {where}" if values else f"{lora.method} on {where}"
