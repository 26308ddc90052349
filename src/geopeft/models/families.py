"""Encoder families: what the task models need to know of an encoder, asked of one object.

A zoo entry (:class:`geopeft.models.zoo.BackboneEntry`) names its ``family`` by a string; the
family's :class:`EncoderFamily` says how to build the encoder (:meth:`~EncoderFamily.create`),
read its published checkpoints (:meth:`~EncoderFamily.from_checkpoint`), its token grid, width,
depth and patch, the input sizes it takes, its output tokens, the feature levels a UPerNet taps
(:meth:`~EncoderFamily.taps`, :meth:`~EncoderFamily.features`), the fix that exposes its
attention to adapters (:meth:`~EncoderFamily.prepare_for_adapters`) and the normalisation rules
its weights may declare (:attr:`~EncoderFamily.norm_rules`). The classifier, the segmenter, the
fusion model, the summary and the weights reader ask the family; none branches on its name.

The defaults are those of a timm-style plain ViT (``patch_embed``, ``blocks``,
``num_features``, ``num_prefix_tokens``, ``forward_features``, ``forward_intermediates``); a
family overrides what differs. **Adding a family** = its module (a subclass and an instance)
plus one line in :data:`FAMILIES`; :func:`register` adds one at run time (tests).

:data:`FAMILIES` declares each built-in family (:class:`Declared`): its object as a
``module:attribute`` string, loaded on first use as a data source names the writer of its world,
and what the zoo reads of it without torch (the timm file of its architectures, its adapter
targets). A family's module imports this one (the base class) and the modules that use families
import this one, never the family modules, so neither waits for the other (the weights reader,
which a timm family's errors import, asks families too). This module imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Module name suffixes adapters (LoRA) target in a family's models unless the family says
#: otherwise (:attr:`EncoderFamily.adapter_targets`, :attr:`Declared.adapter_targets`).
ADAPTER_TARGETS: tuple[str, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class Declared:
    """A built-in family as :data:`FAMILIES` declares it: where its object is, and what the zoo
    must know of it without loading its module (which imports torch; config validation and the
    job specs read the zoo, :mod:`geopeft.models.zoo`). :func:`get_family` checks that the loaded
    object says the same."""

    obj: str
    """``module:attribute`` of its :class:`EncoderFamily`, loaded on first use."""
    timm_file: str | None = None
    """timm's model file (under ``timm/models``) that registers the family's architectures, read
    without importing timm (:func:`geopeft.models.zoo.timm_architectures`); None: not a timm
    family (its architectures are the zoo entries that name it)."""
    adapter_targets: tuple[str, ...] = ADAPTER_TARGETS
    """As :attr:`EncoderFamily.adapter_targets` of its object."""


#: The built-in encoder families: name (a zoo entry's ``family``) -> its declaration.
FAMILIES: dict[str, Declared] = {
    "vit": Declared("geopeft.models.families_timm:VIT", timm_file="vision_transformer.py"),
    "swin": Declared("geopeft.models.families_timm:SWIN", timm_file="swin_transformer_v2.py"),
    "croma": Declared("geopeft.models.croma:CROMA"),
    "prithvi": Declared("geopeft.models.prithvi:PRITHVI"),
    "dofa": Declared("geopeft.models.dofa:DOFA"),
    "swin1": Declared("geopeft.models.families_timm:SWIN1", timm_file="swin_transformer.py"),
    "eva": Declared("geopeft.models.families_timm:EVA", timm_file="eva.py"),
    "convnext": Declared("geopeft.models.families_timm:CONVNEXT", timm_file="convnext.py",
                         adapter_targets=("fc1", "fc2")),
    "resnet": Declared("geopeft.models.families_timm:RESNET", timm_file="resnet.py",
                       adapter_targets=("conv2",)),
}
_loaded: dict[str, EncoderFamily] = {}
_extra: dict[str, EncoderFamily] = {}


@dataclass(frozen=True)
class NormRule:
    """A normalisation the weights expect derived from the data's train-split statistics."""

    name: str
    """The rule's name, a zoo entry's ``norm_rule``."""
    description: str
    """What it does, in a few words (the zoo listing's ``normalisation`` column)."""
    derive: Callable[[Sequence[float], Sequence[float], float],
                     tuple[list[float], list[float], tuple[float, float] | None]]
    """(train means, train stds, value scale) -> (mean, std, clip) in scaled units."""


@dataclass(frozen=True)
class Taps:
    """The feature levels a dense decoder (UPerNet) reads from an encoder."""

    indices: list[int]
    """Blocks (ViT) or stages (Swin) whose outputs are the levels, in order."""
    dims: list[int]
    """Channels of each level."""
    rescales: list[float]
    """Each level's upsampling factor into the pyramid (4, 2, 1, 0.5; 1 when it is one)."""


class EncoderFamily:
    """One encoder family: how its models are built and what the task models ask of them.

    Subclass it, set :attr:`name`, implement :meth:`create`, override what differs from a
    timm-style plain ViT, and list the instance in :data:`FAMILIES` (or :func:`register` it).
    """

    name: str = ""
    """The family's key, a zoo entry's ``family``."""
    norm_rules: tuple[NormRule, ...] = ()
    """Normalisation rules the family's weights may declare (``BackboneEntry.norm_rule``)."""
    adapter_targets: tuple[str, ...] = ADAPTER_TARGETS
    """Module name suffixes adapters (LoRA) target by default in the family's models (after
    :meth:`prepare_for_adapters`); a zoo entry may set its own (``BackboneEntry.lora_targets``).
    A built-in family declares the same in :data:`FAMILIES`."""
    input_conv: str | None = "patch_embed.proj.weight"
    """The state-dict key of the convolution that reads the bands (the patch embedding), whose
    input channels are mapped from the weights' bands to the data's; None: no such weight (a
    kernel generated for the data's bands, e.g. DOFA's)."""

    def create(self, bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
        """A model (no weights) of the resolved backbone config ``bb`` for ``in_chans`` bands and
        ``num_classes`` outputs (0: no head); errors name the config key at fault. ``bb`` holds
        the data's band names under ``data_bands`` when the caller knows them (a family whose
        model depends on them reads them there)."""
        raise NotImplementedError(f"encoder family {self.name!r} does not implement create")

    def from_checkpoint(self, state: dict[str, torch.Tensor], bb: dict[str, Any],
                        ) -> dict[str, torch.Tensor]:
        """A published checkpoint's state dict in the model's own key names and shapes (a
        ``ValueError`` names what does not fit); by default it is already."""
        return state

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's state dict in the layout its weights are published in (the inverse of
        :meth:`from_checkpoint`, for fixtures); by default the same."""
        return state

    def fixture_checkpoint(self, entry: Any, in_chans: int) -> Any:
        """What the rehearsal serves for a ``url:`` weight of zoo entry ``entry``: a checkpoint
        with random values (torch's seed set by the caller) in the layout the family's weights
        are published in; by default timm's model of ``entry.arch``, in the entry's wrapper."""
        import timm

        model = timm.create_model(entry.arch, pretrained=False, num_classes=0, in_chans=in_chans,
                                  **entry.kwargs)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        return {entry.checkpoint_wrapper: state} if entry.checkpoint_wrapper else state

    def width(self, model: nn.Module) -> int:
        """Channels of the encoder's output tokens."""
        return int(model.num_features)  # type: ignore[arg-type]

    def token_grid(self, model: nn.Module) -> tuple[int, int]:
        """(rows, cols) of the encoder's output token grid for its configured input size."""
        return tuple(int(g) for g in model.patch_embed.grid_size)  # type: ignore[return-value,union-attr]

    def input_size(self, model: nn.Module) -> int | None:
        """The square input side the model was built for (None if it takes any size)."""
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        return int(size[0]) if size is not None else None

    def size_multiple(self, model: nn.Module) -> int | None:
        """The number every input side must be a multiple of, when the model takes sides other
        than :meth:`input_size` (None: it takes its input size only)."""
        return None

    def patch(self, model: nn.Module) -> int:
        """The patch side."""
        return int(model.patch_embed.patch_size[0])  # type: ignore[index,union-attr]

    def depth(self, model: nn.Module) -> int | list[int]:
        """Blocks (an int), or blocks per stage (a list) for a hierarchical encoder."""
        return len(model.blocks)  # type: ignore[arg-type]

    def tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Final-stage output tokens (B, N, D), normalised, without class/register tokens."""
        f = model.forward_features(x)  # type: ignore[operator]
        return f[:, getattr(model, "num_prefix_tokens", 0):]

    def prepare_for_adapters(self, model: nn.Module) -> int:
        """Expose the attention projections to adapters (split fused ``qkv`` into ``q``, ``k``,
        ``v``: :func:`geopeft.models.qkv.split_qkv`); returns the attention layers split.
        Outputs are unchanged."""
        from geopeft.models.qkv import split_qkv

        return split_qkv(model)

    def taps(self, model: nn.Module, out_indices: Sequence[int] | None,
             declared: Sequence[int] | None) -> Taps:
        """The four levels a UPerNet reads: ``segmentation.out_indices``, else the zoo entry's
        declared taps, else four evenly spaced blocks (the last included); each the encoder's
        width, made a pyramid x4, x2, x1, x1/2.

        Raises:
            ValueError: the indices are not four blocks of the encoder (naming them).
        """
        depth = int(self.depth(model))  # type: ignore[arg-type]
        indices = list(out_indices or declared or
                       [max(0, round((i + 1) * depth / 4) - 1) for i in range(4)])
        if len(indices) != 4 or max(indices) >= depth or min(indices) < 0:
            raise ValueError(f"segmentation.out_indices: {indices}: four block indices "
                             f"of 0..{depth - 1} are needed")
        return Taps(indices, [self.width(model)] * 4, [4.0, 2.0, 1.0, 0.5])

    def features(self, model: nn.Module, x: torch.Tensor, indices: list[int],
                 ) -> list[torch.Tensor]:
        """The outputs (B, C, H, W) of the blocks or stages ``indices`` (sorted, distinct) for
        input ``x``, in that order."""
        return model.forward_intermediates(  # type: ignore[operator,no-any-return]
            x, indices=indices, intermediates_only=True)


def register(family: EncoderFamily) -> EncoderFamily:
    """Add ``family`` under its :attr:`~EncoderFamily.name` at run time; returns it.

    Raises:
        ValueError: the name is empty or already a family's.
    """
    if not family.name:
        raise ValueError(f"encoder family {type(family).__name__}: name is empty")
    if family.name in FAMILIES or family.name in _extra:
        raise ValueError(f"encoder family {family.name!r} is already registered")
    _extra[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family added by :func:`register` (a ``KeyError`` names an unknown one)."""
    if name not in _extra:
        raise KeyError(f"encoder family {name!r} was not added by register()")
    del _extra[name]


def names() -> list[str]:
    """Every family's name: the built-in ones, then those registered at run time."""
    return [*FAMILIES, *_extra]


def get_family(name: str) -> EncoderFamily:
    """The family called ``name`` (a zoo entry's ``family``).

    Raises:
        ValueError: no family has that name (listing those there are).
    """
    if name in _extra:
        return _extra[name]
    if name not in _loaded:
        if name not in FAMILIES:
            raise ValueError(f"family: {name!r} is not an encoder family ({', '.join(names())})")
        declared = FAMILIES[name]
        module, attr = declared.obj.split(":")
        family = getattr(importlib.import_module(module), attr)
        if not isinstance(family, EncoderFamily) or family.name != name:
            raise TypeError(f"FAMILIES[{name!r}]: {declared.obj} is not the EncoderFamily "
                            f"{name!r}")
        if tuple(family.adapter_targets) != declared.adapter_targets:
            raise TypeError(f"FAMILIES[{name!r}]: adapter_targets {declared.adapter_targets} but "
                            f"{declared.obj} says {tuple(family.adapter_targets)}")
        _loaded[name] = family
    return _loaded[name]


def adapter_targets(name: str) -> tuple[str, ...]:
    """The adapter targets of family ``name`` (:attr:`EncoderFamily.adapter_targets`), without
    loading a built-in family's module (its declaration says them).

    Raises:
        ValueError: no family has that name.
    """
    if name in _extra:
        return tuple(_extra[name].adapter_targets)
    if name not in FAMILIES:
        raise ValueError(f"family: {name!r} is not an encoder family ({', '.join(names())})")
    return FAMILIES[name].adapter_targets


def timm_files() -> dict[str, str]:
    """Family name -> the timm model file registering its architectures, of every timm family
    (:attr:`Declared.timm_file`); read without importing timm or torch."""
    return {name: d.timm_file for name, d in FAMILIES.items() if d.timm_file}


def family_of(model: nn.Module) -> EncoderFamily:
    """The family of a model built by :func:`geopeft.models.backbones.create_model` (which
    records it as ``model.encoder_family``).

    Raises:
        ValueError: the model records none.
    """
    name = getattr(model, "encoder_family", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(model).__name__}: no encoder_family recorded; build it with "
                         f"geopeft.models.backbones.create_model")
    return get_family(name)


def norm_rule(name: str) -> NormRule:
    """The normalisation rule ``name`` of whichever family declares it.

    Raises:
        ValueError: no family declares it (listing the rules there are).
    """
    rules = {r.name: r for f in names() for r in get_family(f).norm_rules}
    if name not in rules:
        raise ValueError(f"normalisation rule {name!r} is not one of {tuple(rules)}")
    return rules[name]


__all__ = ["ADAPTER_TARGETS", "FAMILIES", "Declared", "EncoderFamily", "NormRule", "Taps",
           "adapter_targets", "family_of", "get_family", "names", "norm_rule", "register",
           "timm_files", "unregister"]
