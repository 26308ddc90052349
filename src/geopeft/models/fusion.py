"""Fusion-LoRA: multispectral input on a frozen RGB encoder with LoRA, fused with a spectral stream.

For an input with the bands B02 B03 B04 B08 B11 B12 (any set that contains B04, B03, B02):

1. **Spectral tokenizer** (:class:`SpectralTokenizer`): the bands, standardised with the train
   split's statistics, are mapped pixel-wise to a 3-channel pseudo-RGB image *in the units the
   frozen encoder expects*; the encoder's own normalisation is then applied (once, here). At
   initialisation the pseudo-RGB is the true B04/B03/B02 composite, scaled so that after the
   encoder's normalisation each channel is standardised exactly like the train split: the model
   starts as RGB-only LoRA and learns from there. With ``tokenizer: false`` it stays fixed.
2. The **frozen encoder** (with LoRA adapters) turns the pseudo-RGB into visual tokens on its
   output token grid.
3. **Spectral token stream** (:class:`SpectralStream`): the raw (standardised) bands are embedded
   on the same token grid by a strided convolution, plus a learned position embedding.
4. **Cross-attention fusion** (:class:`CrossAttentionFusion`): visual tokens attend to spectral
   tokens (multi-head, pre-norm, residual), then a residual feed-forward block.
5. **Gated late fusion** (:class:`GatedLateFusion`): a per-token, per-channel sigmoid gate
   ``g = sigmoid(W [fused; visual])`` mixes ``g * fused + (1 - g) * visual``.
6. Mean pooling over tokens, layer norm, linear head.

The ablation ladder (``fusion`` settings of a strategy): RGB-only LoRA (``tokenizer: false,
caf: false, glf: false``), tokenizer only (``tokenizer: true``), + CAF (``caf: true``), + GLF
(``glf: true``, the full model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geopeft.bands import RGB
from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones
from geopeft.models.families import family_of, get_family
from geopeft.models.weights import Normalization, load_into, load_weights
from geopeft.spec import ConfigError, FusionConfig


class SpectralTokenizer(nn.Module):
    """Standardised bands -> pseudo-RGB in the encoder's units -> the encoder's normalisation.

    ``rgb = mean_enc + std_enc * (A z + b + mlp(z))``: ``A`` starts as the selection of B04, B03,
    B02 and ``b`` at zero, the non-linear branch's last layer at zero, so the pseudo-RGB starts
    as the true colour composite with the encoder's own statistics. The mapping is learned in
    the encoder's normalised space (weights of order 1), so optimiser steps do not depend on the
    reflectance scale.
    """

    def __init__(self, bands: list[str], enc_norm: Normalization, learn: bool, hidden: int):
        super().__init__()
        missing = [b for b in RGB if b not in bands]
        if missing:
            raise ValueError(f"Fusion-LoRA needs B04, B03, B02 among the input bands; "
                             f"{', '.join(missing)} missing from {bands}")
        a = torch.zeros(3, len(bands))
        for c, band in enumerate(RGB):
            a[c, bands.index(band)] = 1.0
        b = torch.zeros(3)
        if learn:
            self.weight = nn.Parameter(a)
            self.bias = nn.Parameter(b)
        else:
            self.register_buffer("weight", a)
            self.register_buffer("bias", b)
        self.mlp: nn.Module | None = None
        if learn and hidden > 0:
            self.mlp = nn.Sequential(nn.Conv2d(len(bands), hidden, 1), nn.GELU(),
                                     nn.Conv2d(hidden, 3, 1))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("enc_mean", torch.tensor(enc_norm.mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("enc_std", torch.tensor(enc_norm.std, dtype=torch.float32)[:, None, None])

    def _mapped(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("oc,bchw->bohw", self.weight, z) + self.bias[:, None, None]
        return out + self.mlp(z) if self.mlp is not None else out

    def pseudo_rgb(self, z: torch.Tensor) -> torch.Tensor:
        """The pseudo-RGB image (B, 3, H, W) in the encoder's units (before its normalisation)."""
        return self.enc_mean + self.enc_std * self._mapped(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.pseudo_rgb(z) - self.enc_mean) / self.enc_std


class SpectralStream(nn.Module):
    """Raw bands embedded on the encoder's token grid: strided conv + learned positions."""

    def __init__(self, n_bands: int, dim: int, grid: tuple[int, int], input_size: int):
        super().__init__()
        self.grid = grid
        stride = (input_size // grid[0], input_size // grid[1])
        self.proj = nn.Conv2d(n_bands, dim, kernel_size=stride, stride=stride)
        self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = self.proj(z)
        if t.shape[-2:] != self.grid:
            t = F.adaptive_avg_pool2d(t, self.grid)
        return t.flatten(2).transpose(1, 2) + self.pos


class CrossAttentionFusion(nn.Module):
    """Visual tokens (queries) attend to spectral tokens (keys, values); residual + FFN."""

    def __init__(self, dim: int, heads: int, ffn_ratio: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion.heads: {heads} does not divide the encoder width {dim}")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * ffn_ratio)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, visual: torch.Tensor, spectral: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(spectral)
        x = visual + self.attn(self.norm_q(visual), kv, kv, need_weights=False)[0]
        return x + self.ffn(self.norm_ffn(x))


class GatedLateFusion(nn.Module):
    """``g * fused + (1 - g) * visual`` with ``g = sigmoid(W [fused; visual] + b)`` per token/channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # g = 0.5 at the start

    def gates(self, fused: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(torch.cat([fused, visual], dim=-1)))

    def forward(self, fused: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        g = self.gates(fused, visual)
        return g * fused + (1 - g) * visual


class FusionModel(nn.Module):
    """Spectral tokenizer -> frozen encoder (LoRA) -> CAF with the spectral stream -> GLF -> head."""

    def __init__(self, encoder: nn.Module, enc_norm: Normalization, in_norm: Normalization,
                 value_scale: float, input_size: int, num_classes: int, cfg: FusionConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.value_scale = float(value_scale)
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(in_norm.mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(in_norm.std, dtype=torch.float32)[:, None, None])
        self.family = family_of(encoder)
        dim = self.family.width(encoder)
        self.tokenizer = SpectralTokenizer(in_norm.bands, enc_norm, cfg.tokenizer, cfg.tokenizer_hidden)
        self.spectral = (SpectralStream(len(in_norm.bands), dim, self.family.token_grid(encoder),
                                        self.input_size) if cfg.caf else None)
        self.caf = CrossAttentionFusion(dim, cfg.heads, cfg.ffn_ratio) if cfg.caf else None
        self.glf = GatedLateFusion(dim) if cfg.glf else None
        self.pool_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    @property
    def head(self) -> nn.Module:
        return self.classifier

    def new_modules(self) -> list[str]:
        """Modules created for the task (trained by every strategy; saved with LoRA adapters)."""
        names = ["tokenizer"] if self.cfg.tokenizer else []
        names += [n for n in ("spectral", "caf", "glf") if getattr(self, n) is not None]
        return names + ["pool_norm", "classifier"]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw values -> train-split standardised bands at the encoder's input size."""
        z = (x * self.value_scale - self.mean) / self.std
        if z.shape[-1] != self.input_size or z.shape[-2] != self.input_size:
            z = F.interpolate(z, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        return z

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate tensors: ``rgb`` (encoder input), ``visual``, ``fused``, ``gates``, ``out``."""
        z = self.standardize(x)
        rgb = self.tokenizer(z)
        visual = self.family.tokens(self.encoder, rgb)
        out = {"rgb": rgb, "visual": visual}
        tok = visual
        if self.caf is not None and self.spectral is not None:
            tok = out["fused"] = self.caf(visual, self.spectral(z))
        if self.glf is not None:
            out["gates"] = self.glf.gates(out["fused"], visual)
            tok = out["gates"] * out["fused"] + (1 - out["gates"]) * visual
        out["out"] = tok
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool_norm(self.features(x)["out"].mean(dim=1)))


def build_fusion(backbone_cfg: dict[str, Any], store: StoreInfo, num_classes: int,
                 fusion: dict[str, Any] | None, pretrain_dir: Path | None = None,
                 ) -> tuple[FusionModel, dict[str, Any]]:
    """Build a Fusion-LoRA model: the encoder takes pseudo-RGB (B04, B03, B02) from ``store``'s bands.

    The encoder's normalisation is the one its weights were trained with (timm cfg, SSL4EO
    DN/10000, the pretrain rule's record); without weights (scratch), the train split's RGB
    statistics. Returns the model and a description for the run record.

    Args:
        backbone_cfg: the encoder's config.
        store: the store's description (its bands must hold B04, B03, B02).
        num_classes: outputs.
        fusion: the row's ``fusion`` settings (:class:`FusionConfig`).
        pretrain_dir: the embedded pretrained backbone.
    """
    cfg = FusionConfig.from_dict(fusion)
    bb = backbones.resolve(backbone_cfg)
    weights = load_weights(bb, pretrain_dir)
    encoder = backbones.create_model(bb, 3, 0, list(RGB))
    family = get_family(bb["family"])
    if weights is not None:
        load_into(encoder, weights, list(RGB))
    family.prepare_for_adapters(encoder)
    built = family.input_size(encoder)
    size = bb.get("input_size") or built
    if size is None:
        raise ConfigError(f"backbone.input_size: {bb['name']} takes any size; set one for fusion")
    if built not in (None, size):
        raise ConfigError(f"backbone.input_size: {size} differs from the size {bb['name']} was "
                          f"built for ({built}); set backbone.kwargs.img_size")
    s = store.value_scale
    in_norm = Normalization(list(store.bands), [m * s for m in store.norm_mean],
                            [d * s for d in store.norm_std])
    wn = weights.norm if weights is not None else None
    # a rule derived from the data (CROMA's) has no fixed values: the RGB statistics are used
    if bb["normalize"] != "dataset" and wn is not None and wn.rule is None and set(RGB) <= set(wn.bands):
        idx = [wn.bands.index(b) for b in RGB]
        enc_norm = Normalization(list(RGB), [wn.mean[i] for i in idx], [wn.std[i] for i in idx])
    else:
        if bb["normalize"] == "backbone":
            raise ConfigError("backbone.normalize is 'backbone' but the weights carry no "
                              "normalisation for B04, B03, B02")
        idx = [store.bands.index(b) for b in RGB if b in store.bands]
        enc_norm = Normalization(list(RGB), [in_norm.mean[i] for i in idx],
                                 [in_norm.std[i] for i in idx])
    try:
        model = FusionModel(encoder, enc_norm, in_norm, store.value_scale, size, num_classes, cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    info = {"weights": weights.origin if weights else "none", "norm_mean": in_norm.mean,
            "norm_std": in_norm.std, "bands": store.bands, "encoder_norm_mean": enc_norm.mean,
            "encoder_norm_std": enc_norm.std, "fusion": cfg.__dict__}
    return model, info
