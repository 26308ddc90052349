"""DOFA in the zoo (issue 33): a ViT whose patch embedding is generated from the bands'
wavelengths, so one set of weights takes any Sentinel-2 band set.

Checked from outside against torchgeo's ``torchgeo/models/dofa.py`` (microsoft/torchgeo at
commit 7ea0616de): with the same random weights, 6 bands at 64 px, the pooled features of
``DOFA.forward_features`` and the patch tokens of its ``DOFAEmbedding`` equal geopeft's exactly
(float32), and the trainable parameter counts below are the reference's (its fixed position
embedding is a parameter there, 197 x D more in all; a buffer here). Here, a reference written
from the published architecture and key names holds geopeft's outputs to it."""

from __future__ import annotations

import hashlib
from functools import partial

import pytest
import torch
from conftest import job_spec
from fileserver import FaultServer
from torch import nn

from geopeft.data.dataset import StoreInfo
from geopeft.errors import ConfigError
from geopeft.models import backbones
from geopeft.models.build import build_model
from geopeft.models.classifier import build_classifier
from geopeft.models.dofa import WAVELENGTHS_UM
from geopeft.models.families import get_family
from geopeft.models.weights import WeightsError, load_weights

#: The reference's trainable parameter counts (torchgeo 7ea0616de, num_classes 0).
REFERENCE_TRAINABLE = {"dofa_base_patch16_224": 111_160_832,
                       "dofa_large_patch16_224": 336_903_680}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 32}
BANDS = ["B04", "B03", "B02", "B08", "B11", "B12"]


def _bb(weights: str = "none") -> dict:
    return {"name": "dofa_base_patch16_224", "weights": weights, "kwargs": dict(TINY)}


def _published(seed: int = 0) -> dict[str, torch.Tensor]:
    """A file as torchgeo publishes DOFA's (the encoder's bare state dict: no fc_norm, no
    head), random values moved off their initialisation."""
    torch.manual_seed(seed)
    m = backbones.create_model(backbones.resolve(_bb()), 3, 0, ["B04", "B03", "B02"])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return get_family("dofa").to_checkpoint(m.state_dict())


# ------------------------------------------------------------------ the independent reference
def ref_pooled(state: dict[str, torch.Tensor], x: torch.Tensor, waves: list[float],
               ) -> torch.Tensor:
    """DOFA's ``forward_features`` (global pool, a new fc_norm) written from the published
    architecture: wavelength embedding -> residual MLP -> one post-norm transformer layer over
    [128 weight tokens, bands, bias token] -> kernel and bias x 0.01 -> convolution of stride p,
    padding 1 -> class token and position embedding -> blocks -> mean of the patch tokens ->
    LayerNorm."""
    from timm.models.vision_transformer import Block

    pe = {k[len("patch_embed."):]: v for k, v in state.items() if k.startswith("patch_embed.")}
    dim = state["cls_token"].shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(64, dtype=torch.float32) / 64.0)
    ang = torch.tensor(waves).float()[:, None] * 1000 * omega[None]
    w = torch.cat([ang.sin(), ang.cos()], 1)
    h = nn.functional.relu(w @ pe["fclayer.w1.weight"].T + pe["fclayer.w1.bias"])
    w = w + nn.functional.relu(h @ pe["fclayer.w2.weight"].T + pe["fclayer.w2.bias"])
    layer = nn.TransformerEncoderLayer(128, 4, activation="gelu", dropout=0.0).eval()
    prefix = "weight_generator.transformer_encoder.layers.0."
    layer.load_state_dict({k[len(prefix):]: v for k, v in pe.items() if k.startswith(prefix)})
    seq = torch.cat([pe["weight_generator.weight_tokens"], w, pe["weight_generator.bias_token"]])
    out = layer(seq)
    kernel = (out[128:-1] + w) @ pe["weight_generator.fc_weight.weight"].T \
        + pe["weight_generator.fc_weight.bias"]
    bias = out[-1] @ pe["weight_generator.fc_bias.weight"].T + pe["weight_generator.fc_bias.bias"]
    p = int(round((kernel.shape[1] / dim) ** 0.5))
    kernel = kernel.view(len(waves), p, p, dim).permute(3, 0, 1, 2) * 0.01
    tokens = nn.functional.conv2d(x, kernel, bias * 0.01, stride=p, padding=1)
    tokens = tokens.flatten(2).transpose(1, 2) + state["pos_embed"][:, 1:]
    cls = (state["cls_token"] + state["pos_embed"][:, :1]).expand(len(x), -1, -1)
    tokens = torch.cat([cls, tokens], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        blk = Block(dim, TINY["num_heads"], 4.0, qkv_bias=True,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
        blk.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items()
                             if k.startswith(f"blocks.{i}.")})
        tokens = blk(tokens)
    return nn.functional.layer_norm(tokens[:, 1:].mean(1), (dim,), eps=1e-6)


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", sorted(REFERENCE_TRAINABLE))
def test_parameter_counts_equal_the_references(name):
    with torch.device("meta"):
        m = backbones.create_model({"name": name}, 4, 0, ["B02", "B03", "B04", "B08"])
    assert sum(p.numel() for p in m.parameters()) == REFERENCE_TRAINABLE[name]
    assert "pos_embed" in dict(m.named_buffers()) and m.encoder_family == "dofa"
    bb = backbones.resolve({"name": name})
    assert bb["weight_bands"] is None and bb["weight_norm"] is None  # any bands; data stats
    assert bb["weights"].endswith(("-a0275954.pth", "-0ff904d3.pth"))


def test_outputs_equal_the_reference_for_any_band_set_in_any_order():
    st = _published()
    bb = backbones.resolve(_bb())
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        outs = {}
        for order in (BANDS, BANDS[::-1]):
            m = backbones.create_model(bb, 6, 0, order).eval()
            m.load_state_dict(get_family("dofa").from_checkpoint(st, bb), strict=True)
            xi = x if order == BANDS else x.flip(1)
            outs[tuple(order)] = m.forward_head(m.forward_features(xi), pre_logits=True)
            want = ref_pooled(st, xi, [WAVELENGTHS_UM[b] for b in order])
            assert torch.allclose(outs[tuple(order)], want, atol=1e-5)
        # the kernel follows the wavelengths: the same bands in another order, the same output
        assert torch.allclose(*outs.values(), atol=1e-5)
        three = backbones.create_model(bb, 3, 0, ["B04", "B03", "B02"]).eval()
        three.load_state_dict(get_family("dofa").from_checkpoint(st, bb))
        assert three.patch_embed.kernel()[0].shape == (64, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"\['NDVI'\] have none"):
        backbones.create_model(bb, 2, 0, ["B04", "NDVI"])


def test_a_published_file_loads_from_a_url_for_the_datas_bands(tmp_path):
    st = _published(seed=1)
    path = tmp_path / "dofa_base_patch16_224-00000000.pth"
    torch.save(st, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path = path.rename(tmp_path / f"dofa_base_patch16_224-{sha[:8]}.pth")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with FaultServer({path.name: path.read_bytes()}) as srv:
            cfg = _bb(f"url:{srv.url}/{path.name}")
            w = load_weights(backbones.resolve(cfg))
            assert w is not None and w.bands == [] and w.norm is None
            info = StoreInfo(tmp_path / "s.zarr", "eurosat_ms", ["a", "b"], BANDS, 1e-4,
                             [1000.0] * 6, [500.0] * 6, "f" * 64, (32, 32))
            m, minfo = build_classifier(cfg, info, 2)
    finally:
        torch.hub.set_dir(old)
    assert minfo["norm_mean"] == pytest.approx([0.1] * 6)  # z-scored with the data's statistics
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        got = m.backbone.forward_head(m.backbone.forward_features(x), pre_logits=True)
        assert torch.allclose(got, ref_pooled(st, x, [WAVELENGTHS_UM[b] for b in BANDS]),
                              atol=1e-5)
    bad = {k: v for k, v in st.items() if not k.startswith("patch_embed.")}
    torch.save(bad, tmp_path / "bad.pth")
    cfg = {**_bb(f"file:{tmp_path / 'bad.pth'}"),
           "sha256": hashlib.sha256((tmp_path / "bad.pth").read_bytes()).hexdigest()}
    with pytest.raises(WeightsError, match="not a DOFA checkpoint"):
        load_weights(backbones.resolve(cfg))


@pytest.mark.parametrize("method", ["linear", "lora", "full"])
def test_dofa_trains_as_classifier_and_as_the_time_series_encoder(method):
    """Under full fine-tuning the kernel's generator trains (the reference's
    parameterisation); LoRA adapts q/k/v of every block; UPerNet + L-TAE on every date."""
    torch.manual_seed(0)
    info = StoreInfo("x.zarr", "eurosat_ms", ["a", "b", "c"], BANDS, 1e-4, [1000.0] * 6,
                     [500.0] * 6, "f" * 64, (32, 32))
    row = {"method": method, **({"lora": {"r": 2, "alpha": 4, "dropout": 0.0}}
                               if method == "lora" else {})}
    m, _ = build_model(job_spec({"backbone": _bb(), "row": row}), info)
    trained = [n for n, p in m.named_parameters() if p.requires_grad]
    if method == "full":
        assert any("weight_generator" in n for n in trained)
    if method == "lora":
        assert sum("lora_A" in n for n in trained) == 2 * 3
    m(torch.rand(2, 6, 32, 32) * 3000).sum().backward()
    seg = {"channels": 16, "out_indices": [0, 1, 1, 1], "ltae": {"d_model": 16, "heads": 4}}
    pastis = StoreInfo("p.zarr", "pastis", [str(i) for i in range(20)], BANDS, 1e-4,
                       [1000.0] * 6, [500.0] * 6, "f" * 64, (32, 32), 19)
    s, _ = build_model(job_spec({"backbone": _bb(), "row": {**row, "segmentation": seg}}), pastis)
    out = s(torch.rand(2, 3, 6, 32, 32) * 3000, torch.tensor([[1.0, 40.0, 80.0]] * 2))
    assert out.shape == (2, 19, 32, 32)
    out.sum().backward()
