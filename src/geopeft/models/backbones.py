"""The backbone zoo: which encoders geopeft knows, what each expects, and how to build them.

Every entry declares its timm architecture, default weights (see :mod:`geopeft.models.weights`),
the bands and normalisation the weights expect, and the LoRA target modules that make sense for
it; its token grid and width follow from the built model (:func:`token_grid`, :func:`width`).
``uv run geopeft backbones`` prints the table.

``backbone.name`` in a study is a registry key, or any timm ViT / Swin architecture name (then
the family follows from the name and the weights default to the study's ``pretrain``).

**Attention for LoRA.** timm fuses q, k and v into one ``qkv`` linear layer. :func:`split_qkv`
replaces it by three separate ``q``, ``k``, ``v`` layers holding the same weights (outputs are
identical), so that LoRA on ``q``/``k``/``v`` has its own rank-r update per projection. timm's
Swin-V2 attention calls ``F.linear`` on ``qkv.weight`` directly (its q/v biases live outside the
layer), which would silently bypass any adapter placed on ``qkv``; :func:`prepare_for_adapters`
switches it to calling the layer and adding the bias, with identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geopeft.bands import RGB

# Band order of the SSL4EO-S12 13-band weights (their patch embedding's input channels).
SSL4EO_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                   "B11", "B12")
_HF = "https://hf.co"


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone of the zoo."""

    key: str
    """Registry name used as ``backbone.name``."""
    family: str
    """``vit`` or ``swin``: decides token extraction and the attention fix for adapters."""
    arch: str
    """timm architecture name."""
    weights: str
    """Default ``backbone.weights``."""
    description: str
    """One line for the listing."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Default keyword arguments for ``timm.create_model``."""
    bands: tuple[str, ...] | None = None
    """Bands the weights' patch embedding expects, in order (None: recorded with the weights)."""
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """Mean and std the weights expect, in scaled units (raw x the store's value scale, i.e.
    reflectance for Sentinel-2 DN); None: recorded with the weights (timm cfg, pretrain rule)."""
    lora_targets: tuple[str, ...] = ("q", "k", "v")
    """Module name suffixes LoRA adapts by default."""


def _ssl4eo(method: str, url: str) -> BackboneEntry:
    return BackboneEntry(
        key=f"ssl4eo_s12_vits16_{method}", family="vit", arch="vit_small_patch16_224",
        weights=f"url:{url}", bands=SSL4EO_S2_BANDS,
        norm=((0.0,) * 13, (1.0,) * 13),  # DN / 10000, as the SSL4EO-S12 benchmarks
        description=f"SSL4EO-S12 ViT-S/16, 13 Sentinel-2 L1C bands, {method.upper()}; "
                    f"input DN/10000",
    )


REGISTRY: dict[str, BackboneEntry] = {e.key: e for e in (
    BackboneEntry("vit_b16_in21k", "vit", "vit_base_patch16_224",
                  "timm:vit_base_patch16_224.augreg_in21k", "ViT-B/16, ImageNet-21k (timm)",
                  bands=RGB),
    BackboneEntry("vit_b16_in21k_orig", "vit", "vit_base_patch16_224",
                  "timm:vit_base_patch16_224.orig_in21k",
                  "ViT-B/16, ImageNet-21k, google/vit-base-patch16-224-in21k weights", bands=RGB),
    BackboneEntry("swinv2_tiny", "swin", "swinv2_tiny_window8_256",
                  "timm:swinv2_tiny_window8_256.ms_in1k", "Swin-V2-T, window 8, 256 px, ImageNet-1k",
                  bands=RGB),
    BackboneEntry("swinv2_small", "swin", "swinv2_small_window8_256",
                  "timm:swinv2_small_window8_256.ms_in1k", "Swin-V2-S, window 8, 256 px, ImageNet-1k",
                  bands=RGB),
    _ssl4eo("dino", f"{_HF}/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
                    "5b41dd418a79de47ac9f5be3e035405a83818a62/"
                    "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth"),
    _ssl4eo("moco", f"{_HF}/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/"
                    "1cb683f6c14739634cdfaaceb076529adf898c74/"
                    "vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth"),
    _ssl4eo("mae", f"{_HF}/wangyi111/SSL4EO-S12/resolve/main/B13_vits16_mae_ep99_enc.pth"),
    BackboneEntry("embedded", "vit", "vit_tiny_patch16_224", "pretrain",
                  "the embedded backbone: a small ViT pretrained by the pretrain rule on the "
                  "synthetic source set", kwargs={"img_size": 64, "patch_size": 8, "depth": 4,
                                                  "embed_dim": 96, "num_heads": 3}),
)}


def entry_for(name: str) -> BackboneEntry:
    """The registry entry of ``name``, or a generic entry for a timm ViT/Swin architecture."""
    if name in REGISTRY:
        return REGISTRY[name]
    family = "swin" if name.startswith("swin") else "vit"
    return BackboneEntry(name, family, name, "pretrain", f"timm {name}")


def resolve(spec: dict[str, Any]) -> dict[str, Any]:
    """A backbone config with the registry's declarations filled in (idempotent).

    Adds ``arch``, ``family``, ``weight_bands``, ``weight_norm`` and ``lora_targets``; merges the
    entry's kwargs under the config's; ``weights: null`` becomes the entry's default.
    """
    if "arch" in spec:
        return spec
    e = entry_for(spec["name"])
    out = dict(spec)
    out["arch"], out["family"] = e.arch, e.family
    out["kwargs"] = {**e.kwargs, **(spec.get("kwargs") or {})}
    out["weights"] = spec.get("weights") or e.weights
    out.setdefault("sha256", None)
    out.setdefault("input_size", None)
    out.setdefault("normalize", "auto")
    out["weight_bands"] = list(e.bands) if e.bands else None
    out["weight_norm"] = {"mean": list(e.norm[0]), "std": list(e.norm[1])} if e.norm else None
    out["lora_targets"] = list(e.lora_targets)
    return out


def create_model(spec: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
    """A timm model of the backbone (no weights) for ``in_chans`` bands and ``num_classes``."""
    import timm

    from geopeft.models.weights import WeightsError

    spec = resolve(spec)
    try:
        return timm.create_model(spec["arch"], pretrained=False, in_chans=in_chans,
                                 num_classes=num_classes, **spec["kwargs"])
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise WeightsError(f"backbone.name: {spec['name']!r} is neither a registry backbone "
                               f"({', '.join(REGISTRY)}) nor a timm model") from None
        raise


class SplitQKV(nn.Module):
    """Three linear projections q, k, v whose concatenated output equals a fused ``qkv``."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


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


def describe() -> list[dict[str, Any]]:
    """One row per registry entry: family, architecture, weights, bands, norm, grid, width."""
    rows = []
    for e in REGISTRY.values():
        with torch.device("meta"):
            m = create_model({"name": e.key}, len(e.bands) if e.bands else 3, 0)
        rows.append({
            "name": e.key, "family": e.family, "arch": e.arch, "weights": e.weights,
            "bands": " ".join(e.bands) if e.bands else "(as pretrained)",
            "normalisation": ("DN/10000" if e.norm and set(e.norm[0]) == {0.0}
                              else "weights' own mean/std"),
            "input": input_size(m), "grid": "x".join(map(str, token_grid(m))), "width": width(m),
            "lora_targets": ",".join(e.lora_targets), "description": e.description,
        })
    return rows
