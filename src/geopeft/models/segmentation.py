"""Multi-temporal semantic segmentation with a foundation-model encoder: PANGAEA's UPerNet + L-TAE.

``upernet_ltae`` is PANGAEA-bench's ``seg_upernet_mt_ltae`` decoder (``SegMTUPerNet`` in
``pangaea/decoders/upernet.py``) around an encoder of the zoo:

* the encoder runs on every date but padded ones (the B x T frames batched, cut into chunks
  of ``encoder_chunk`` frames so that memory stays bounded: a frozen encoder runs without
  autograd, a trained one with ``checkpoint`` recomputes each chunk's activations in the
  backward pass); four feature
  levels are tapped, as the encoder's family says
  (:meth:`geopeft.models.families.EncoderFamily.taps`): ``out_indices``, the encoder's declared
  taps (SSL4EO-S12 ViT-S/16 and CROMA: blocks 3, 5, 7, 11, as PANGAEA), or four evenly spaced
  blocks; a Swin's four stages;
* **one L-TAE shared by all levels** collapses time at the token grid: d_model = the encoder's
  width, 16 heads, d_k 4, MLP [C, C], no positional encoding (PANGAEA's settings; the
  ``ltae`` keys change them); levels of different widths (a Swin's stages) first pass a 1x1-conv
  **channel adaptor** to the widest; padded dates are masked in its attention;
* a **Feature2Pyramid** neck makes the single-scale ViT levels a pyramid (x4: transposed conv,
  batch norm, GELU, transposed conv; x2: transposed conv; x1; x1/2: max pool); a Swin's stages
  already are one;
* a **UPerNet** head with 512 channels (``channels``): pyramid pooling (scales 1, 2, 3, 6) on
  the coarsest level, lateral 1x1 and FPN 3x3 convolutions, a fusion 3x3 convolution, every
  convolution with bias + batch norm + ReLU; dropout 0.1 and a 1x1 convolution to the classes,
  upsampled bilinearly to the input size.

Normalisation is inside the model (the encoder weights' own, e.g. DN/10000 for SSL4EO-S12).
Bands the weights have but the data lacks (SSL4EO-S12's B01, B09, B10 on PASTIS) are
zero-filled: their patch-embedding channels are dropped, which is the same thing. The decoder's
parameter counts are pinned against PANGAEA's in ``tests/test_segmentation.py``; it predicts
the 19 PASTIS classes without void (PANGAEA's head has 20 outputs, void included and ignored).
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
from geopeft.models.classifier import check_input_size, normalize_input, resolve_norm
from geopeft.models.families import get_family
from geopeft.models.ltae import LTAE2d
from geopeft.models.utae import ENCODER_NORMS, UTAE, pad_mask_of, shared_over_dates
from geopeft.models.weights import Normalization, load_into, load_weights
from geopeft.spec import SEGMENTATION_MODELS as MODELS
from geopeft.spec import ConfigError
from geopeft.spec.sections import LTAE_DEFAULTS
from geopeft.spec.sections import SEGMENTATION_DEFAULTS as _D


@dataclass
class SegConfig:
    """Settings of a time-series segmentation model (``strategies.<name>.segmentation``)."""

    model: str = MODELS[0]
    """``upernet_ltae`` (encoder of the zoo + PANGAEA's UPerNet + L-TAE) or ``utae``."""
    channels: int = _D["channels"]
    """UPerNet channels (PANGAEA: 512)."""
    out_indices: list[int] | None = None
    """ViT blocks whose tokens feed the decoder (None: the encoder's declared taps, else four
    evenly spaced blocks, the last included)."""
    ltae: dict[str, Any] = field(default_factory=dict)
    """L-TAE settings: ``d_model``, ``heads``, ``d_k``, ``positional_encoding`` (defaults per
    model: :data:`LTAE_DEFAULTS`)."""
    encoder_chunk: int = _D["encoder_chunk"]
    """Frames the encoder processes at once."""
    checkpoint: bool = _D["checkpoint"]
    """Recompute a trained encoder's activations per chunk in the backward pass (less memory)."""
    encoder_widths: list[int] = field(default_factory=lambda: list(_D["encoder_widths"]))
    """U-TAE encoder channels per level."""
    decoder_widths: list[int] = field(default_factory=lambda: list(_D["decoder_widths"]))
    """U-TAE decoder channels per level (the last equals the encoder's last)."""
    out_conv: int = _D["out_conv"]
    """U-TAE output block's first width."""
    encoder_norm: str = _D["encoder_norm"]
    """U-TAE encoder norm: ``group`` (GroupNorm(4), the reference) or ``batch``."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SegConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"segmentation: unknown key(s) {sorted(unknown)}")
        model = d.get("model", MODELS[0])
        if model not in MODELS:
            raise ValueError(f"segmentation.model: {model!r} is not one of {MODELS}")
        if d.get("encoder_norm", "group") not in ENCODER_NORMS:
            raise ValueError(f"segmentation.encoder_norm: {d['encoder_norm']!r} is not one of "
                             f"{ENCODER_NORMS}")
        ltae = dict(d.get("ltae") or {})
        bad = set(ltae) - set(LTAE_DEFAULTS[model])
        if bad:
            raise ValueError(f"segmentation.ltae: unknown key(s) {sorted(bad)}")
        d["ltae"] = {**LTAE_DEFAULTS[model], **ltae}
        return cls(**d)


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class ChannelAdaptor(nn.Module):
    """1x1 convolutions taking each level to the shared L-TAE's width (PANGAEA's
    ``LTAEChannelAdaptor``)."""

    def __init__(self, dims: list[int], width: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(d, width, 1) for d in dims)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for conv, f in zip(self.convs, levels, strict=True):
            g = conv(f.flatten(0, 1))
            out.append(g.view(*f.shape[:2], *g.shape[1:]))
        return out


class Feature2Pyramid(nn.Module):
    """Single-scale ViT levels -> a pyramid: x4, x2, x1, x1/2 (``rescales``; 1 = as is)."""

    def __init__(self, dims: list[int], rescales: list[float]):
        super().__init__()
        ops: list[nn.Module] = []
        for d, k in zip(dims, rescales, strict=True):
            if k == 4:
                ops.append(nn.Sequential(nn.ConvTranspose2d(d, d, 2, stride=2), nn.BatchNorm2d(d),
                                         nn.GELU(), nn.ConvTranspose2d(d, d, 2, stride=2)))
            elif k == 2:
                ops.append(nn.ConvTranspose2d(d, d, 2, stride=2))
            elif k == 1:
                ops.append(nn.Identity())
            elif k == 0.5:
                ops.append(nn.MaxPool2d(2))
            else:
                raise ValueError(f"Feature2Pyramid: rescale {k} is not one of 4, 2, 1, 0.5")
        self.ops = nn.ModuleList(ops)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.ops, feats, strict=True)]


class UPerHead(nn.Module):
    """UPerNet decoder: pyramid pooling on the coarsest level, FPN, fusion, per-pixel classes."""

    def __init__(self, dims: list[int], channels: int, num_classes: int,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s),
                                               _conv_bn_relu(dims[-1], channels, 1))
                                 for s in pool_scales)
        self.bottleneck = _conv_bn_relu(dims[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_bn_relu(d, channels, 1) for d in dims[:-1])
        self.fpn = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in dims[:-1])
        self.fuse = _conv_bn_relu(len(dims) * channels, channels, 3)
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


class SharedTAE(nn.Module):
    """One L-TAE applied to every feature level (a module: peft saves it as one new module)."""

    def __init__(self, width: int, ltae: dict[str, Any]):
        super().__init__()
        d_model = ltae["d_model"] or width
        self.tae = LTAE2d(width, d_model, ltae["heads"], ltae["d_k"], mlp=[d_model, width],
                          positional_encoding=ltae["positional_encoding"])

    def forward(self, levels: list[torch.Tensor], days: torch.Tensor,
                pad_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [self.tae(f, days, pad_mask)[0] for f in levels]


class UPerNetLTAE(nn.Module):
    """Encoder per date -> shared L-TAE -> pyramid neck -> UPerNet; raw (B, T, C, H, W) + days
    (B, T) in, logits (B, classes, H, W) out."""

    def __init__(self, encoder: nn.Module, family: str, norm: Normalization, value_scale: float,
                 num_classes: int, cfg: SegConfig, input_size: int | None = None,
                 taps: list[int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.family = family
        self._family = get_family(family)
        self.value_scale = float(value_scale)
        self.input_size = input_size
        self.chunk = max(1, int(cfg.encoder_chunk))
        self.use_checkpoint = bool(cfg.checkpoint)
        self.clip = norm.clip
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32)[:, None, None])
        # the family's levels: a ViT's taps (out_indices, else the declared ones, else four evenly
        # spaced blocks) made a pyramid; a Swin's stages, a pyramid already
        levels = self._family.taps(encoder, cfg.out_indices, taps)
        self.indices, dims, rescales = levels.indices, levels.dims, levels.rescales
        width = max(dims)
        self.adaptor = ChannelAdaptor(dims, width) if min(dims) != width else None
        self.ltae = SharedTAE(width, cfg.ltae)
        self.pyramid = Feature2Pyramid([width] * len(dims), rescales)
        self.upernet = UPerHead([width] * len(dims), cfg.channels, num_classes)

    def new_modules(self) -> list[str]:
        """The decoder: channel adaptor (levels of several widths), shared L-TAE, pyramid neck,
        UPerNet."""
        return (["adaptor"] if self.adaptor is not None else []) + ["ltae", "pyramid", "upernet"]

    def _encode(self, frames: torch.Tensor) -> list[torch.Tensor]:
        unique = sorted(set(self.indices))
        feats = self._family.features(self.encoder, frames, unique)
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

    def encode_series(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The encoder's levels (each (B, T, C, h, w)) of raw series ``x`` (B, T, C, H, W), and
        their pad mask (B, T) (None: no padded date). A date holding only zeros is padding: it
        is not encoded, its features are 0 and the L-TAE masks it."""
        b, t = x.shape[:2]
        pad = pad_mask_of(x)
        z = normalize_input(x.float().flatten(0, 1), self.value_scale, self.mean, self.std,
                            self.clip, self.input_size)
        mask = pad if bool(pad.any()) else None
        return shared_over_dates(self.encode, z.view(b, t, *z.shape[1:]), mask), mask

    def decode(self, levels: list[torch.Tensor], days: torch.Tensor, pad: torch.Tensor | None,
               size: tuple[int, int]) -> torch.Tensor:
        """The decoder on the encoder's levels: logits (B, classes, ``size``)."""
        if self.adaptor is not None:
            levels = self.adaptor(levels)
        logits = self.upernet(self.pyramid(self.ltae(levels, days, pad)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
        levels, pad = self.encode_series(x)
        return self.decode(levels, days, pad, tuple(x.shape[-2:]))


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
                                     cfg.ltae, cfg.out_conv, cfg.encoder_norm)
        except ValueError as err:
            raise ConfigError(f"segmentation: {err}") from None
        return model, {"weights": "none", "norm_mean": mean, "norm_std": std,
                       "bands": store.bands, "segmentation": cfg.__dict__}
    if backbone_cfg is None:
        raise ConfigError("segmentation.model upernet_ltae needs a backbone")
    bb = backbones.resolve(backbone_cfg)
    weights = load_weights(bb, pretrain_dir)
    encoder = backbones.create_model(bb, len(store.bands), 0, store.bands)
    if weights is not None:
        load_into(encoder, weights, store.bands)
    get_family(bb["family"]).prepare_for_adapters(encoder)
    check_input_size(encoder, bb.get("input_size"), store)
    norm = resolve_norm(bb["normalize"], weights.norm if weights else None, store)
    try:
        model = UPerNetLTAE(encoder, bb["family"], norm, s, num_classes, cfg,
                            bb.get("input_size"), bb.get("taps"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    info = {"weights": weights.origin if weights else "none", "norm_mean": norm.mean,
            "norm_std": norm.std, "bands": store.bands, "segmentation": cfg.__dict__}
    return model, info

__all__ = ["LTAE_DEFAULTS", "MODELS", "SegConfig", "UPerNetLTAE", "build_segmenter"]
