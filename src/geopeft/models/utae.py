"""U-TAE (Garnot & Landrieu 2021): the fully supervised baseline of the time-series study.

A U-Net whose encoder runs on every date (shared weights, the B x T frames batched); at the
lowest resolution an :class:`~geopeft.models.ltae.LTAE2d` collapses time and produces attention
masks, which (upsampled) collapse the skip connections of every other level by channel group;
the decoder then upsamples as a U-Net. Inputs are raw values (B, T, C, H, W) normalised inside
the model with the train split's statistics, plus acquisition days (B, T).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from geopeft.models.ltae import LTAE2d, aggregate_by_attention


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm (statistics over all B x T frames of a batch: a
    per-frame group norm would erase each date's overall brightness, and trained markedly slower
    on the embedded world) and ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect"),
                         nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode="reflect"),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class UTAE(nn.Module):
    """U-TAE for ``in_channels`` bands and ``num_classes`` classes.

    Args:
        encoder_widths: channels of the encoder levels (each after the first halves H and W).
        decoder_widths: channels of the decoder levels (same length).
        ltae: L-TAE settings (``d_model``, ``heads``, ``d_k``); ``heads`` must divide every
            encoder width.
    """

    def __init__(self, in_channels: int, num_classes: int, mean: list[float], std: list[float],
                 value_scale: float, encoder_widths: tuple[int, ...] = (64, 64, 64, 128),
                 decoder_widths: tuple[int, ...] = (32, 32, 64, 128),
                 ltae: dict[str, Any] | None = None):
        super().__init__()
        if len(encoder_widths) != len(decoder_widths):
            raise ValueError("U-TAE: encoder_widths and decoder_widths need the same length")
        ltae = {"d_model": 256, "heads": 16, "d_k": 4, **(ltae or {})}
        self.value_scale = float(value_scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])
        e, d = list(encoder_widths), list(decoder_widths)
        self.depth = len(e)
        self.inc = conv_block(in_channels, e[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(e[i], e[i], 4, stride=2, padding=1), conv_block(e[i], e[i + 1]))
            for i in range(self.depth - 1))
        self.temporal = LTAE2d(e[-1], ltae["d_model"], ltae["heads"], ltae["d_k"], d[-1])
        self.up = nn.ModuleList(
            nn.ModuleDict({"upconv": nn.ConvTranspose2d(d[i + 1], d[i], 4, stride=2, padding=1),
                           "skip": nn.Conv2d(e[i], d[i], 1), "conv": conv_block(2 * d[i], d[i])})
            for i in range(self.depth - 1))
        self.classifier = nn.Sequential(conv_block(d[0], d[0]), nn.Conv2d(d[0], num_classes, 1))

    def new_modules(self) -> list[str]:
        """Every module is trained from scratch (the whole network is the task's)."""
        return [n for n, _ in self.named_children()]

    def forward(self, x: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        z = (x.float() * self.value_scale - self.mean) / self.std
        f = self.inc(z.flatten(0, 1))
        skips = [f]
        for down in self.down:
            f = down(f)
            skips.append(f)
        low = f.view(b, t, *f.shape[1:])
        out, att = self.temporal(low, days)
        for i in range(self.depth - 2, -1, -1):
            s = skips[i]
            s = aggregate_by_attention(s.view(b, t, *s.shape[1:]), att)
            up = self.up[i]
            out = up["conv"](torch.cat([up["upconv"](out), up["skip"](s)], dim=1))
        return self.classifier(out)


__all__ = ["UTAE"]
