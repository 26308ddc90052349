"""The backbone zoo: which encoders geopeft knows, what each expects, and how to build them.

Every entry declares its architecture (timm's, or geopeft's own CROMA encoder,
:mod:`geopeft.models.croma`, family ``croma``), default weights (see
:mod:`geopeft.models.weights`), the bands and normalisation the weights expect, and the LoRA
target modules that make sense for it; its token grid and width follow from the built model
(:func:`token_grid`, :func:`width`).
``uv run geopeft backbones`` prints the table.

``backbone.name`` in a study is a registry key, or any timm ViT / Swin architecture name (then
the family follows from the name and the weights default to the study's ``pretrain``).

**Attention for LoRA.** timm fuses q, k and v into one ``qkv`` linear layer. :func:`split_qkv`
replaces it by three separate ``q``, ``k``, ``v`` layers holding the same weights (outputs are
identical), so that LoRA on ``q``/``k``/``v`` has its own rank-r update per projection. timm's
Swin-V2 attention calls ``F.linear`` on ``qkv.weight`` directly (its q/v biases live outside the
layer), which would silently bypass any adapter placed on ``qkv``; :func:`prepare_for_adapters`
switches it to calling the layer and adding the bias, with identical outputs. CROMA's encoder
(:mod:`geopeft.models.croma`) calls its fused projection ``qkv`` as well (the published
``to_qkv``, renamed when loading), so the same split applies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geopeft.models.weights import WeightsError
from geopeft.models.zoo import (
    CROMA_S2_BANDS,
    REGISTRY,
    SSL4EO_S2_BANDS,
    BackboneEntry,
    entry_for,
    resolve,
)
from geopeft.spec import ConfigError

__all__ = ["CROMA_S2_BANDS", "REGISTRY", "SSL4EO_S2_BANDS", "BackboneEntry", "SplitQKV",
           "create_model", "describe", "entry_for", "fused_lora_qkv", "input_size",
           "prepare_for_adapters", "resolve", "split_qkv", "token_grid", "tokens", "width"]


def create_model(bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
    """A model of the backbone (no weights) for ``in_chans`` bands and ``num_classes``: timm's,
    or :class:`~geopeft.models.croma.CROMAOptical` for family ``croma``.

    Raises:
        WeightsError: the name is neither a zoo backbone nor a timm model.
        ConfigError: ``backbone.kwargs`` a CROMA encoder cannot take (naming the key).
    """
    bb = resolve(bb)
    if bb["family"] == "croma":
        from geopeft.models.croma import CROMAOptical

        try:
            return CROMAOptical(in_chans=in_chans, num_classes=num_classes, **bb["kwargs"])
        except TypeError as err:  # an unknown keyword
            raise ConfigError(f"backbone.kwargs: {bb['name']}: {err}") from None
        except ValueError as err:  # "<key>: <value> ..."
            raise ConfigError(f"backbone.kwargs.{err} ({bb['name']})") from None
    import timm

    try:
        return timm.create_model(bb["arch"], pretrained=False, in_chans=in_chans,
                                 num_classes=num_classes, **bb["kwargs"])
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise WeightsError(f"backbone.name: {bb['name']!r} is neither a registry backbone "
                               f"({', '.join(REGISTRY)}) nor a timm model") from None
        raise


class SplitQKV(nn.Module):
    """Three linear projections q, k, v whose concatenated output equals a fused ``qkv``.

    When all three carry plain LoRA adapters (HF peft, not merged), the forward pass computes
    them fused, as timm's one ``qkv`` layer and as LoRA's reference implementation for a fused
    projection (microsoft/LoRA, ``loralib.MergedLinear``): one GEMM with the three frozen
    weights, one dropout of the shared input, one GEMM with the three ``lora_A`` stacked and one
    with the three ``lora_B`` (scaled) on the block diagonal. Same parameters (the adapters stay
    peft's, saved and merged as before) and, without dropout, the same outputs and gradients as
    calling the three layers; in training the three adapters see one dropout mask of their
    common input instead of three. It saves two of the three dropout masks (the costliest part
    of LoRA's overhead on a CPU) and most of the small GEMMs (:func:`fused_lora_qkv`).
    """

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        dim_in, dim_out = qkv.in_features, qkv.out_features // 3
        bias = qkv.bias is not None
        for i, name in enumerate(("q", "k", "v")):
            lin = nn.Linear(dim_in, dim_out, bias=bias)
            with torch.no_grad():
                lin.weight.copy_(qkv.weight[i * dim_out : (i + 1) * dim_out])
                if bias:
                    lin.bias.copy_(qkv.bias[i * dim_out : (i + 1) * dim_out])
            setattr(self, name, lin)
        self.fused = True
        """False: call the three layers one by one even with plain LoRA (the benchmark's
        baseline, ``bench/lora_cost.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_lora_qkv((self.q, self.k, self.v), x) if self.fused else None
        if fused is not None:
            return fused
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _plain_lora(parts: tuple[nn.Module, ...]) -> list[str] | None:
    """The adapters to apply when ``parts`` are all peft LoRA linear layers with the same
    active, unmerged, plain (no DoRA), bias-free adapters and one dropout rate; else None."""
    adapters: list[str] | None = None
    for p in parts:
        if type(p).__name__ != "Linear" or not type(p).__module__.startswith("peft.tuners.lora"):
            return None
        if p.disable_adapters or p.merged or type(p.base_layer) is not nn.Linear:
            return None
        active = [a for a in p.active_adapters if a in p.lora_A]
        if adapters is None:
            adapters = active
        if active != adapters or any(a in p.lora_variant for a in active):
            return None
        for a in active:
            if p.lora_A[a].bias is not None or p.lora_B[a].bias is not None:
                return None
    for a in adapters or []:
        if len({getattr(p.lora_dropout[a], "p", 0.0) for p in parts}) != 1:
            return None
    return adapters


def fused_lora_qkv(parts: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor | None:
    """q, k and v (peft LoRA layers) applied to ``x`` as one fused projection, concatenated;
    None when they are not all plain LoRA layers (then each is called on its own)."""
    import torch.nn.functional as F

    adapters = _plain_lora(parts)
    if adapters is None:
        return None
    bases = [p.base_layer for p in parts]
    bias = None if any(b.bias is None for b in bases) else torch.cat([b.bias for b in bases])
    out = F.linear(x, torch.cat([b.weight for b in bases]), bias)
    shape = out.shape
    out = out.reshape(-1, shape[-1])
    for a in adapters:
        h = F.linear(parts[0].lora_dropout[a](x), torch.cat([p.lora_A[a].weight for p in parts]))
        up = torch.block_diag(*[p.lora_B[a].weight * p.scaling[a] for p in parts])
        out = torch.addmm(out, h.reshape(-1, h.shape[-1]), up.t())  # out + h @ up^T, one pass
    return out.view(shape)


def split_qkv(model: nn.Module) -> int:
    """Replace every fused ``qkv`` linear layer by :class:`SplitQKV`; returns how many."""
    n = 0
    for module in model.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
            module.qkv = SplitQKV(qkv)
            n += 1
    return n


def prepare_for_adapters(model: nn.Module) -> int:
    """Make every attention call its projection layers (Swin-V2), then split q/k/v.

    Returns the number of attention layers split. Outputs are unchanged.
    """
    for module in model.modules():
        if hasattr(module, "qkv_bias_separate") and getattr(module, "q_bias", None) is not None:
            module.qkv_bias_separate = True  # qkv(x) + cat(q_bias, k_bias, v_bias)
    return split_qkv(model)


def width(model: nn.Module) -> int:
    """Channels of the encoder's output tokens."""
    return int(model.num_features)  # type: ignore[arg-type]


def token_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the encoder's output token grid for its configured input size."""
    pe = model.patch_embed  # type: ignore[attr-defined]
    grid = tuple(int(g) for g in pe.grid_size)
    if hasattr(model, "layers"):  # Swin: every stage after the first halves the grid
        k = 2 ** (len(model.layers) - 1)  # type: ignore[arg-type]
        grid = (grid[0] // k, grid[1] // k)
    return grid  # type: ignore[return-value]


def input_size(model: nn.Module) -> int | None:
    """The square input side a model was built for (None if it takes any size)."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return int(size[0]) if size is not None else None


def tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Final-stage output tokens (B, N, D), normalised, without class/register tokens."""
    f = model.forward_features(x)  # type: ignore[operator]
    if f.ndim == 4:  # Swin: (B, H, W, C)
        return f.flatten(1, 2)
    return f[:, getattr(model, "num_prefix_tokens", 0):]


def _normalisation(e: BackboneEntry) -> str:
    if e.norm_rule == "croma_2sigma":
        return "data mean +- 2 std -> [0, 1]"
    return "DN/10000" if e.norm and set(e.norm[0]) == {0.0} else "weights' own mean/std"


def describe() -> list[dict[str, Any]]:
    """One row per registry entry: family, architecture, weights, bands, norm, grid, width."""
    rows = []
    for e in REGISTRY.values():
        with torch.device("meta"):
            m = create_model({"name": e.key}, len(e.bands) if e.bands else 3, 0)
        rows.append({
            "name": e.key, "family": e.family, "arch": e.arch, "weights": e.weights,
            "bands": " ".join(e.bands) if e.bands else "(as pretrained)",
            "normalisation": _normalisation(e),
            "input": input_size(m), "grid": "x".join(map(str, token_grid(m))), "width": width(m),
            "lora_targets": ",".join(e.lora_targets), "description": e.description,
        })
    return rows
