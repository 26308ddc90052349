"""The timm encoder families: plain ViTs (``vit``), Swin-V2 (``swin``), Swin V1 (``swin1``),
EVA-02 and DINOv3 (``eva``), ConvNeXt (``convnext``) and ResNet (``resnet``): any timm model of
those files, by name.

Both are built by ``timm.create_model`` from the zoo entry's architecture name. A ViT is the
:class:`~geopeft.models.families.EncoderFamily` default throughout. A Swin-V2 differs: its token
grid is the last stage's (every stage after the first halves it), its depth is blocks per stage,
its final features are a (B, H, W, C) map, a UPerNet reads its four stages (already a pyramid,
each of its own width), and its attention applies ``qkv.weight`` with biases kept outside the
layer, which adapters need switched to calling the layer
(:func:`geopeft.models.qkv.separate_qkv_bias`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from geopeft.models.families import EncoderFamily, Taps
from geopeft.models.qkv import separate_qkv_bias, split_qkv
from geopeft.models.weights import WeightsError
from geopeft.models.zoo import REGISTRY


class TimmFamily(EncoderFamily):
    """An encoder family whose models are timm architectures."""

    def create(self, bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
        """``timm.create_model(bb["arch"])`` without weights, with ``bb["kwargs"]``.

        Raises:
            WeightsError: the name is neither a zoo backbone nor a timm model.
        """
        import timm

        kwargs = dict(bb["kwargs"])
        if bb.get("drop_qkv_bias"):  # PANGAEA-bench's SSL4EO-S12 encoder: no q/k/v biases
            kwargs["qkv_bias"] = False
        try:
            model = timm.create_model(bb["arch"], pretrained=False, in_chans=in_chans,
                                      num_classes=num_classes, **kwargs)
            model.drops_qkv_bias = bool(bb.get("drop_qkv_bias"))
            return model
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise WeightsError(f"backbone.name: {bb['name']!r} is neither a registry "
                                   f"backbone ({', '.join(REGISTRY)}) nor a timm model") from None
            raise


class VitFamily(TimmFamily):
    """timm's plain ViTs (``vision_transformer.py``): the family defaults."""

    name = "vit"


class SwinFamily(TimmFamily):
    """timm's Swin-V2 (``swin_transformer_v2.py``): four stages, a pyramid of feature maps."""

    name = "swin"

    def token_grid(self, model: nn.Module) -> tuple[int, int]:
        """The last stage's grid: every stage after the first halves the patch grid."""
        grid = super().token_grid(model)
        k = 2 ** (len(model.layers) - 1)  # type: ignore[arg-type]
        return grid[0] // k, grid[1] // k

    def depth(self, model: nn.Module) -> list[int]:
        """Blocks per stage."""
        return [len(stage.blocks) for stage in model.layers]  # type: ignore[union-attr]

    def tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last stage's (B, H, W, C) features as tokens (B, H x W, C)."""
        return model.forward_features(x).flatten(1, 2)  # type: ignore[operator,no-any-return]

    def prepare_for_adapters(self, model: nn.Module) -> int:
        """Make every attention call its ``qkv`` layer (biases added after), then split it."""
        separate_qkv_bias(model)
        return split_qkv(model)

    def taps(self, model: nn.Module, out_indices: Sequence[int] | None,
             declared: Sequence[int] | None) -> Taps:
        """Every stage (``out_indices`` and declared taps do not apply), each of its own width,
        a pyramid already."""
        dims = [int(f["num_chs"]) for f in model.feature_info]  # type: ignore[union-attr]
        return Taps(list(range(len(model.layers))), dims, [1.0] * len(dims))  # type: ignore[arg-type]


class Swin1Family(SwinFamily):
    """timm's Swin V1 (``swin_transformer.py``): the Swin-V2 family's stages and pyramid; its
    attention calls its fused ``qkv`` layer (biases inside), which adapters see once split."""

    name = "swin1"


class EvaFamily(TimmFamily):
    """timm's ``eva.py`` ViTs: EVA-02 and DINOv3 (rotary position embeddings, register tokens).
    A plain ViT to the task models; like Swin-V2's, an EVA-02 attention applies ``qkv.weight``
    with its q/v biases outside the layer, which adapters need switched to calling the layer."""

    name = "eva"

    def prepare_for_adapters(self, model: nn.Module) -> int:
        """Make every attention call its ``qkv`` layer (biases added after), then split it."""
        separate_qkv_bias(model)
        return split_qkv(model)


class ConvNextFamily(TimmFamily):
    """timm's ConvNeXt (``convnext.py``): a convolutional pyramid of four stages (strides 4,
    8, 16, 32), no attention. Its tokens are the last stage's pixels; a UPerNet reads the four
    stages; adapters target the blocks' point-wise MLP layers (``fc1``, ``fc2``). It takes any
    input side that is a multiple of 32."""

    name = "convnext"
    adapter_targets = ("fc1", "fc2")
    input_conv = "stem.0.weight"

    def token_grid(self, model: nn.Module) -> tuple[int, int]:
        """The last stage's grid for the model's default input size (stride 32)."""
        side = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])  # type: ignore[union-attr]
        return side // 32, side // 32

    def input_size(self, model: nn.Module) -> int | None:
        return None

    def size_multiple(self, model: nn.Module) -> int | None:
        return 32

    def patch(self, model: nn.Module) -> int:
        """The last stage's stride."""
        return 32

    def depth(self, model: nn.Module) -> list[int]:
        """Blocks per stage."""
        return [len(stage.blocks) for stage in model.stages]  # type: ignore[union-attr]

    def tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last stage's (B, C, H, W) map as tokens (B, H x W, C)."""
        return model.forward_features(x).flatten(2).transpose(1, 2)  # type: ignore[operator,no-any-return]

    def prepare_for_adapters(self, model: nn.Module) -> int:
        """Nothing to expose: its MLP layers are plain linear layers; no attention."""
        return 0

    def taps(self, model: nn.Module, out_indices: Sequence[int] | None,
             declared: Sequence[int] | None) -> Taps:
        """Every stage (``out_indices`` do not apply), each of its own width, a pyramid
        already."""
        dims = [int(f["num_chs"]) for f in model.feature_info]  # type: ignore[union-attr]
        return Taps(list(range(len(dims))), dims, [1.0] * len(dims))


class ResNetFamily(ConvNextFamily):
    """timm's ResNets (``resnet.py``): a convolutional pyramid (a stride-4 stem, then four
    stages of strides 4, 8, 16, 32), no attention; SSL4EO-S12's ResNet-50 weights are timm's
    ``resnet50`` for 13 bands. Its tokens are the last stage's pixels; a UPerNet reads the four
    stages (not the stem); adapters (LoRA) go on each bottleneck's 3x3 convolution (``conv2``;
    peft's LoRA for convolutions); the stem convolution reads the bands."""

    name = "resnet"
    adapter_targets = ("conv2",)
    input_conv = "conv1.weight"

    def depth(self, model: nn.Module) -> list[int]:
        """Blocks per stage."""
        return [len(getattr(model, f"layer{i}")) for i in range(1, 5)]

    def taps(self, model: nn.Module, out_indices: Sequence[int] | None,
             declared: Sequence[int] | None) -> Taps:
        """The four stages (the stem aside), each of its own width, a pyramid already."""
        dims = [int(f["num_chs"]) for f in model.feature_info][1:]  # type: ignore[union-attr]
        return Taps([1, 2, 3, 4], dims, [1.0] * 4)


#: The ``vit`` family.
VIT = VitFamily()
#: The ``swin`` family.
SWIN = SwinFamily()
#: The ``swin1`` family.
SWIN1 = Swin1Family()
#: The ``eva`` family.
EVA = EvaFamily()
#: The ``convnext`` family.
CONVNEXT = ConvNextFamily()
#: The ``resnet`` family.
RESNET = ResNetFamily()

__all__ = ["CONVNEXT", "EVA", "RESNET", "SWIN", "SWIN1", "VIT", "ConvNextFamily", "EvaFamily",
           "ResNetFamily", "Swin1Family", "SwinFamily", "TimmFamily", "VitFamily"]
