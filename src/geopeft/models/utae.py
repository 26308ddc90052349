"""U-TAE (Garnot & Landrieu 2021): the fully supervised baseline of the time-series study.

The reference implementation is VSainteuf/utae-paps ``src/backbones/utae.py`` at its published
defaults (encoder widths 64 64 64 128, decoder widths 32 32 64 128, ``out_conv`` [32, classes],
strided convolutions k4 s2 p1, reflect padding, L-TAE with 16 heads, d_model 256, d_k 4,
``att_group`` aggregation); this module builds the same network, layer for layer (the parameter
count is pinned in ``tests/test_timeseries_models.py``: 1,086,969 for 10 bands and 19 classes):

* **encoder** (weights shared over dates; the B x T frames batched; padded dates skipped and
  left zero): an input block of two 3x3 conv + norm + ReLU layers; then per level a
  down block: a strided 4x4 conv + norm + ReLU, a 3x3 conv + norm + ReLU to the level's width,
  and a residual 3x3 conv + norm + ReLU (``out = c1 + c2(c1)``). The encoder's norm is
  ``GroupNorm(4)`` (``encoder_norm: group``, the reference's default; ``batch`` is the
  reference's other option);
* **temporal encoder**: an :class:`~geopeft.models.ltae.LTAE2d` on the lowest level (values
  from its d_model projection with the day encoding added, MLP d_model -> width, dropout 0.2);
  its attention masks, upsampled, collapse every skip connection by channel group
  (padded dates get weight 0);
* **decoder** (batch norm, as the reference): per level a transposed 4x4 conv + norm + ReLU, the
  skip through a 1x1 conv + norm + ReLU, concatenated, a 3x3 conv + norm + ReLU and a residual
  3x3 conv + norm + ReLU;
* **output**: two 3x3 conv + batch norm + ReLU layers (``out_conv``), the last to the classes.
  As in the reference, the class scores pass a batch norm and a ReLU.

Padded dates are found as the reference finds them: a date whose raw values are all 0 (the pad
value the loader writes, ``temporal.pad: mask``). Inputs are raw values (B, T, C, H, W)
normalised inside the model with the train split's statistics, plus acquisition days (B, T)
since the reference date.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from geopeft.models.ltae import LTAE2d, aggregate_by_attention
from geopeft.spec import ENCODER_NORMS


def _norm(kind: str, c: int) -> nn.Module:
    return nn.GroupNorm(4, c) if kind == "group" else nn.BatchNorm2d(c)


def conv_layers(widths: list[int], norm: str = "batch", k: int = 3, s: int = 1,
                p: int = 1) -> nn.Sequential:
    """Convolutions from ``widths[0]`` through each following width, each + norm + ReLU
    (reflect padding): the reference's ``ConvLayer``."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Conv2d(a, b, k, stride=s, padding=p, padding_mode="reflect"),
                   _norm(norm, b), nn.ReLU()]
    return nn.Sequential(*layers)


class DownBlock(nn.Module):
    """Strided conv (halves H and W), conv to the next width, residual conv."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.strided = conv_layers([c_in, c_in], norm, k=4, s=2, p=1)
        self.conv1 = conv_layers([c_in, c_out], norm)
        self.conv2 = conv_layers([c_out, c_out], norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.strided(x))
        return out + self.conv2(out)


class UpBlock(nn.Module):
    """Transposed conv (doubles H and W), the skip's 1x1 conv, conv of both, residual conv."""

    def __init__(self, c_in: int, c_out: int, c_skip: int):
        super().__init__()
        self.skip_conv = nn.Sequential(nn.Conv2d(c_skip, c_skip, 1), nn.BatchNorm2d(c_skip),
                                       nn.ReLU())
        self.upconv = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                                nn.BatchNorm2d(c_out), nn.ReLU())
        self.conv1 = conv_layers([c_out + c_skip, c_out])
        self.conv2 = conv_layers([c_out, c_out])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.cat([self.upconv(x), self.skip_conv(skip)], dim=1))
        return out + self.conv2(out)


def pad_mask_of(x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
    """(B, T) True where a date of ``x`` (B, T, C, H, W) holds only ``pad_value``."""
    return (x == pad_value).flatten(2).all(dim=-1)


def shared_over_dates(block: Callable[[torch.Tensor], Any], x: torch.Tensor,
                      pad: torch.Tensor | None) -> Any:
    """``block`` on every date of ``x`` (B, T, C, H, W) at once; padded dates are not run (their
    output is 0, the reference's pad value), so they cannot move batch statistics. ``block``
    returns a tensor (F, ...) or a list of them (one per feature level); so does this, each
    (B, T, ...)."""
    b, t = x.shape[:2]
    frames = x.flatten(0, 1)
    keep = None if pad is None or not bool(pad.any()) else ~pad.flatten()
    out = block(frames if keep is None else frames[keep])

    def per_date(part: torch.Tensor) -> torch.Tensor:
        if keep is not None:
            full = part.new_zeros((b * t, *part.shape[1:]))
            full[keep] = part
            part = full
        return part.view(b, t, *part.shape[1:])

    return [per_date(p) for p in out] if isinstance(out, list) else per_date(out)


class UTAE(nn.Module):
    """U-TAE for ``in_channels`` bands and ``num_classes`` classes (the reference network).

    Args:
        in_channels: bands of the input.
        num_classes: outputs (void excluded).
        mean: per-band mean in scaled units (raw x ``value_scale``), from the train split.
        std: per-band std in scaled units.
        value_scale: raw -> scaled factor of the store.
        encoder_widths: channels of the encoder levels (each after the first halves H and W).
        decoder_widths: channels of the decoder levels (same length; the last equals the
            encoder's last).
        ltae: L-TAE settings (``d_model``, ``heads``, ``d_k``, ``positional_encoding``);
            ``heads`` must divide the lowest level's width.
        out_conv: width of the output block's first conv (the second gives the classes).
        encoder_norm: ``group`` (GroupNorm(4), the reference) or ``batch``.
    """

    def __init__(self, in_channels: int, num_classes: int, mean: list[float], std: list[float],
                 value_scale: float, encoder_widths: tuple[int, ...] = (64, 64, 64, 128),
                 decoder_widths: tuple[int, ...] = (32, 32, 64, 128),
                 ltae: dict[str, Any] | None = None, out_conv: int = 32,
                 encoder_norm: str = "group"):
        super().__init__()
        e, d = list(encoder_widths), list(decoder_widths)
        if len(e) != len(d):
            raise ValueError("U-TAE: encoder_widths and decoder_widths need the same length")
        if e[-1] != d[-1]:
            raise ValueError(f"U-TAE: the last encoder width {e[-1]} and decoder width {d[-1]} "
                             f"must be equal")
        if encoder_norm not in ENCODER_NORMS:
            raise ValueError(f"U-TAE: encoder_norm {encoder_norm!r} is not one of {ENCODER_NORMS}")
        ltae = {"d_model": 256, "heads": 16, "d_k": 4, **(ltae or {})}
        self.value_scale = float(value_scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])
        self.depth = len(e)
        self.in_conv = conv_layers([in_channels, e[0], e[0]], encoder_norm)
        self.down = nn.ModuleList(DownBlock(e[i], e[i + 1], encoder_norm)
                                  for i in range(self.depth - 1))
        self.temporal = LTAE2d(e[-1], ltae["d_model"], ltae["heads"], ltae["d_k"],
                               mlp=[ltae["d_model"], e[-1]],
                               positional_encoding=ltae.get("positional_encoding", True))
        # up[i] takes level i + 1 to level i
        self.up = nn.ModuleList(UpBlock(d[i + 1], d[i], e[i]) for i in range(self.depth - 1))
        self.out_conv = conv_layers([d[0], out_conv, num_classes])

    def new_modules(self) -> list[str]:
        """Every module is trained from scratch (the whole network is the task's)."""
        return [n for n, _ in self.named_children()]

    def forward(self, x: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        pad = pad_mask_of(x)
        z = (x.float() * self.value_scale - self.mean) / self.std
        f = shared_over_dates(self.in_conv, z, pad)
        skips = [f]
        for down in self.down:
            f = shared_over_dates(down, f, pad)
            skips.append(f)
        out, att = self.temporal(f, days, pad_mask=pad)
        for i in range(self.depth - 2, -1, -1):
            out = self.up[i](out, aggregate_by_attention(skips[i], att, pad))
        return self.out_conv(out)


__all__ = ["ENCODER_NORMS", "UTAE", "conv_layers", "pad_mask_of", "shared_over_dates"]
