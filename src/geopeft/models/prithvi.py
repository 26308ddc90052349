"""Prithvi-EO-2.0 (Szwarcman et al. 2024, arXiv:2412.02732; IBM and NASA): the encoder of the
publisher's ``prithvi_mae.py`` (``PrithviViT``, also TerraTorch's), one frame at a time.

Its architecture is a ViT with timm's own blocks (pre-norm, q/k/v biases, GELU MLP of ratio 4,
``nn.LayerNorm`` of eps 1e-5), a class token and a final norm, and two things of its own:

* a 3-D patch embedding (``Conv3d`` of kernel (1, p, p): one frame, p x p pixels), which for one
  frame is the 2-D convolution with the kernel's frame axis dropped;
* a fixed (not trained: a buffer) 3-D sine-cosine position embedding: of the embedding's D
  channels, 6/16 encode the column, 6/16 the row and 4/16 the frame (0 for one frame; MAE's
  1-D sin-cos of each, concatenated column, row, frame), computed for the model's own grid, so a
  model built for 128 px gets the 8 x 8 grid's values (the reference recomputes them as well,
  and replaces the published ``pos_embed`` by its own when it loads a checkpoint).

So geopeft builds it as timm's ``VisionTransformer`` with those settings (``fc_norm`` off: the
final norm comes before pooling, as in the reference) and the position embedding swapped for the
fixed buffer; token grid, taps, adapters (q/k/v) work as on any timm ViT. Two choices are
geopeft's, named here and on a study's protocol card: the classifier pools the patch tokens
after the final norm (``global_pool: avg``; ``token`` takes the class token), and a time series
enters one date at a time (the per-date encoder of UPerNet + L-TAE), not as Prithvi's native
multi-frame token sequence. The reference's last tapped level is normalised (its
``forward_features`` puts the final norm on the last block's output): so are geopeft's taps.

Published checkpoints (``Prithvi_EO_V2_300M.pt``, ...: the MAE's state dict, ``encoder.*`` and
``decoder.*``) are read as the reference reads them: the encoder's keys without their prefix,
the decoder left out, ``pos_embed`` replaced by the fixed values for the model's grid, the patch
kernel's frame axis dropped (a tubelet of more than one frame is refused). The TL variants' time
and location encodings (``temporal_embed_enc``, ``location_embed_enc``: one learned scale each)
are left out: geopeft passes no coordinates, and the reference without coordinates does not use
them.

The weights' bands are HLS's BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2, which are Sentinel-2's
B02, B03, B04, B8A, B11, B12; the input is z-scored with the pretraining mean and std
(:data:`geopeft.models.zoo.PRITHVI_MEAN`, ``PRITHVI_STD``, in DN; reflectance x 10,000).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from torch import nn

from geopeft.errors import ConfigError
from geopeft.models.families import EncoderFamily


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D sine-cosine embedding (M, ``dim``) of ``positions`` (M,): frequencies
    1 / 10000^(i / (dim / 2)), sines then cosines; float64."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim {dim} is odd")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, frames: int, rows: int, cols: int) -> torch.Tensor:
    """Prithvi's fixed position embedding (1, 1 + frames x rows x cols, ``dim``): a zero row for
    the class token, then per token (frame-major, then row, then column) the column's, row's
    and frame's 1-D embeddings (6/16, 6/16 and 4/16 of ``dim``), concatenated; float32."""
    if dim % 16:
        raise ValueError(f"Prithvi's position embedding needs a width divisible by 16, not {dim}")
    t, r, c = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols),
                             indexing="ij")
    parts = [sincos_1d(dim // 16 * 6, c.flatten()), sincos_1d(dim // 16 * 6, r.flatten()),
             sincos_1d(dim // 16 * 4, t.flatten())]
    table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat(parts, dim=1)])
    return table.float().unsqueeze(0)


def _grid(kwargs: dict[str, Any]) -> tuple[int, int]:
    size = kwargs.get("img_size", 224)
    side = size if isinstance(size, int) else size[0]
    patch = int(kwargs.get("patch_size", 16))
    return side // patch, side // patch


#: Keys of a published checkpoint that the encoder does not read: the MAE decoder's, and the TL
#: variants' coordinate encodings (no coordinates are passed; see the module's text).
_SKIPPED = re.compile(r"^(decoder\.|mask_token|.*_dec|temporal_embed_enc\.|location_embed_enc\.)")


def from_publisher(state: dict[str, torch.Tensor], grid: tuple[int, int],
                   ) -> dict[str, torch.Tensor]:
    """A published Prithvi checkpoint (the MAE's ``encoder.*``, ``decoder.*``) in the encoder's
    key names: the encoder's tensors without their prefix, the patch kernel's frame axis dropped,
    ``pos_embed`` the fixed values of ``grid`` (rows, cols).

    Raises:
        ValueError: no ``encoder.`` keys (not a Prithvi MAE checkpoint), or a patch kernel of more
            than one frame.
    """
    state = {k.replace("_timm_module.", ""): v for k, v in state.items()}
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError("no encoder.* keys: not a Prithvi MAE checkpoint (its state dict holds "
                         "encoder.* and decoder.*)")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("encoder."):
            continue
        name = key[len("encoder."):]
        if _SKIPPED.match(name):
            continue
        if name == "patch_embed.proj.weight" and value.ndim == 5:
            if value.shape[2] != 1:
                raise ValueError(f"patch_embed.proj.weight {tuple(value.shape)}: a tubelet of "
                                 f"{value.shape[2]} frames; geopeft encodes one frame at a time")
            value = value[:, :, 0]
        if name == "pos_embed":
            value = sincos_3d(int(value.shape[-1]), 1, *grid)
        out[name] = value
    return out


def to_publisher(state: dict[str, torch.Tensor], frames: int = 4,
                 ) -> dict[str, torch.Tensor]:
    """The encoder's state dict (head left out) as a published checkpoint's ``encoder.*`` keys:
    a (1, p, p) patch kernel, ``pos_embed`` of ``frames`` frames (the published files': 4) of the
    same grid; the inverse of :func:`from_publisher` (for the rehearsal's fixtures)."""
    out: dict[str, torch.Tensor] = {}
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key == "patch_embed.proj.weight":
            value = value.unsqueeze(2)
        if key == "pos_embed":
            value = sincos_3d(int(value.shape[-1]), frames, grid, grid)
        out["encoder." + key] = value.contiguous()
    return out


class PrithviFamily(EncoderFamily):
    """The ``prithvi`` encoder family: timm's ViT as Prithvi-EO-2.0's encoder (see the module's
    text)."""

    name = "prithvi"

    def create(self, bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
        """timm's ``VisionTransformer`` with Prithvi's settings and its fixed position
        embedding (a buffer).

        Raises:
            ConfigError: ``backbone.kwargs`` it cannot take (naming the backbone).
        """
        import timm

        kwargs = {"global_pool": "avg", **bb["kwargs"]}
        if kwargs["global_pool"] not in ("avg", "token"):
            raise ConfigError(f"backbone.kwargs.global_pool: {kwargs['global_pool']!r} is not "
                              f"avg or token ({bb['name']})")
        try:
            model = timm.create_model(
                "vit_base_patch16_224", pretrained=False, in_chans=in_chans,
                num_classes=num_classes, qkv_bias=True, fc_norm=False, class_token=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-5), **kwargs)
        except TypeError as err:
            raise ConfigError(f"backbone.kwargs: {bb['name']}: {err}") from None
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        try:
            fixed = sincos_3d(model.embed_dim, 1, *grid)
        except ValueError as err:
            raise ConfigError(f"backbone.kwargs.embed_dim: {err} ({bb['name']})") from None
        del model.pos_embed  # a parameter in timm; fixed in Prithvi
        model.register_buffer("pos_embed", fixed)
        return model

    def from_checkpoint(self, state: dict[str, torch.Tensor], bb: dict[str, Any],
                        ) -> dict[str, torch.Tensor]:
        """The published MAE checkpoint's encoder (:func:`from_publisher`)."""
        return from_publisher(state, _grid(bb["kwargs"]))

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The published layout (:func:`to_publisher`)."""
        return to_publisher(state)

    def fixture_checkpoint(self, entry: Any, in_chans: int) -> Any:
        """A checkpoint as published (``Prithvi_EO_V2_300M.pt``): the MAE's state dict, the
        encoder's ``encoder.*`` keys (a 4-frame position embedding) with a decoder's
        ``decoder.*`` keys and the mask token, random values; for a TL variant, the time and
        location encodings' learned scales."""
        model = self.create({"name": entry.key, "kwargs": dict(entry.kwargs)}, in_chans, 0)
        out = to_publisher(model.state_dict())
        dim = model.embed_dim
        out["decoder.mask_token"] = torch.zeros(1, 1, 512)
        out["decoder.decoder_embed.weight"] = torch.randn(512, dim) * 0.02
        out["decoder.decoder_embed.bias"] = torch.zeros(512)
        if entry.key.endswith("_tl"):
            for enc in ("temporal_embed_enc", "location_embed_enc"):
                out[f"encoder.{enc}.scale"] = torch.full((1,), 0.1)
        return out

    def features(self, model: nn.Module, x: torch.Tensor, indices: list[int],
                 ) -> list[torch.Tensor]:
        """The blocks' outputs (B, C, H, W), the last block's after the final norm (as the
        reference's ``forward_features``)."""
        levels = model.forward_intermediates(x, indices=indices,  # type: ignore[operator]
                                             intermediates_only=True)
        last = len(model.blocks) - 1  # type: ignore[arg-type]
        return [model.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if i == last else f
                for i, f in zip(indices, levels, strict=True)]


#: The ``prithvi`` encoder family.
PRITHVI = PrithviFamily()

__all__ = ["PRITHVI", "PrithviFamily", "from_publisher", "sincos_1d",
           "sincos_3d", "to_publisher"]
