"""ViT backbones from timm for any number of input bands, and where their weights come from.

Weights (``backbone.weights``):

* ``pretrain`` -- the checkpoint written by this study's ``pretrain`` rule
  (``backbone.safetensors`` + ``backbone.json`` recording architecture, bands and normalisation);
* ``none`` -- random initialisation (training from scratch);
* ``timm:<tag>`` -- timm hub weights, read from the Hugging Face cache or fetched when online;
  offline without a cached copy is a :class:`WeightsError` that says what to download;
* ``file:<path>`` -- a local ``.safetensors`` / ``.pth`` state dict, checked against ``sha256``.

**Patch embedding for other band sets.** Weights know a list of bands (ImageNet/timm weights are
taken as B04, B03, B02). For the requested bands, a band the weights know keeps its filter; a
band they do not know gets the mean filter of the known bands; the kernel is then scaled by
``n_known / n_requested`` so that a flat normalised input produces the same response as before.

**Attention for LoRA.** timm fuses q, k and v into one ``qkv`` linear layer. :func:`split_qkv`
replaces it by three separate ``q``, ``k``, ``v`` layers holding the same weights (outputs are
identical), so that LoRA on ``q``/``k``/``v`` has its own rank-r update per projection, as in the
HF ViT ``query``/``key``/``value`` setting the LoRA study reports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopeft.bands import RGB
from geopeft.io import read_json


class WeightsError(RuntimeError):
    """Backbone weights cannot be found, fetched or verified."""


@dataclass
class Normalization:
    """Per-band normalisation in scaled units (raw value x value_scale)."""

    bands: list[str]
    mean: list[float]
    std: list[float]


@dataclass
class Weights:
    """A backbone state dict (head removed) and what it was trained on."""

    state: dict[str, torch.Tensor]
    bands: list[str]
    norm: Normalization | None
    origin: str


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
    """Replace every fused ``attn.qkv`` linear layer by :class:`SplitQKV`; returns how many."""
    n = 0
    for module in model.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
            module.qkv = SplitQKV(qkv)
            n += 1
    return n


def create_vit(name: str, kwargs: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
    """A timm model (no weights) for ``in_chans`` bands and ``num_classes`` outputs."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, in_chans=in_chans,
                                 num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise WeightsError(f"backbone.name: {name!r} is not a timm model") from None
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strip_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.head"))}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds no state dict")
    return obj


def load_weights(spec: dict[str, Any], pretrain_dir: Path | None = None) -> Weights | None:
    """Resolve ``backbone.weights`` to a state dict; ``None`` for ``weights: none``."""
    w = spec["weights"]
    if w == "none":
        return None
    if w == "pretrain":
        if pretrain_dir is None:
            raise WeightsError("backbone.weights is 'pretrain' but no pretrain checkpoint was given")
        meta_path = Path(pretrain_dir) / "backbone.json"
        st_path = Path(pretrain_dir) / "backbone.safetensors"
        for p in (meta_path, st_path):
            if not p.is_file():
                raise WeightsError(f"{p}: pretrained backbone not found (run the pretrain rule)")
        meta = read_json(meta_path)
        if sha256_file(st_path) != meta["sha256"]:
            raise WeightsError(f"{st_path}: sha256 does not match {meta_path}")
        from safetensors.torch import load_file

        norm = Normalization(**meta["norm"]) if meta.get("norm") else None
        return Weights(_strip_head(load_file(str(st_path))), list(meta["bands"]), norm,
                       f"pretrain:{meta['sha256'][:12]}")
    if w.startswith("file:"):
        path = Path(w[5:])
        if not path.is_file():
            raise WeightsError(f"backbone.weights: {path} not found")
        got = sha256_file(path)
        if got != spec["sha256"]:
            raise WeightsError(f"{path}: sha256 {got} does not match backbone.sha256 {spec['sha256']}")
        state = _read_state(path)
        n_in = _patch_weight(state).shape[1] if _patch_weight(state) is not None else 3
        return Weights(_strip_head(state), list(RGB) if n_in == 3 else [], None, f"file:{got[:12]}")
    if w.startswith("timm:"):
        return _timm_weights(spec, w[5:])
    raise WeightsError(f"backbone.weights: {w!r} is not understood")


def _timm_weights(spec: dict[str, Any], tag: str) -> Weights:
    import timm

    try:
        model = timm.create_model(tag, pretrained=True, num_classes=0,
                                  **{k: v for k, v in spec["kwargs"].items() if k != "in_chans"})
    except Exception as err:  # offline hub access raises many different exception types
        raise WeightsError(
            f"backbone.weights: timm weights {tag!r} are not in the Hugging Face cache and could "
            f"not be fetched ({type(err).__name__}: {str(err)[:200]}). On a machine with network "
            f"run: python -c \"import timm; timm.create_model('{tag}', pretrained=True)\" and copy "
            f"~/.cache/huggingface, or save the state dict and use backbone.weights: file:<path>"
        ) from None
    cfg = model.pretrained_cfg
    mean, std = list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
    norm = Normalization(list(RGB), mean, std) if len(mean) == 3 else None
    return Weights(_strip_head(model.state_dict()), list(RGB), norm, f"timm:{tag}")


def _patch_weight(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return state.get("patch_embed.proj.weight")


def adapt_patch_embed(weight: torch.Tensor, src_bands: list[str], dst_bands: list[str]) -> torch.Tensor:
    """Map a patch-embedding kernel (D, C_src, p, p) from ``src_bands`` to ``dst_bands``."""
    if list(src_bands) == list(dst_bands):
        return weight
    if not src_bands:
        if weight.shape[1] != len(dst_bands):
            raise WeightsError(
                f"the weights' patch embedding has {weight.shape[1]} unnamed input channels; "
                f"cannot map them to {len(dst_bands)} bands"
            )
        return weight
    known = [b for b in dst_bands if b in src_bands]
    mean_filter = weight.mean(dim=1)
    chans = [weight[:, src_bands.index(b)] if b in src_bands else mean_filter for b in dst_bands]
    out = torch.stack(chans, dim=1)
    if len(known) != len(dst_bands):
        out = out * (len(src_bands) / len(dst_bands))
    return out


def load_into(model: nn.Module, weights: Weights, bands: list[str]) -> None:
    """Load ``weights`` into a timm ViT built for ``bands`` (head left as initialised)."""
    state = dict(weights.state)
    pw = _patch_weight(state)
    if pw is not None:
        state["patch_embed.proj.weight"] = adapt_patch_embed(pw, weights.bands, bands)
    pos = state.get("pos_embed")
    own = model.state_dict()
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise WeightsError(
            f"weights {weights.origin} do not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
