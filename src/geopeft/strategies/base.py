"""The :class:`Strategy` object, its registry, and the parameter helpers every strategy uses.

A model a strategy prepares has ``new_modules()``: the qualified names of the modules created
for the task (head, fusion blocks), which train under every strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from geopeft.strategies.peft import LoraSpec

#: The attribute of a prepared model that names its head-rate parameters (see
#: :meth:`Strategy.added_parameters`).
_HEAD_ATTR = "geopeft_head_parameters"


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
    """Full names of the encoder's linear layers and convolutions (``nn.Linear``, ``nn.Conv2d``:
    ConvNeXt's MLP is 1x1 convolutions in some sizes, a ResNet's adapters go on its 3x3 ones)
    whose names end in one of ``suffixes``.

    Args:
        model: the model (its new modules are never targets).
        suffixes: module name suffixes, e.g. q, k, v.
    """
    from torch import nn

    new = new_module_names(model)
    def linear(mod: nn.Module) -> bool:
        return isinstance(mod, (nn.Linear, nn.Conv2d))

    out = [name for name, mod in model.named_modules()
           if linear(mod) and not is_new(name, new)
           and any(name == s or name.endswith("." + s) for s in suffixes)]
    if not out:
        raise ValueError(f"lora.target_modules {suffixes}: no linear layer or convolution of "
                         f"the encoder matches")
    return out


def settings_from_dict(cls: Any, d: dict[str, Any], where: str) -> Any:
    """A strategy's own settings (frozen dataclass ``cls``) from a resolved mapping that holds
    every key.

    Raises:
        ConfigError: a key is missing (named with ``where``).
    """
    from dataclasses import fields

    from geopeft.errors import ConfigError

    missing = [f.name for f in fields(cls) if f.name not in d]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return cls(**{f.name: d[f.name] for f in fields(cls)})


def vit_encoder(model: nn.Module, strategy: str) -> Any:
    """The timm ViT inside ``model`` (its encoder) that strategy ``strategy`` changes (VPT's
    prompts, bottleneck adapters), or a ValueError naming what the model has instead."""
    from timm.models.vision_transformer import VisionTransformer

    new = new_module_names(model)
    found = [m for n, m in model.named_modules()
             if isinstance(m, VisionTransformer) and not is_new(n, new)]
    if not found:
        parts = sorted({type(m).__name__ for n, m in model.named_modules()
                        if n and "." not in n and not is_new(n, new)})
        raise ValueError(f"strategy {strategy} needs a ViT encoder (timm VisionTransformer: the "
                         f"zoo's ViTs, SSL4EO-S12, the embedded one); this model has {parts}")
    return found[0]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's saved copies of new modules count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if ".original_module." not in n)
    return trainable, total


class Strategy:
    """What trains, and everything that follows from it.

    Subclasses set the class attributes and override :meth:`mark` (and, for strategies that
    wrap the model, :meth:`prepare`); one instance of each is registered with :func:`register`.
    """

    name: ClassVar[str]
    """The value of ``strategies.<key>.strategy`` that selects it."""
    summary: ClassVar[str]
    """What trains, in words (the schema's description, the docs)."""
    loads_weights: ClassVar[bool] = True
    """Whether the encoder starts from the backbone's weights (``scratch``: a random
    initialisation)."""
    frozen_encoder: ClassVar[bool] = False
    """Whether nothing of the encoder trains, nor sits between it and the head (a linear
    probe): its rows may train on the encoder's features, computed once
    (:mod:`geopeft.train.features`)."""
    closed_form: ClassVar[bool] = False
    """Whether its head is fit in one pass on the encoder's features (a probe: kNN, logistic
    regression) instead of trained by gradient steps over epochs."""
    augments_features: ClassVar[bool] = True
    """Whether a frozen-encoder row of it that augments trains on the 8 dihedral views of the
    features (False: the samples as they are)."""
    without_encoder: ClassVar[bool] = False
    """Whether it applies to a model without an encoder (U-TAE, trained from scratch): only
    strategies that train every weight."""
    encoder_lr_factor: ClassVar[float | None] = None
    """The encoder learning-rate factor its rows get unless the strategy sets
    ``encoder_lr_factor`` (None: the study's ``train.encoder_lr_factor``)."""
    uses_adapter: ClassVar[bool] = False
    """Whether its rows carry adapter settings (``lora``), saved with the model as a peft
    adapter."""
    families: ClassVar[tuple[str, ...] | None] = None
    """The encoder families (a zoo entry's ``family``) it works on; None: every one. A study
    that pairs it with another family's backbone is refused when it is validated."""
    settings_key: ClassVar[str | None] = None
    """The study key of the strategy's own settings (``prompt`` of VPT), in its strategy entry
    and its rows; None: it has none beyond the common ones."""
    settings_class: ClassVar[Any] = None
    """The frozen dataclass of those settings (``from_dict``, ``words``; its fields' docstrings
    are the schema's descriptions)."""

    def mark(self, model: nn.Module, new: list[str]) -> None:
        """Set ``requires_grad`` of every parameter of ``model``; ``new``: its new modules."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, lora: LoraSpec | None = None,
                default_targets: list[str] | None = None,
                options: Any = None) -> nn.Module:
        """The model to train: parameters marked (:meth:`mark`) and the head-rate parameters
        recorded for :func:`~geopeft.strategies.param_groups`.

        Args:
            model: the model with its new modules (``new_modules()``).
            lora: the adapter settings (adapter strategies).
            default_targets: the backbone's declared adapter targets.
            options: the strategy's own settings (:attr:`settings_class`), if it has any.
        """
        new = new_module_names(model)
        self.mark(model, new)
        self.record(model, {n for n, _ in model.named_parameters() if is_new(n, new)})
        return model

    @staticmethod
    def record(model: nn.Module, names: set[str]) -> None:
        """Remember which parameters of ``model`` learn at the head's rate."""
        object.__setattr__(model, _HEAD_ATTR, frozenset(names))

    @staticmethod
    def added_parameters(model: nn.Module) -> frozenset[str]:
        """The parameters of a prepared model that learn at the head's rate: its new modules'
        and those the strategy added (adapters); for a model no strategy prepared, its new
        modules'."""
        names = getattr(model, _HEAD_ATTR, None)
        if names is None:
            new = new_module_names(model)
            names = frozenset(n for n, _ in model.named_parameters() if is_new(n, new))
        return names

    def words(self, lora: LoraSpec | None = None, targets: list[str] | None = None,
              options: Any = None) -> str:
        """The strategy of a row in words (summary, paper, MLflow): its name, and for an
        adapter strategy the adapter, for a strategy with its own settings those."""
        return self.name

    def save(self, model: nn.Module, folder: Any) -> None:
        """Write what the saved model needs beyond its trained tensors into ``folder``."""

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


#: The strategies, by name, in the order they were registered.
REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to :data:`REGISTRY` under its name (a name is registered once)."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    REGISTRY[strategy.name] = strategy
    return strategy


def get(name: str) -> Strategy:
    """The strategy called ``name``.

    Raises:
        ValueError: no strategy has that name (the message lists them).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} is not one of {tuple(REGISTRY)}") from None
