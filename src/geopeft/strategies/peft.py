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
    default_targets: tuple[str, ...] | None = None
    """Its own target module suffixes when the row names none (IA3: keys, values and the MLP's
    inner activations); None = the backbone's declared adapter targets."""
    feedforward: tuple[str, ...] = ()
    """Target suffixes that are feed-forward layers (IA3 scales their input, not their output)."""


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


#: IA3's targets on the zoo's transformers: keys, values (their outputs scaled) and the MLP's
#: second layer (its input, the inner activations, scaled): l_k, l_v and l_ff of Liu et al.
IA3_TARGETS = ("k", "v", "mlp.fc2")


def _ia3(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    ff = [t for t in common["target_modules"]
          if any(t == s or t.endswith("." + s) for s in PEFT_REGISTRY["ia3"].feedforward)]
    return peft.IA3Config(feedforward_modules=ff, **common)


def _vera(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    # the frozen random projections are saved with the adapter: it reloads alone, anywhere
    return peft.VeraConfig(r=int(lora.r), vera_dropout=float(lora.dropout),
                           save_projection=True, **common)


def _fourierft(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    return peft.FourierFTConfig(n_frequency=int(lora.n_frequency), scaling=float(lora.alpha),
                                **common)


def _oft(lora: LoraSpec, common: dict[str, Any]) -> Any:
    import peft

    return peft.OFTConfig(r=0, oft_block_size=int(lora.block_size),
                          module_dropout=float(lora.dropout), **common)


#: The peft methods, by name.
PEFT_REGISTRY: dict[str, PeftMethod] = {m.name: m for m in (
    PeftMethod("lora", "low-rank adaptation (Hu et al. 2022)", _lora),
    PeftMethod("dora", "weight-decomposed low-rank adaptation (Liu et al. 2024)", _dora),
    PeftMethod("loha", "low-rank Hadamard product (Hyeon-Woo et al. 2022)", _loha),
    PeftMethod("lokr", "low-rank Kronecker product (Edalati et al. 2022)", _lokr),
    PeftMethod("ia3", "learned rescaling of keys, values and MLP activations (IA3, Liu et al. "
               "2022)", _ia3, settings=(), default_targets=IA3_TARGETS, feedforward=("mlp.fc2",)),
    PeftMethod("vera", "shared frozen random low-rank matrices, trained scaling vectors (VeRA, "
               "Kopiczko et al. 2024)", _vera, settings=("r", "dropout")),
    PeftMethod("fourierft", "n_frequency trained spectral coefficients per layer (FourierFT, Gao "
               "et al. 2024; alpha is its scaling)", _fourierft,
               settings=("n_frequency", "alpha")),
    PeftMethod("oft", "orthogonal fine-tuning, block-diagonal rotations of block_size (OFT, Qiu "
               "et al. 2023)", _oft, settings=("block_size", "dropout")),
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
    """Dropout on the adapter's input (rank dropout for LoHa and LoKr, module dropout for OFT)."""
    n_frequency: int = field(default=1000, metadata={"minimum": 1})
    """FourierFT: trained spectral coefficients per adapted layer."""
    block_size: int = field(default=32, metadata={"minimum": 2})
    """OFT: side of the orthogonal blocks (divides the layer's width)."""
    target_modules: tuple[str, ...] | None = field(default=None, metadata={"minItems": 1})
    """Encoder module name suffixes (null = the backbone's declared targets, q/k/v for the zoo's
    ViT and Swin-V2, whose fused attention is exposed as separate q, k, v)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "lora") -> LoraSpec:
        """The adapter of a resolved ``lora`` mapping (every key present).

        Raises:
            ConfigError: a key is missing (named with ``where``).
        """
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in LATER_KEYS]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        t = d["target_modules"]
        return cls(**{**{f.name: d[f.name] for f in fields(cls) if f.name in d},
                      "target_modules": tuple(t) if t is not None else None})


#: Settings added after models were first saved: a saved spec without them has their defaults.
LATER_KEYS = ("n_frequency", "block_size")


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


def target_suffixes(lora: LoraSpec, declared: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """The module suffixes a row's adapter goes on: the row's ``target_modules``, else its
    method's own defaults (IA3), else the backbone's ``declared`` ones (None: none known)."""
    method = PEFT_REGISTRY.get(lora.method)
    own = method.default_targets if method is not None else None
    on = lora.target_modules or own or declared
    return list(on) if on else None


def adapter_words(lora: LoraSpec, targets: list[str] | tuple[str, ...] | None = None) -> str:
    """The adapter in words: method, the settings it takes (rank, alpha, dropout, ...) and target
    modules (:func:`target_suffixes` with the backbone's declared ``targets``; ``default`` when
    none is known)."""
    on = target_suffixes(lora, targets)
    where = ",".join(on) if on else "default"
    method = PEFT_REGISTRY.get(lora.method)
    taken = method.settings if method is not None else ("r", "alpha", "dropout")
    values = " ".join(f"{k} {getattr(lora, k):g}" for k in taken)
    return f"{lora.method} {values} on {where}" if values else f"{lora.method} on {where}"
