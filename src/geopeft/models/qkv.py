"""Fused q/k/v projections made adaptable: :class:`SplitQKV` and the Swin-V2 bias fix.

timm fuses q, k and v into one ``qkv`` linear layer. :func:`split_qkv` replaces it by three
separate ``q``, ``k``, ``v`` layers holding the same weights (outputs are identical), so that LoRA
on ``q``/``k``/``v`` has its own rank-r update per projection. timm's Swin-V2 attention calls
``F.linear`` on ``qkv.weight`` directly (its q/v biases live outside the layer), which would
silently bypass any adapter placed on ``qkv``; :func:`separate_qkv_bias` switches it to calling
the layer and adding the bias, with identical outputs. Each encoder family says which of them
its models need (:meth:`geopeft.models.families.EncoderFamily.prepare_for_adapters`).
"""

from __future__ import annotations

import torch
from torch import nn


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


def separate_qkv_bias(model: nn.Module) -> None:
    """Make every attention that applies ``qkv.weight`` with a bias kept outside the layer
    (timm's Swin-V2: ``q_bias``, ``v_bias``) call the layer and add the bias; outputs unchanged."""
    for module in model.modules():
        if hasattr(module, "qkv_bias_separate") and getattr(module, "q_bias", None) is not None:
            module.qkv_bias_separate = True  # qkv(x) + cat(q_bias, k_bias, v_bias)


__all__ = ["SplitQKV", "fused_lora_qkv", "separate_qkv_bias", "split_qkv"]
