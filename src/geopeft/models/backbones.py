"""The backbone zoo: which encoders geopeft knows, what each expects, and how to build them.

Every entry declares its architecture (timm's, or geopeft's own CROMA encoder,
:mod:`geopeft.models.croma`, family ``croma``), default weights (see
:mod:`geopeft.models.weights`), the bands and normalisation the weights expect, and the LoRA
target modules that make sense for it; its token grid and width follow from the built model
(:func:`token_grid`, :func:`width`).
``uv run geopeft backbones`` prints the table.

``backbone.name`` in a study is a registry key, or any timm ViT / Swin architecture name (then
the family follows from the name and the weights default to the study's ``pretrain``).

What a model of the zoo needs beyond its declaration is its **encoder family**'s
(:mod:`geopeft.models.families`: timm's ``vit`` and ``swin``, :mod:`geopeft.models.families_timm`;
``croma``, :mod:`geopeft.models.croma`): :func:`create_model` asks it to build the model and
records it on the model, so that :func:`width`, :func:`token_grid`, :func:`input_size` and
:func:`tokens` ask it too.

**Attention for LoRA.** timm fuses q, k and v into one ``qkv`` linear layer; :func:`split_qkv`
(:mod:`geopeft.models.qkv`) replaces it by three separate ``q``, ``k``, ``v`` layers with the
same outputs, so that LoRA on ``q``/``k``/``v`` has its own rank-r update per projection, and
each family's :meth:`~geopeft.models.families.EncoderFamily.prepare_for_adapters` applies what
its attention needs (Swin-V2: its q/v biases added after the layer first). CROMA's encoder calls
its fused projection ``qkv`` as well (the published ``to_qkv``, renamed when loading).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geopeft.models.families import family_of, get_family, norm_rule
from geopeft.models.qkv import SplitQKV, fused_lora_qkv, separate_qkv_bias, split_qkv
from geopeft.models.weights import WeightsError
from geopeft.models.zoo import (
    CROMA_S2_BANDS,
    REGISTRY,
    SSL4EO_S2_BANDS,
    BackboneEntry,
    entry_for,
    resolve,
)

__all__ = ["CROMA_S2_BANDS", "REGISTRY", "SSL4EO_S2_BANDS", "BackboneEntry", "SplitQKV",
           "create_model", "describe", "entry_for", "fused_lora_qkv", "input_size",
           "prepare_for_adapters", "resolve", "split_qkv", "token_grid", "tokens", "width"]


def create_model(bb: dict[str, Any], in_chans: int, num_classes: int,
                 bands: list[str] | None = None) -> nn.Module:
    """A model of the backbone (no weights) for ``in_chans`` bands and ``num_classes``, built by
    its encoder family (:meth:`EncoderFamily.create`: timm's, or
    :class:`~geopeft.models.croma.CROMAOptical` for family ``croma``), which it records as
    ``model.encoder_family``.

    Raises:
        WeightsError: the name is neither a zoo backbone nor a timm model.
        ConfigError: ``backbone.kwargs`` the family's model cannot take (naming the key).
    """
    try:
        bb = resolve(bb)
    except ValueError as err:  # a name neither the zoo nor a timm family knows
        raise WeightsError(f"backbone.name: {err}") from None
    if bands is not None:  # the data's bands, for a family whose model depends on them
        if len(bands) != in_chans:
            raise ValueError(f"create_model: {len(bands)} band names for {in_chans} channels")
        bb = {**bb, "data_bands": list(bands)}
    model = get_family(bb["family"]).create(bb, in_chans, num_classes)
    model.encoder_family = bb["family"]
    return model


def prepare_for_adapters(model: nn.Module) -> int:
    """Make every attention call its projection layers (Swin-V2), then split q/k/v, for any
    model (a zoo model's family does what it needs: ``get_family(...).prepare_for_adapters``).

    Returns the number of attention layers split. Outputs are unchanged.
    """
    separate_qkv_bias(model)
    return split_qkv(model)


def width(model: nn.Module) -> int:
    """Channels of the encoder's output tokens (:meth:`EncoderFamily.width`)."""
    return family_of(model).width(model)


def token_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the encoder's output token grid for its configured input size
    (:meth:`EncoderFamily.token_grid`)."""
    return family_of(model).token_grid(model)


def input_size(model: nn.Module) -> int | None:
    """The square input side a model was built for, None if it takes any size
    (:meth:`EncoderFamily.input_size`)."""
    return family_of(model).input_size(model)


def tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Final-stage output tokens (B, N, D), normalised, without class/register tokens
    (:meth:`EncoderFamily.tokens`)."""
    return family_of(model).tokens(model, x)


def _normalisation(e: BackboneEntry) -> str:
    if e.norm_rule:
        return norm_rule(e.norm_rule).description
    if e.norm:
        return "DN/10000" if set(e.norm[0]) == {0.0} else "weights' own mean/std"
    if e.weights.startswith("url:"):  # a published file that declares none: z-scored
        return "the data's train mean/std"
    return "weights' own mean/std" if e.weights.startswith("timm:") else "as pretrained"


def _bands(e: BackboneEntry) -> str:
    if e.bands:
        return " ".join(e.bands)
    if get_family(e.family).input_conv is None:  # a kernel generated for the data's bands
        return "any Sentinel-2 bands"
    return "(as pretrained)"


def _input(m: nn.Module) -> int | str:
    """The input side a model was built for, or the sides it takes (a convolutional net)."""
    family = family_of(m)
    size = family.input_size(m)
    if size is not None:
        return size
    multiple = family.size_multiple(m)
    return f"any x{multiple}" if multiple else "any"


def describe() -> list[dict[str, Any]]:
    """One row per registry entry: family, architecture, weights, bands, norm, grid, width."""
    rows = []
    for e in REGISTRY.values():
        with torch.device("meta"):
            m = create_model({"name": e.key}, len(e.bands) if e.bands else 3, 0)
        rows.append({
            "name": e.key, "family": e.family, "arch": e.arch, "weights": e.weights,
            "bands": _bands(e), "normalisation": _normalisation(e),
            "input": _input(m), "grid": "x".join(map(str, token_grid(m))), "width": width(m),
            "lora_targets": ",".join(e.targets()), "description": e.description,
        })
    return rows
