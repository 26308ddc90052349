"""A classifier = normalisation + (resize) + backbone with a new head, built from config.

Normalisation lives inside the model as buffers, so it is applied exactly once, travels with the
checkpoint and is the same in training, evaluation and the inference app. Inputs are raw values
(DN or 8-bit), in the store's band order.

A backbone whose weights expect a normalisation derived from the data (CROMA: each band's train
mean +- 2 std mapped to [0, 1] and clipped) declares a rule, which its encoder family defines
(:attr:`geopeft.models.families.EncoderFamily.norm_rules`); :func:`resolve_norm` derives the
mean, std and clip range from the store's statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geopeft.data.dataset import StoreInfo
from geopeft.models.backbones import create_model, resolve
from geopeft.models.families import family_of, get_family, norm_rule
from geopeft.models.weights import Normalization, load_into, load_weights
from geopeft.spec import ConfigError


def normalize_input(x: torch.Tensor, value_scale: float, mean: torch.Tensor, std: torch.Tensor,
                    clip: tuple[float, float] | None, input_size: int | None) -> torch.Tensor:
    """Raw images (N, C, H, W) -> the backbone's input: ``(x * value_scale - mean) / std``,
    clamped to ``clip`` when set, resized (bilinear) to ``input_size`` when set and different."""
    x = (x * value_scale - mean) / std
    if clip is not None:
        x = x.clamp(*clip)
    if input_size and tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return x


class Classifier(nn.Module):
    """Normalise raw input, resize to the backbone's input size, classify."""

    def __init__(self, backbone: nn.Module, norm: Normalization, value_scale: float,
                 input_size: int | None):
        super().__init__()
        self.backbone = backbone
        self.value_scale = float(value_scale)
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32)[:, None, None])
        self.clip = tuple(float(c) for c in norm.clip) if norm.clip is not None else None

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()

    def new_modules(self) -> list[str]:
        """Modules created for the task (trained by every strategy): the head."""
        head = self.head
        return [name for name, mod in self.named_modules() if mod is head]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_input(x, self.value_scale, self.mean, self.std, self.clip,
                               self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


def resolve_norm(mode: str, weights_norm: Normalization | None, store: StoreInfo) -> Normalization:
    """Pick the normalisation: the weights' own (when they know every band, or derive it from the
    data by a rule) or train-split stats.

    A rule is the encoder family's (:func:`geopeft.models.families.norm_rule`), e.g.
    ``croma_2sigma`` (CROMA): per band, min = m - 2 s and max = m + 2 s of the train
    split (m, s: mean and std in scaled units), x -> clip((x - min) / (max - min), 0, 1); as a
    :class:`Normalization`: mean m - 2 s, std 4 s, clip (0, 1).

    Args:
        mode: ``backbone.normalize``: ``auto``, ``backbone`` or ``dataset``.
        weights_norm: the normalisation the weights were trained with, if known.
        store: the store's description (bands, scale, train-split statistics).
    """
    bands = store.bands
    s = store.value_scale
    if mode in ("auto", "backbone") and weights_norm is not None and weights_norm.rule is not None:
        mean, std, clip = norm_rule(weights_norm.rule).derive(store.norm_mean, store.norm_std, s)
        return Normalization(bands, mean, std, clip=clip, rule=weights_norm.rule)
    if mode in ("auto", "backbone") and weights_norm is not None and set(bands) <= set(weights_norm.bands):
        i = [weights_norm.bands.index(b) for b in bands]
        return Normalization(bands, [weights_norm.mean[j] for j in i], [weights_norm.std[j] for j in i])
    if mode == "backbone":
        raise ValueError(
            f"backbone.normalize is 'backbone' but the weights carry no normalisation for {bands}"
        )
    return Normalization(bands, [m * s for m in store.norm_mean], [d * s for d in store.norm_std])


def check_input_size(model: nn.Module, resize: int | None, store: StoreInfo) -> None:
    """A backbone with a fixed image size needs inputs of that size, or ``backbone.input_size``.

    A backbone that takes any side that is a multiple of its patch (its family's
    :meth:`~geopeft.models.families.EncoderFamily.size_multiple`; CROMA) must get one.

    Args:
        model: the backbone.
        resize: ``backbone.input_size``.
        store: the store's description.
    """
    family = family_of(model)
    size = family.input_size(model)
    multiple = family.size_multiple(model)
    if resize and multiple and resize % multiple:
        raise ConfigError(f"backbone.input_size: {resize} is not a multiple of {multiple}, the patch "
                          f"size of the {type(model).__name__} backbone")
    if resize or size is None or store.image_size is None:
        return
    if (size, size) != tuple(store.image_size):
        raise ConfigError(
            f"backbone.input_size: the backbone takes {size}x{size} inputs but "
            f"{store.path} holds {store.image_size[0]}x{store.image_size[1]} images; set "
            f"backbone.input_size: {size} to resize them, or backbone.kwargs.img_size"
        )


def build_classifier(backbone_cfg: dict[str, Any], store: StoreInfo, num_classes: int,
                     pretrain_dir: Path | None = None, split: bool = True,
                     ) -> tuple[Classifier, dict[str, Any]]:
    """Create the backbone, load its weights, expose q/k/v for adapters (unless ``split`` is
    false), normalise.

    Returns the model and a description (weights origin, normalisation) for the run record.

    Args:
        backbone_cfg: the backbone config (zoo name, weights, kwargs, ...).
        store: the store's description.
        num_classes: outputs of the new head.
        pretrain_dir: the embedded pretrained backbone (``weights: pretrain``).
        split: expose q, k, v as separate layers for adapters.
    """
    backbone_cfg = resolve(backbone_cfg)
    weights = load_weights(backbone_cfg, pretrain_dir)
    vit = create_model(backbone_cfg, len(store.bands), num_classes, store.bands)
    if weights is not None:
        load_into(vit, weights, store.bands)
    if split:
        get_family(backbone_cfg["family"]).prepare_for_adapters(vit)
    check_input_size(vit, backbone_cfg.get("input_size"), store)
    norm = resolve_norm(backbone_cfg["normalize"], weights.norm if weights else None, store)
    model = Classifier(vit, norm, store.value_scale, backbone_cfg.get("input_size"))
    info = {"weights": weights.origin if weights else "none", "norm_mean": norm.mean,
            "norm_std": norm.std, "bands": store.bands}
    if norm.clip is not None:
        info["norm_clip"] = list(norm.clip)
    return model, info
