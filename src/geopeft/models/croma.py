"""CROMA's Sentinel-2 optical encoder (Fuller et al., NeurIPS 2023) as a backbone of the zoo.

CROMA ("Remote Sensing Representations with Contrastive Radar-Optical Masked Autoencoders",
https://arxiv.org/abs/2311.00566) is not a timm architecture. Its optical encoder, the
``s2_encoder`` of the published checkpoints, is a pre-norm ViT:

* **patches** of 8 x 8 pixels, each flattened channel-slowest (``b c (h i) (w j) -> b (h w)
  (c i j)``) and embedded by one linear layer (``linear_input``: 12 x 64 -> width). Here it is a
  convolution with kernel = stride = 8 whose kernel is that matrix reshaped to (width, 12, 8, 8)
  (column ``c * 64 + i * 8 + j`` is kernel element ``[c, i, j]``): the same map, and the layout of
  a timm patch embedding, so that the zoo's band mapping
  (:func:`geopeft.models.weights.adapt_patch_embed`) applies unchanged;
* **no class token and no position embedding**: position enters only through a 2-D ALiBi bias
  added to every attention score, ``-slope_h x`` the euclidean distance between the two patches'
  grid positions, with ALiBi's geometric slopes (:func:`alibi_slopes`; 16 heads). It is computed
  for the token grid of the input that comes, so any side that is a multiple of 8 works
  (pretraining: 120 px, a 15 x 15 grid; PASTIS: 128 px, 16 x 16);
* ``depth`` **blocks** of pre-norm attention (a fused q/k/v projection without bias, an output
  projection with bias) and a pre-norm MLP (x4, GELU), both residual, then a final LayerNorm.

base: width 768, depth 12; large: width 1024, depth 24; always 16 heads.

:class:`CROMAOptical` offers what geopeft uses of a timm ViT: ``patch_embed`` (``img_size``,
``grid_size``, ``patch_size``, ``proj``), ``blocks``, ``norm``, ``head``, ``num_features``,
``num_prefix_tokens`` (0), ``forward_features``, ``forward_head``, ``forward_intermediates``,
``get_classifier``. The fused projection is called ``qkv`` so that
:func:`geopeft.models.qkv.split_qkv` exposes ``q``, ``k`` and ``v`` to LoRA. Classification
pools the mean of the final tokens (CROMA's global average pooling; the pretraining
``s2_GAP_FFN`` projection is not used). :func:`from_publisher` and :func:`to_publisher` convert
between the published state dict and this module's. :data:`CROMA` is the encoder family
(:mod:`geopeft.models.families`): it builds :class:`CROMAOptical`, reads the published layout,
takes any input side that is a multiple of the patch, and declares the normalisation rule
``croma_2sigma`` (:func:`two_sigma`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geopeft.models.families import EncoderFamily, NormRule
from geopeft.models.zoo import NORM_RULE_WORDS
from geopeft.spec import ConfigError

#: CROMA's patch side and attention heads (the same for base and large).
PATCH_SIZE = 8
NUM_HEADS = 16

# this module's names (under blocks.<i>.) -> the publisher's (under transformer.layers.<i>.)
_BLOCK_KEYS = {"norm1": "0.input_norm", "attn.qkv": "0.to_qkv", "attn.proj": "0.to_out",
               "norm2": "1.input_norm", "mlp.fc1": "1.net.0", "mlp.fc2": "1.net.3"}
_PUBLISHED_BLOCK = re.compile(r"transformer\.layers\.(\d+)\.(\d\.[a-z_.0-9]+?)\.(weight|bias)")
_OWN_BLOCK = re.compile(r"blocks\.(\d+)\.([a-z_.0-9]+?)\.(weight|bias)")


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al., ICLR 2022), as CROMA uses them.

    For ``n`` heads, ``n`` a power of two: ``2 ** (-8 / n * (h + 1))``, h = 0 .. n - 1 (16 heads:
    2^-0.5, 2^-1, ..., 2^-8). Otherwise the slopes of the power of two below ``n``, followed by
    every other slope of twice that power.

    Args:
        num_heads: attention heads.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads: {num_heads} is not a positive number of heads")
    if num_heads & (num_heads - 1) == 0:
        start = 2.0 ** (-8.0 / num_heads)
        return [start ** (h + 1) for h in range(num_heads)]
    low = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(low) + alibi_slopes(2 * low)[0::2][: num_heads - low]


def alibi_2d(rows: int, cols: int, slopes: Sequence[float]) -> torch.Tensor:
    """CROMA's 2-D ALiBi attention bias for a ``rows`` x ``cols`` token grid.

    Tokens are numbered row by row (the patch order of :class:`PatchEmbed`); the bias of head
    ``h`` between tokens at grid positions (r1, c1) and (r2, c2) is ``-slopes[h] *
    sqrt((r1 - r2)^2 + (c1 - c2)^2)``.

    Args:
        rows: token grid rows.
        cols: token grid columns.
        slopes: one slope per head (:func:`alibi_slopes`).

    Returns:
        A float32 tensor (heads, rows x cols, rows x cols).
    """
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    dist = ((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).sqrt()
    s = torch.tensor(list(slopes), dtype=torch.float64)
    return (-s[:, None, None] * dist).float()


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> tokens (B, rows x cols, width), row by row."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size: {patch_size} is not a positive patch side")
        if img_size < patch_size or img_size % patch_size:
            raise ValueError(f"img_size: {img_size} is not a multiple of the patch size {patch_size}")
        # the side the model is built for (geopeft.models.backbones.input_size) and its token
        # grid; other multiples of the patch size work too
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The token grid of input ``x`` (B, C, H, W); a side that is not a multiple of the
        patch size is a ``ValueError`` naming it."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        p = self.patch_size[0]
        if h % p or w % p or not h or not w:
            raise ValueError(f"CROMA takes inputs whose sides are multiples of its patch size {p}; "
                             f"got {h}x{w} (set backbone.input_size to a multiple of {p})")
        return h // p, w // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grid(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with an additive bias (CROMA's 2-D ALiBi)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear -> GELU -> linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm attention and pre-norm MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class CROMAOptical(nn.Module):
    """CROMA's optical (Sentinel-2) encoder with a classification head on the mean token.

    Args:
        img_size: the input side it is built for (a multiple of ``patch_size``; CROMA was
            pretrained at 120). Other multiples of the patch size work as well (the attention
            bias follows the input's grid); ``patch_embed.grid_size`` is this size's grid.
        patch_size: patch side (CROMA: 8).
        in_chans: input bands (CROMA: 12, :data:`geopeft.models.zoo.CROMA_S2_BANDS`).
        num_classes: outputs of the head (0: no head, :meth:`forward` returns pooled features).
        embed_dim: width (base 768, large 1024).
        depth: blocks (base 12, large 24).
        num_heads: attention heads (CROMA: 16).
        mlp_ratio: MLP hidden width over the width.
    """

    encoder_family = "croma"
    """Its encoder family (:data:`CROMA`), as :func:`geopeft.models.backbones.create_model`
    records it on the models it builds."""

    def __init__(self, img_size: int = 120, patch_size: int = PATCH_SIZE, in_chans: int = 12,
                 num_classes: int = 0, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = NUM_HEADS, mlp_ratio: float = 4.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth: {depth} is not a positive number of blocks")
        self.num_features = self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.num_prefix_tokens = 0
        # input sides must be multiples of this (geopeft.models.classifier.check_input_size)
        self.size_multiple = int(patch_size)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.slopes = alibi_slopes(num_heads)
        self._bias: dict[tuple[int, int, str], torch.Tensor] = {}
        self.apply(_init_weights)

    def attn_bias(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """The ALiBi bias (1, heads, N, N) of a ``rows`` x ``cols`` grid on ``device``, computed
        once per grid and device (a cache, neither parameter nor buffer: nothing to save)."""
        key = (rows, cols, str(device))
        if key not in self._bias:
            self._bias[key] = alibi_2d(rows, cols, self.slopes).to(device)[None]
        return self._bias[key]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        rows, cols = self.patch_embed.grid(x)
        tokens = self.patch_embed(x)
        return tokens, self.attn_bias(rows, cols, tokens.device), (rows, cols)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, N, width) after the last norm, N = the grid's rows x cols."""
        x, bias, _ = self._embed(x)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over the tokens, then the head (unless ``pre_logits``)."""
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classification head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new head with ``num_classes`` outputs (0: none)."""
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, norm_last: bool = True,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of the blocks ``indices``, as timm's ViT ``forward_intermediates``.

        The final norm: PANGAEA-bench's CROMA encoder applies it to the **last tapped output
        only** (``output[-1] = norm_out(output[-1])`` in its transformer), which ``norm_last``
        (the default) reproduces: with taps 3, 5, 7, 11 that is the base model's own output; for
        the large model (24 blocks) it is block 11's output, normalised by the norm trained for
        block 23, as PANGAEA does. ``norm`` normalises every output instead (timm's meaning);
        neither: raw block outputs.

        Args:
            x: input (B, C, H, W), sides multiples of the patch size.
            indices: block indices (negative count from the end), an int n for the last n
                blocks, or None for all.
            norm: apply the final norm to every output.
            norm_last: apply it to the last tapped output only (ignored with ``norm``).
            output_fmt: ``NCHW`` (B, width, rows, cols) or ``NLC`` (B, N, width).
            intermediates_only: return only the intermediates (the blocks after the last tap
                are not run).

        Returns:
            The outputs in block order; with ``intermediates_only`` false, ``(final tokens after
            the norm, outputs)``.
        """
        depth = len(self.blocks)
        if indices is None:
            take = list(range(depth))
        elif isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"indices: {indices}: the last n of {depth} blocks, n in 1..{depth}")
            take = list(range(depth - indices, depth))
        else:
            take = sorted({int(i) % depth if -depth <= int(i) < depth else int(i) for i in indices})
            if not take or take[0] < 0 or take[-1] >= depth:
                raise ValueError(f"indices: {list(indices)}: block indices of 0..{depth - 1} needed")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt: {output_fmt!r} is not NCHW or NLC")
        b = x.shape[0]
        x, bias, (rows, cols) = self._embed(x)
        outs = []
        for i, blk in enumerate(self.blocks[: take[-1] + 1] if intermediates_only else self.blocks):
            x = blk(x, bias)
            if i in take:
                outs.append(x)
        if norm:
            outs = [self.norm(t) for t in outs]
        elif norm_last:
            outs[-1] = self.norm(outs[-1])
        if output_fmt == "NCHW":
            outs = [t.transpose(1, 2).reshape(b, -1, rows, cols) for t in outs]
        return outs if intermediates_only else (self.norm(x), outs)


def _kernel(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``linear_input.weight`` (D, C x p x p, columns ``(c i j)``) -> a conv kernel (D, C, p, p)."""
    d, n = weight.shape
    if n % (patch_size * patch_size):
        raise ValueError(f"linear_input.weight {tuple(weight.shape)}: {n} columns are not "
                         f"bands x {patch_size} x {patch_size}")
    return weight.reshape(d, n // (patch_size * patch_size), patch_size, patch_size)


def from_publisher(state: dict[str, torch.Tensor], patch_size: int = PATCH_SIZE,
                   ) -> dict[str, torch.Tensor]:
    """The published ``s2_encoder`` state dict in :class:`CROMAOptical`'s names.

    ``linear_input`` -> ``patch_embed.proj`` (the matrix reshaped to a kernel, see the module
    docstring), ``transformer.layers.<i>.0.input_norm / to_qkv / to_out`` -> ``blocks.<i>.norm1 /
    attn.qkv / attn.proj``, ``transformer.layers.<i>.1.input_norm / net.0 / net.3`` ->
    ``blocks.<i>.norm2 / mlp.fc1 / mlp.fc2``, ``transformer.norm_out`` -> ``norm``. Keys of
    neither layout stay as they are (loading then names them as unexpected); a state dict
    already in this module's names is returned as it is.

    Args:
        state: the published encoder's state dict.
        patch_size: patch side (the kernel's).

    Raises:
        ValueError: ``linear_input.weight`` is not bands x patch x patch columns wide.
    """
    inverse = {pub: own for own, pub in _BLOCK_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        if key.startswith("linear_input."):
            name = "patch_embed.proj." + key.split(".", 1)[1]
            if name.endswith(".weight"):
                value = _kernel(value, patch_size)
        elif key.startswith("transformer.norm_out."):
            name = "norm." + key.rsplit(".", 1)[1]
        elif (m := _PUBLISHED_BLOCK.fullmatch(key)) and m.group(2) in inverse:
            name = f"blocks.{m.group(1)}.{inverse[m.group(2)]}.{m.group(3)}"
        out[name] = value
    return out


def to_publisher(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`CROMAOptical`'s state dict (head left out) in the published ``s2_encoder`` layout;
    the inverse of :func:`from_publisher`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        name = key
        if key.startswith("patch_embed.proj."):
            name = "linear_input." + key.rsplit(".", 1)[1]
            if name.endswith(".weight"):
                value = value.flatten(1)
        elif key.startswith("norm."):
            name = "transformer.norm_out." + key.rsplit(".", 1)[1]
        elif (m := _OWN_BLOCK.fullmatch(key)) and m.group(2) in _BLOCK_KEYS:
            name = f"transformer.layers.{m.group(1)}.{_BLOCK_KEYS[m.group(2)]}.{m.group(3)}"
        out[name] = value.contiguous()
    return out


def two_sigma(means: Sequence[float], stds: Sequence[float], scale: float,
              ) -> tuple[list[float], list[float], tuple[float, float]]:
    """CROMA's normalisation ``croma_2sigma`` from the train split's per-band means and stds
    (raw units; ``scale`` the store's value scale): min = m - 2 s and max = m + 2 s, x ->
    clip((x - min) / (max - min), 0, 1); i.e. mean (m - 2 s), std 4 s (scaled units), clip (0, 1)."""
    mean = [(m - 2 * d) * scale for m, d in zip(means, stds, strict=True)]
    std = [4 * d * scale for d in stds]
    return mean, std, (0.0, 1.0)


class CROMAFamily(EncoderFamily):
    """The ``croma`` encoder family: :class:`CROMAOptical`, a plain ViT for everything else."""

    name = "croma"
    norm_rules = (NormRule("croma_2sigma", NORM_RULE_WORDS["croma_2sigma"], two_sigma),)

    def create(self, bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
        """A :class:`CROMAOptical` of ``bb["kwargs"]``.

        Raises:
            ConfigError: ``backbone.kwargs`` a CROMA encoder cannot take (naming the key).
        """
        try:
            return CROMAOptical(in_chans=in_chans, num_classes=num_classes, **bb["kwargs"])
        except TypeError as err:  # an unknown keyword
            raise ConfigError(f"backbone.kwargs: {bb['name']}: {err}") from None
        except ValueError as err:  # "<key>: <value> ..."
            raise ConfigError(f"backbone.kwargs.{err} ({bb['name']})") from None

    def from_checkpoint(self, state: dict[str, torch.Tensor], bb: dict[str, Any],
                        ) -> dict[str, torch.Tensor]:
        """The published ``s2_encoder`` layout renamed (:func:`from_publisher`)."""
        return from_publisher(state, int(bb["kwargs"].get("patch_size", PATCH_SIZE)))

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The published ``s2_encoder`` layout (:func:`to_publisher`)."""
        return to_publisher(state)

    def fixture_checkpoint(self, entry: Any, in_chans: int) -> Any:
        """A CROMA checkpoint as published (``CROMA_base.pt``): a dict of encoders, the optical
        one (the entry's wrapper, ``s2_encoder``) in the authors' key names and shapes, with
        the optical and radar ``GAP_FFN`` projection heads (LayerNorm, Linear(D, 4D), GELU,
        Linear(4D, D): keys ``0``, ``1``, ``3``). The radar and joint encoders, which geopeft
        never reads, are left out (a base fixture would be as large as the real 778 MB file
        rather than the optical encoder's 343 MB)."""
        model = CROMAOptical(in_chans=in_chans, num_classes=0, **entry.kwargs)
        dim = model.embed_dim

        def gap_ffn() -> dict[str, Any]:
            ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                nn.Linear(4 * dim, dim))
            return {k: v.contiguous() for k, v in ffn.state_dict().items()}

        return {entry.checkpoint_wrapper: to_publisher(model.state_dict()),
                "s2_GAP_FFN": gap_ffn(), "s1_GAP_FFN": gap_ffn()}

    def size_multiple(self, model: nn.Module) -> int | None:
        """The patch side: the attention bias follows any grid."""
        return int(model.size_multiple)  # type: ignore[arg-type]


#: The ``croma`` encoder family.
CROMA = CROMAFamily()

__all__ = ["CROMA", "NUM_HEADS", "PATCH_SIZE", "CROMAFamily", "CROMAOptical", "alibi_2d",
           "alibi_slopes", "from_publisher", "to_publisher", "two_sigma"]
