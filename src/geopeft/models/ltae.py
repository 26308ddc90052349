"""Lightweight Temporal Attention Encoder (L-TAE, Garnot & Landrieu 2020), pixel-wise.

Collapses the time axis of a feature time series ``(B, T, C, H, W)`` into one map
``(B, C_out, H, W)``: every pixel's sequence is projected to ``d_model`` channels, given a
sinusoidal encoding of its acquisition day, and attended by one learned *master query* per head;
the values are the input channels split into ``heads`` groups (channel grouping), so each head
summarises its own share of the channels with its own attention over the dates. The attention
weights (heads, B, T, H, W) are returned too: U-TAE reuses them to collapse its skip connections.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def day_encoding(days: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal encoding (..., dim) of acquisition days (...) as in the Transformer."""
    half = torch.arange(dim, device=days.device) // 2
    freq = period ** (2 * half.float() / dim)
    angle = days.float()[..., None] / freq
    return torch.where(torch.arange(dim, device=days.device) % 2 == 0, torch.sin(angle),
                       torch.cos(angle))


class LTAE2d(nn.Module):
    """Pixel-wise L-TAE.

    Args:
        in_channels: channels of the input maps.
        d_model: width of the attention (input projected to it, with the day encoding added).
        heads: attention heads (``in_channels`` is split into ``heads`` groups of values).
        d_k: key / query width per head.
        out_channels: channels of the output map (``None``: ``in_channels``).
        dropout: attention dropout.
    """

    def __init__(self, in_channels: int, d_model: int = 128, heads: int = 8, d_k: int = 4,
                 out_channels: int | None = None, dropout: float = 0.1):
        super().__init__()
        if in_channels % heads or d_model % heads:
            raise ValueError(f"L-TAE: {heads} heads must divide in_channels {in_channels} and "
                             f"d_model {d_model}")
        self.heads, self.d_k, self.d_model = heads, d_k, d_model
        out_channels = out_channels or in_channels
        self.in_norm = nn.GroupNorm(heads, in_channels)
        self.in_proj = nn.Linear(in_channels, d_model)
        self.query = nn.Parameter(torch.randn(heads, d_k) * d_k**-0.5)
        self.key = nn.Linear(d_model, heads * d_k)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels),
                                 nn.ReLU())
        self.out_norm = nn.GroupNorm(math.gcd(heads, out_channels), out_channels)

    def forward(self, x: torch.Tensor, days: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, C, H, W), ``days`` (B, T) -> map (B, C_out, H, W), attention
        (heads, B, T, H, W)."""
        b, t, c, h, w = x.shape
        seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)  # one sequence per pixel
        seq = self.in_norm(seq.transpose(1, 2)).transpose(1, 2)  # over each pixel's series
        pe = day_encoding(days, self.d_model // self.heads).repeat(1, 1, self.heads)  # (B, T, d)
        pe = pe[:, None, None].expand(b, h, w, t, self.d_model).reshape(b * h * w, t, self.d_model)
        k = self.key(self.in_proj(seq) + pe).view(b * h * w, t, self.heads, self.d_k)
        att = torch.einsum("nthd,hd->nht", k, self.query) / math.sqrt(self.d_k)
        att = self.drop(att.softmax(dim=-1))  # (N, heads, T)
        v = seq.view(b * h * w, t, self.heads, c // self.heads)
        out = torch.einsum("nht,nthc->nhc", att, v).reshape(b * h * w, c)
        out = self.out_norm(self.mlp(out)).view(b, h, w, -1).permute(0, 3, 1, 2)
        att = att.view(b, h, w, self.heads, t).permute(3, 0, 4, 1, 2)
        return out, att


def aggregate_by_attention(x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """Collapse time of ``x`` (B, T, C, H, W) with attention (heads, B, T, h, w): the channels
    are split into ``heads`` groups, each averaged over T with its head's weights (upsampled to
    H x W)."""
    heads, b, t, h, w = att.shape
    size = x.shape[-2:]
    if (h, w) != tuple(size):
        att = nn.functional.interpolate(att.reshape(heads * b, t, h, w), size=size,
                                        mode="bilinear", align_corners=False)
        att = att.view(heads, b, t, *size)
    groups = x.view(b, t, heads, x.shape[2] // heads, *size)
    return torch.einsum("hbtyx,bthcyx->bhcyx", att, groups).reshape(b, x.shape[2], *size)


__all__ = ["LTAE2d", "aggregate_by_attention", "day_encoding"]
