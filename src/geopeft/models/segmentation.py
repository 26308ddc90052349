"""Multi-temporal semantic segmentation with a foundation-model encoder: UPerNet + L-TAE.

The encoder (a ViT or Swin of the zoo) runs on every date: the B x T frames are batched and
cut into chunks of ``encoder_chunk`` frames, so memory stays bounded (a frozen encoder runs
without autograd; a trained one with ``checkpoint`` recomputes each chunk's activations in the
backward pass instead of keeping them). Four feature levels are taken from the encoder (ViT:
evenly spaced blocks, or ``out_indices``; Swin: its four stages); an
:class:`~geopeft.models.ltae.LTAE2d` per level collapses time at the token grid; a ViT's
single-scale levels become a pyramid (x4, x2, x1, x1/2) and a UPerNet head (pyramid pooling on
the coarsest level, FPN top-down path, fusion of all levels) predicts per-pixel logits, upsampled
to the input size. Normalisation is inside the model (the encoder weights' own, e.g. DN/10000
for SSL4EO-S12). Bands the weights have but the data lacks (SSL4EO-S12's B01, B09, B10 on PASTIS)
are zero-filled: their patch-embedding channels are dropped, which is the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones
from geopeft.models.classifier import check_input_size, resolve_norm
from geopeft.models.ltae import LTAE2d
from geopeft.models.utae import UTAE
from geopeft.models.weights import Normalization, load_into, load_weights
from geopeft.spec import ConfigError

MODELS = ("upernet_ltae", "utae")


@dataclass
class SegConfig:
    """Settings of a time-series segmentation model (``strategies.<name>.segmentation``)."""

    model: str = "upernet_ltae"
    """``upernet_ltae`` (encoder of the zoo + L-TAE + UPerNet) or ``utae`` (supervised U-TAE)."""
    channels: int = 256
    """UPerNet channels."""
    out_indices: list[int] | None = None
    """ViT blocks whose tokens feed the decoder (None: four evenly spaced, the last included)."""
    ltae: dict[str, int] = field(default_factory=lambda: {"d_model": 128, "heads": 8, "d_k": 4})
    """L-TAE settings (``d_model``, ``heads``, ``d_k``)."""
    encoder_chunk: int = 64
    """Frames the encoder processes at once."""
    checkpoint: bool = True
    """Recompute a trained encoder's activations per chunk in the backward pass (less memory)."""
    encoder_widths: list[int] = field(default_factory=lambda: [64, 64, 64, 128])
    """U-TAE encoder channels per level."""
    decoder_widths: list[int] = field(default_factory=lambda: [32, 32, 64, 128])
    """U-TAE decoder channels per level."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SegConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"segmentation: unknown key(s) {sorted(unknown)}")
        if d.get("model", "upernet_ltae") not in MODELS:
            raise ValueError(f"segmentation.model: {d['model']!r} is not one of {MODELS}")
        if "ltae" in d:
            d["ltae"] = {"d_model": 128, "heads": 8, "d_k": 4, **d["ltae"]}
        return cls(**d)


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                         nn.GroupNorm(min(32, c_out // 4) or 1, c_out), nn.ReLU())


class PyramidNeck(nn.Module):
    """Single-scale ViT levels -> a pyramid: x4 (two transposed convs), x2, x1, x1/2."""

    def __init__(self, dims: list[int]):
        super().__init__()
        def up(d: int) -> nn.Module:
            return nn.ConvTranspose2d(d, d, 2, stride=2)

        self.scales = nn.ModuleList([
            nn.Sequential(up(dims[0]), nn.GroupNorm(1, dims[0]), nn.GELU(), up(dims[0])),
            up(dims[1]), nn.Identity(), nn.MaxPool2d(2)])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.scales, feats, strict=True)]


class UPerHead(nn.Module):
    """UPerNet decoder: pyramid pooling on the coarsest level, FPN, fusion, per-pixel classes."""

    def __init__(self, dims: list[int], channels: int, num_classes: int,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(dims[-1], channels, 1))
                                 for s in pool_scales)
        self.bottleneck = _conv(dims[-1] + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(_conv(d, channels, 1) for d in dims[:-1])
        self.fpn = nn.ModuleList(_conv(channels, channels) for _ in dims[:-1])
        self.fuse = _conv(len(dims) * channels, channels)
        self.drop = nn.Dropout2d(0.1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        pooled = [F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False)
                  for p in self.ppm]
        lat = [conv(f) for conv, f in zip(self.lateral, feats[:-1], strict=True)]
        lat.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:],
                                                    mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:-1], strict=True)] + [lat[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                            for o in outs[1:]]
        return self.cls(self.drop(self.fuse(torch.cat(outs, dim=1))))


class LevelTAE(nn.Module):
    """One L-TAE per feature level (a module, not a list: peft saves it as one new module)."""

    def __init__(self, dims: list[int], ltae: dict[str, int]):
        super().__init__()
        self.levels = nn.ModuleList(LTAE2d(d, ltae["d_model"], ltae["heads"], ltae["d_k"])
                                    for d in dims)

    def forward(self, levels: list[torch.Tensor], days: torch.Tensor) -> list[torch.Tensor]:
        return [m(f, days)[0] for m, f in zip(self.levels, levels, strict=True)]


class UPerNetLTAE(nn.Module):
    """Encoder per date -> L-TAE per level -> UPerNet; raw (B, T, C, H, W) + days (B, T) in,
    logits (B, classes, H, W) out."""

    def __init__(self, encoder: nn.Module, family: str, norm: Normalization, value_scale: float,
                 num_classes: int, cfg: SegConfig, input_size: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.family = family
        self.value_scale = float(value_scale)
        self.input_size = input_size
        self.chunk = max(1, int(cfg.encoder_chunk))
        self.use_checkpoint = bool(cfg.checkpoint)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32)[:, None, None])
        if family == "swin":
            self.indices = list(range(len(encoder.layers)))  # type: ignore[arg-type]
            dims = [int(f["num_chs"]) for f in encoder.feature_info]  # type: ignore[union-attr]
            self.pyramid: nn.Module = nn.Identity()
        else:
            depth = len(encoder.blocks)  # type: ignore[arg-type]
            # four evenly spaced blocks, the last included (a shallow ViT repeats blocks)
            self.indices = list(cfg.out_indices or
                                [max(0, round((i + 1) * depth / 4) - 1) for i in range(4)])
            if len(self.indices) != 4 or max(self.indices) >= depth or min(self.indices) < 0:
                raise ValueError(f"segmentation.out_indices: {self.indices}: four block indices "
                                 f"of 0..{depth - 1} are needed")
            dims = [backbones.width(encoder)] * 4
            self.pyramid = PyramidNeck(dims)
        self.ltae = LevelTAE(dims, cfg.ltae)
        self.upernet = UPerHead(dims, cfg.channels, num_classes)

    def new_modules(self) -> list[str]:
        """The decoder: L-TAE per level, the pyramid neck (ViT) and the UPerNet head."""
        return ["ltae", "upernet"] + ([] if isinstance(self.pyramid, nn.Identity) else ["pyramid"])

    def _encode(self, frames: torch.Tensor) -> list[torch.Tensor]:
        unique = sorted(set(self.indices))
        feats = self.encoder.forward_intermediates(  # type: ignore[operator]
            frames, indices=unique, intermediates_only=True)
        return [feats[unique.index(i)] for i in self.indices]

    def encode(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Features of every frame (F, C, H, W), chunk by chunk; returns one tensor per level."""
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.encoder.parameters())
        parts: list[list[torch.Tensor]] = []
        for i in range(0, len(z), self.chunk):
            part = z[i : i + self.chunk]
            if not trains:
                with torch.no_grad():
                    parts.append(self._encode(part))
            elif self.use_checkpoint and len(z) > self.chunk:
                parts.append(checkpoint(self._encode, part, use_reentrant=False))
            else:
                parts.append(self._encode(part))
        return [torch.cat([p[k] for p in parts]) for k in range(len(self.indices))]

    def forward(self, x: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        z = (x.float().flatten(0, 1) * self.value_scale - self.mean) / self.std
        if self.input_size and (h, w) != (self.input_size, self.input_size):
            z = F.interpolate(z, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        levels = [f.view(b, t, *f.shape[1:]) for f in self.encode(z)]
        logits = self.upernet(self.pyramid(self.ltae(levels, days)))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def build_segmenter(backbone_cfg: dict[str, Any] | None, store: StoreInfo, num_classes: int,
                    seg: dict[str, Any] | None, pretrain_dir: Path | None = None,
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The segmentation model of a row: U-TAE, or UPerNet + L-TAE on the zoo backbone.

    Returns the model and a description (weights, normalisation) for the run record.

    Args:
        backbone_cfg: the encoder's config (None for U-TAE).
        store: the store's description.
        num_classes: outputs (void excluded).
        seg: the row's ``segmentation`` settings (:class:`SegConfig`).
        pretrain_dir: the embedded pretrained backbone.
    """
    try:
        cfg = SegConfig.from_dict(seg)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    s = store.value_scale
    if cfg.model == "utae":
        levels = len(cfg.encoder_widths)
        h = store.image_size[0] if store.image_size else 0
        if h % 2 ** (levels - 1):
            raise ConfigError(f"segmentation.encoder_widths: {levels} U-TAE levels need a patch "
                              f"side divisible by {2 ** (levels - 1)}; {store.path} has {h}")
        mean, std = [m * s for m in store.norm_mean], [d * s for d in store.norm_std]
        try:
            model: nn.Module = UTAE(len(store.bands), num_classes, mean, std, s,
                                     tuple(cfg.encoder_widths), tuple(cfg.decoder_widths),
                                     cfg.ltae)
        except ValueError as err:
            raise ConfigError(f"segmentation: {err}") from None
        return model, {"weights": "none", "norm_mean": mean, "norm_std": std,
                       "bands": store.bands, "segmentation": cfg.__dict__}
    if backbone_cfg is None:
        raise ConfigError("segmentation.model upernet_ltae needs a backbone")
    bb = backbones.resolve(backbone_cfg)
    weights = load_weights(bb, pretrain_dir)
    encoder = backbones.create_model(bb, len(store.bands), 0)
    if weights is not None:
        load_into(encoder, weights, store.bands)
    backbones.prepare_for_adapters(encoder)
    check_input_size(encoder, bb.get("input_size"), store)
    norm = resolve_norm(bb["normalize"], weights.norm if weights else None, store)
    try:
        model = UPerNetLTAE(encoder, bb["family"], norm, s, num_classes, cfg,
                            bb.get("input_size"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    info = {"weights": weights.origin if weights else "none", "norm_mean": norm.mean,
            "norm_std": norm.std, "bands": store.bands, "segmentation": cfg.__dict__}
    return model, info

__all__ = ["MODELS", "SegConfig", "UPerNetLTAE", "build_segmenter"]
