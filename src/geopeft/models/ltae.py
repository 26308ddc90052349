"""Lightweight Temporal Attention Encoder (L-TAE, Garnot & Landrieu 2020), pixel-wise.

Collapses the time axis of a feature time series ``(B, T, C, H, W)`` into one map
``(B, C_out, H, W)``, as the reference implementation (VSainteuf/utae-paps
``src/backbones/ltae.py``, also PANGAEA-bench's ``decoders/ltae.py``) does:

1. every pixel's sequence is group-normalised over its dates (``heads`` groups of channels) and
   projected to ``d_model`` channels (a 1x1 convolution);
2. a sinusoidal encoding of the acquisition day (period ``T`` = 1000, the encoding of
   ``d_model / heads`` channels repeated for every head) is added, unless
   ``positional_encoding`` is off (PANGAEA's multi-temporal UPerNet turns it off);
3. one learned *master query* per head attends the keys (a linear map of the sequence) with a
   temperature of ``sqrt(d_k)``; padded dates (``pad_mask``) get a score of -1000, so they get
   no weight; attention dropout 0.1;
4. the values are the ``d_model`` features split into ``heads`` groups (channel grouping): each
   head summarises its own share of the channels with its own weights over the dates;
5. the concatenated heads pass an MLP (``mlp`` widths, each layer linear + batch norm + ReLU),
   dropout, and a final group norm.

The attention weights ``(heads, B, T, H, W)`` are returned too: U-TAE uses them to collapse its
skip connections (:func:`aggregate_by_attention`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def day_encoding(days: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal encoding (..., dim) of acquisition days (...) as in the Transformer: channel
    ``i`` is ``sin`` (even ``i``) or ``cos`` (odd ``i``) of ``day / period ** (2 (i // 2) / dim)``."""
    half = torch.arange(dim, device=days.device) // 2
    freq = period ** (2 * half.float() / dim)
    angle = days.float()[..., None] / freq
    return torch.where(torch.arange(dim, device=days.device) % 2 == 0, torch.sin(angle),
                       torch.cos(angle))


class LTAE2d(nn.Module):
    """Pixel-wise L-TAE, as the reference.

    Args:
        in_channels: channels of the input maps.
        d_model: width of the attention (the input is projected to it); ``None`` keeps
            ``in_channels`` (no projection).
        heads: attention heads; must divide ``in_channels`` and ``d_model``.
        d_k: key / query width per head.
        mlp: widths of the MLP after the attention; the first must be ``d_model`` (``None``:
            ``[d_model, in_channels]``).
        dropout: dropout after the MLP (the reference's 0.2).
        attn_dropout: dropout on the attention weights (the reference's 0.1).
        period: period of the day encoding.
        positional_encoding: add the day encoding (U-TAE: on; PANGAEA's UPerNet: off).
    """

    def __init__(self, in_channels: int, d_model: int | None = 256, heads: int = 16,
                 d_k: int = 4, mlp: list[int] | None = None, dropout: float = 0.2,
                 attn_dropout: float = 0.1, period: float = 1000.0,
                 positional_encoding: bool = True):
        super().__init__()
        project = d_model is not None
        d_model = d_model or in_channels
        mlp = list(mlp or [d_model, in_channels])
        if in_channels % heads or d_model % heads:
            raise ValueError(f"L-TAE: {heads} heads must divide in_channels {in_channels} and "
                             f"d_model {d_model}")
        if mlp[0] != d_model:
            raise ValueError(f"L-TAE: the MLP's first width {mlp[0]} must be d_model {d_model}")
        self.heads, self.d_k, self.d_model, self.period = heads, d_k, d_model, float(period)
        self.positional_encoding = bool(positional_encoding)
        self.in_norm = nn.GroupNorm(heads, in_channels)
        # a 1x1 convolution, even to the same width (PANGAEA's shared L-TAE has one)
        self.in_proj: nn.Module = nn.Conv1d(in_channels, d_model, 1) if project else nn.Identity()
        self.query = nn.Parameter(torch.empty(heads, d_k))
        self.key = nn.Linear(d_model, heads * d_k)
        nn.init.normal_(self.query, mean=0.0, std=math.sqrt(2.0 / d_k))
        nn.init.normal_(self.key.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.attn_drop = nn.Dropout(attn_dropout)
        layers: list[nn.Module] = []
        for a, b in zip(mlp[:-1], mlp[1:], strict=True):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out_norm = nn.GroupNorm(heads, mlp[-1])

    def forward(self, x: torch.Tensor, days: torch.Tensor | None = None,
                pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, C, H, W), ``days`` (B, T) days since the reference date, ``pad_mask``
        (B, T) True at padded dates -> map (B, C_out, H, W), attention (heads, B, T, H, W)."""
        b, t, c, h, w = x.shape
        n = b * h * w
        seq = x.permute(0, 3, 4, 1, 2).reshape(n, t, c)  # one sequence per pixel
        seq = self.in_norm(seq.transpose(1, 2))  # (N, C, T): over each pixel's series
        seq = self.in_proj(seq).transpose(1, 2)  # (N, T, d_model)
        if self.positional_encoding:
            if days is None:
                raise ValueError("L-TAE: the positional encoding needs the acquisition days")
            pe = day_encoding(days, self.d_model // self.heads, self.period)
            pe = pe.repeat(1, 1, self.heads)  # (B, T, d_model)
            seq = seq + pe[:, None, None].expand(b, h, w, t, self.d_model).reshape(n, t, -1)
        k = self.key(seq).view(n, t, self.heads, self.d_k)
        att = torch.einsum("nthd,hd->nht", k, self.query) / math.sqrt(self.d_k)
        if pad_mask is not None:
            pm = pad_mask[:, None, None, None, :].expand(b, h, w, 1, t).reshape(n, 1, t)
            att = att.masked_fill(pm, -1e3)
        att = self.attn_drop(att.softmax(dim=-1))  # (N, heads, T)
        v = seq.view(n, t, self.heads, self.d_model // self.heads)
        out = torch.einsum("nht,nthc->nhc", att, v).reshape(n, self.d_model)
        out = self.out_norm(self.drop(self.mlp(out)))
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
        att = att.view(b, h, w, self.heads, t).permute(3, 0, 4, 1, 2)
        return out, att


def aggregate_by_attention(x: torch.Tensor, att: torch.Tensor,
                           pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Collapse time of ``x`` (B, T, C, H, W) with attention (heads, B, T, h, w), U-TAE's
    ``att_group`` mode: the channels are split into ``heads`` groups, each summed over T with its
    head's weights, resampled to H x W (bilinear up, average pooling down); padded dates
    (``pad_mask`` (B, T)) get weight 0."""
    heads, b, t, h, w = att.shape
    size = tuple(x.shape[-2:])
    if (h, w) != size:
        a = att.reshape(heads * b, t, h, w)
        if size[0] > h:
            a = nn.functional.interpolate(a, size=size, mode="bilinear", align_corners=False)
        else:
            a = nn.functional.avg_pool2d(a, kernel_size=h // size[0])
        att = a.view(heads, b, t, *size)
    if pad_mask is not None:
        att = att * (~pad_mask).to(att.dtype)[None, :, :, None, None]
    groups = x.view(b, t, heads, x.shape[2] // heads, *size)
    return torch.einsum("hbtyx,bthcyx->bhcyx", att, groups).reshape(b, x.shape[2], *size)


__all__ = ["LTAE2d", "aggregate_by_attention", "day_encoding"]
