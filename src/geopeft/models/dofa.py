"""DOFA, Dynamic One-For-All (Xiong et al. 2024, arXiv:2403.15356): a ViT whose patch embedding
is generated from the input bands' wavelengths, so one set of weights takes any band set.

The reference is torchgeo's ``torchgeo/models/dofa.py`` (the authors' model, with the published
weights ``dofa_base_patch16_224-a0275954.pth``, ``dofa_large_patch16_224-0ff904d3.pth``):

* the patch embedding (:class:`DynamicPatchEmbed`) turns each band's wavelength (um, x 1000) into
  a 128-wide sine-cosine embedding, a residual MLP (``fclayer``) and one post-norm transformer
  layer over [128 weight tokens, the bands, a bias token] (``weight_generator``), whose outputs
  give the convolution kernel (bands x p x p per output channel) and bias, both x 0.01; the
  convolution has stride p and **padding 1**, as the reference's;
* timm's blocks (q/k/v biases, LayerNorm eps 1e-6), a class token, a fixed (not trained)
  position embedding of the published weights;
* the classifier pools the patch tokens and normalises them (``fc_norm``, new with every model:
  it is not in the published files, as in the reference; the identity at first, it trains where
  the encoder trains), then its head.

geopeft builds it as timm's ``VisionTransformer`` with that patch embedding (``global_pool:
avg``, ``fc_norm``), so token grid, taps and adapters (q/k/v) work as on any timm ViT; the
kernel is generated at every forward pass, as in the reference, so full fine-tuning trains the
generator. A model is built for the data's bands (:data:`WAVELENGTHS_UM`); another input size
than 224 resamples the position embedding (timm's rule; the reference takes 224 only).

Wavelengths are PANGAEA-bench's (``configs/encoder/dofa.yaml``, the Sentinel-2 band centres
rounded), a band without one is refused by name. DOFA's weights expect each band z-scored with
the data's statistics (the publisher's normalisation is per sensor): geopeft's default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geopeft.errors import ConfigError
from geopeft.models.families import EncoderFamily

#: Each Sentinel-2 band's wavelength (um) as DOFA gets it: PANGAEA-bench's ``wave_list``.
WAVELENGTHS_UM: dict[str, float] = {
    "B01": 0.44, "B02": 0.49, "B03": 0.56, "B04": 0.665, "B05": 0.705, "B06": 0.74,
    "B07": 0.783, "B08": 0.832, "B8A": 0.864, "B09": 0.945, "B10": 1.373, "B11": 1.61,
    "B12": 2.20,
}
#: Width of the wavelength embedding and of the weight generator.
DYNAMIC_DIM = 128
#: Weight tokens of the generator.
WEIGHT_TOKENS = 128
#: Scale of the generated kernel and bias.
SCALE = 0.01


def wavelength_embedding(dim: int, wavelengths_um: torch.Tensor) -> torch.Tensor:
    """The 1-D sine-cosine embedding (C, ``dim``) of the wavelengths in nm, in float32 (the
    reference's arithmetic)."""
    omega = torch.arange(dim // 2, dtype=torch.float32, device=wavelengths_um.device)
    omega = 1.0 / 10000 ** (omega / (dim / 2.0))
    angles = (wavelengths_um.float() * 1000).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ResidualMLP(nn.Module):
    """x + ReLU(w2(ReLU(w1(x))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class _WeightGenerator(nn.Module):
    """One post-norm transformer layer over [weight tokens, band embeddings, bias token]; the
    bands' outputs (+ their embeddings) give the kernel, the bias token's the bias."""

    def __init__(self, dim: int, kernel_numel: int, embed_dim: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=4, activation="gelu",
                                           norm_first=False, batch_first=False, dropout=0.0)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=1,
                                                         enable_nested_tensor=False)
        self.fc_weight = nn.Linear(dim, kernel_numel)
        self.fc_bias = nn.Linear(dim, embed_dim)
        self.weight_tokens = nn.Parameter(torch.randn(WEIGHT_TOKENS, dim) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, dim) * 0.02)

    def forward(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transformer_encoder(torch.cat([self.weight_tokens, waves, self.bias_token]))
        return self.fc_weight(out[WEIGHT_TOKENS:-1] + waves), self.fc_bias(out[-1])


class DynamicPatchEmbed(nn.Module):
    """DOFA's wavelength-conditioned patch embedding, for timm's ``VisionTransformer``
    (``embed_layer``): (B, C, H, W) -> (B, H/p x W/p, D), its kernel generated from the
    wavelengths (um) of the C bands at every call."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768,
                 wavelengths: list[float] | None = None, **_: Any):
        super().__init__()
        side = img_size if isinstance(img_size, int) else img_size[0]
        p = patch_size if isinstance(patch_size, int) else patch_size[0]
        self.img_size, self.patch_size = (side, side), (p, p)
        self.grid_size = (side // p, side // p)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed_dim = embed_dim
        waves = wavelengths if wavelengths is not None else [0.0] * in_chans
        if len(waves) != in_chans:
            raise ValueError(f"{len(waves)} wavelengths for {in_chans} bands")
        # the data's bands: not weights (a model is built for them)
        self.register_buffer("wavelengths", torch.tensor(waves, dtype=torch.float32),
                             persistent=False)
        self.fclayer = _ResidualMLP(DYNAMIC_DIM)
        self.weight_generator = _WeightGenerator(DYNAMIC_DIM, p * p * embed_dim, embed_dim)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of an input of ``img_size`` (stride p, padding 1)."""
        p = self.patch_size[0]
        return (img_size[0] + 2 - p) // p + 1, (img_size[1] + 2 - p) // p + 1

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution (D, C, p, p) and bias (D,) generated for the bands."""
        embedding = wavelength_embedding(DYNAMIC_DIM, self.wavelengths)
        waves = self.fclayer(embedding.to(self.fclayer.w1.weight.dtype))
        weight, bias = self.weight_generator(waves)
        p = self.patch_size[0]
        weight = weight.view(len(self.wavelengths), p, p, self.embed_dim).permute(3, 0, 1, 2)
        return weight * SCALE, bias.view(self.embed_dim) * SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.kernel()
        out = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride=self.patch_size,
                       padding=1)
        return out.flatten(2).transpose(1, 2)


class DOFAFamily(EncoderFamily):
    """The ``dofa`` encoder family: timm's ViT with DOFA's patch embedding (see the module's
    text)."""

    name = "dofa"
    input_conv = None  # the kernel is generated from the wavelengths: any band set

    def create(self, bb: dict[str, Any], in_chans: int, num_classes: int) -> nn.Module:
        """timm's ``VisionTransformer`` with :class:`DynamicPatchEmbed` for the data's bands
        (``bb["data_bands"]``; without them, placeholder wavelengths for shapes alone).

        Raises:
            ConfigError: a band without a DOFA wavelength, or kwargs it cannot take.
        """
        from functools import partial

        import timm

        bands = bb.get("data_bands")
        waves = None
        if bands is not None:
            unknown = [b for b in bands if b not in WAVELENGTHS_UM]
            if unknown:
                raise ConfigError(f"backbone.name: {bb['name']} (DOFA) builds its patch "
                                  f"embedding from each band's wavelength; {unknown} have none "
                                  f"(Sentinel-2 bands only: {', '.join(WAVELENGTHS_UM)})")
            waves = [WAVELENGTHS_UM[b] for b in bands]
        try:
            model = timm.create_model(
                "vit_base_patch16_224", pretrained=False, in_chans=in_chans,
                num_classes=num_classes, qkv_bias=True, global_pool="avg", fc_norm=True,
                class_token=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                embed_layer=partial(DynamicPatchEmbed, wavelengths=waves), **bb["kwargs"])
        except TypeError as err:
            raise ConfigError(f"backbone.kwargs: {bb['name']}: {err}") from None
        fixed = model.pos_embed.detach().clone()
        del model.pos_embed  # not trained in DOFA (requires_grad False in the reference)
        model.register_buffer("pos_embed", fixed)
        return model

    def from_checkpoint(self, state: dict[str, torch.Tensor], bb: dict[str, Any],
                        ) -> dict[str, torch.Tensor]:
        """The published file (the encoder's keys as the model's) with a new ``fc_norm`` (the
        identity: weight 1, bias 0), as the reference builds it.

        Raises:
            ValueError: no ``patch_embed.weight_generator`` keys (not a DOFA checkpoint).
        """
        if not any(k.startswith("patch_embed.weight_generator.") for k in state):
            raise ValueError("no patch_embed.weight_generator.* keys: not a DOFA checkpoint")
        out = {k: v for k, v in state.items() if not k.startswith(("fc_norm.", "norm."))}
        dim = int(state["cls_token"].shape[-1])
        out["fc_norm.weight"], out["fc_norm.bias"] = torch.ones(dim), torch.zeros(dim)
        return out

    def to_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The published layout: the encoder's keys, without ``fc_norm`` and the head."""
        return {k: v.contiguous() for k, v in state.items()
                if not k.startswith(("fc_norm.", "head."))}

    def fixture_checkpoint(self, entry: Any, in_chans: int) -> Any:
        """A checkpoint as published (``dofa_base_patch16_224-a0275954.pth``: a bare state
        dict of the encoder, no ``fc_norm`` or head), random values."""
        model = self.create({"name": entry.key, "kwargs": dict(entry.kwargs)}, in_chans, 0)
        return self.to_checkpoint(model.state_dict())


#: The ``dofa`` encoder family.
DOFA = DOFAFamily()

__all__ = ["DOFA", "DOFAFamily", "DynamicPatchEmbed", "WAVELENGTHS_UM", "wavelength_embedding"]
