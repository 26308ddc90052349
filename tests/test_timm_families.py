"""Any timm model by name (issue 33): Swin V1, ConvNeXt, EVA-02 and DINOv3 join ViT and Swin-V2
as encoder families; each builds from its timm name, gives timm's own outputs with the same
weights (adapters exposed, outputs unchanged), trains under every strategy with adapter targets
found from its modules, and feeds the UPerNet + L-TAE segmenter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import job_spec

from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones
from geopeft.models.build import build_model

#: Tiny versions of each family's models (timm's architecture, fewer and narrower blocks), and
#: the input side each takes.
TINY = {
    "swin_tiny_patch4_window7_224": ("swin1", 32, {"img_size": 32, "window_size": 4,
                                                   "embed_dim": 24, "depths": (1, 1),
                                                   "num_heads": (2, 4)}),
    "convnext_atto": ("convnext", 64, {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)}),
    "eva02_tiny_patch14_224": ("eva", 28, {"img_size": 28, "depth": 2}),
    "vit_small_patch16_dinov3": ("eva", 32, {"img_size": 32, "depth": 2, "embed_dim": 64,
                                             "num_heads": 2}),
    "resnet18": ("resnet", 64, {}),
}
#: LoRA's default targets of each family.
TARGETS = {"convnext": ("fc1", "fc2"), "resnet": ("conv2",)}
BANDS = ["B04", "B03", "B02", "B08"]


def _info(side: int) -> StoreInfo:
    return StoreInfo(Path("x.zarr"), "eurosat_ms", [f"c{i}" for i in range(4)], BANDS, 1e-4,
                     [1000.0] * 4, [500.0] * 4, "f" * 64, (side, side))


def _cfg(name: str) -> dict:
    return {"name": name, "weights": "none", "kwargs": dict(TINY[name][2])}


def _as_if_trained(model: torch.nn.Module) -> None:
    """Move every tensor off timm's initialisation (zero biases, zero layer scales and
    post-norms make adapters on random weights look dead or alive for the wrong reason)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_timm_names_resolve_to_their_family_and_adapter_targets():
    fam = {n: backbones.resolve({"name": n})["family"]
           for n in ("swin_tiny_patch4_window7_224", "convnext_tiny", "eva02_base_patch14_224",
                     "vit_base_patch16_dinov3", "vit_small_patch14_dinov2", "swinv2_tiny_window8_256",
                     "resnet50")}
    assert fam == {"swin_tiny_patch4_window7_224": "swin1", "convnext_tiny": "convnext",
                   "resnet50": "resnet",
                   "eva02_base_patch14_224": "eva", "vit_base_patch16_dinov3": "eva",
                   "vit_small_patch14_dinov2": "vit", "swinv2_tiny_window8_256": "swin"}
    assert backbones.resolve({"name": "convnext_tiny"})["lora_targets"] == ["fc1", "fc2"]
    assert backbones.resolve({"name": "resnet50"})["lora_targets"] == ["conv2"]
    assert backbones.resolve({"name": "eva02_base_patch14_224"})["lora_targets"] == ["q", "k", "v"]
    # a timm model of no family yet is named, with the families there are
    with pytest.raises(ValueError, match=r"'regnety_032' is neither a zoo backbone .* nor a "
                                         r"timm architecture of an encoder family \(vit, swin, "
                                         r"swin1, eva, convnext, resnet\)"):
        backbones.resolve({"name": "regnety_032"})


@pytest.mark.parametrize("name", list(TINY))
def test_the_encoder_is_timms_model_with_adapters_exposed(name):
    """The same weights give timm's own outputs, before and after the attention is opened to
    adapters (EVA-02 keeps its q/v biases outside its qkv layer, as Swin-V2 does)."""
    import timm

    family, side, kw = TINY[name]
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, num_classes=0, in_chans=4, **kw).eval()
    _as_if_trained(ref)
    ours = backbones.create_model(_cfg(name), 4, 0).eval()
    assert ours.encoder_family == family
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, side, side)
    with torch.no_grad():
        want = ref(x)
        assert torch.equal(ours(x), want)
        n = backbones.prepare_for_adapters(ours)
        assert n == (0 if family in TARGETS else 2)
        assert torch.allclose(ours(x), want, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("method", ["full", "linear", "lora", "e2e", "scratch", "bitfit"])
def test_every_strategy_trains_what_it_should_on_each_timm_family(name, method):
    family, side, _ = TINY[name]
    torch.manual_seed(0)
    spec = job_spec({"backbone": _cfg(name),
                     "row": {"method": method, **({"lora": {"r": 2, "alpha": 4, "dropout": 0.0}}
                                                  if method == "lora" else {})}})
    model, _ = build_model(spec, _info(side))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    every = {n for n, _ in model.named_parameters()}
    head = (".fc." if family == "resnet" else ".head")  # the classifier layer of each family
    x = torch.rand(2, 4, side, side) * 3000
    if method in ("full", "e2e", "scratch"):
        assert trained == every
    elif method == "linear":
        assert trained and all(head in n for n in trained)
    elif method == "bitfit":
        assert any("bias" in n and head not in n for n in trained)
        assert all(n.endswith("bias") or head in n for n in trained)
    else:  # LoRA on the family's declared targets: q/k/v, ConvNeXt's MLP, a ResNet's 3x3
        lora = {n for n in trained if "lora_" in n}
        targets = TARGETS.get(family, ("q", "k", "v"))
        assert lora and {n.split(".lora_")[0].rsplit(".", 1)[1] for n in lora} == set(targets)
        _as_if_trained(model)
        model.eval()
        with torch.no_grad():
            before = model(x)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_()
            assert not torch.allclose(model(x), before, atol=1e-4)  # the adapters are live
        model.train()
    loss = model(x).sum()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trained)


@pytest.mark.parametrize("name", list(TINY))
def test_each_timm_family_feeds_the_time_series_segmenter(name):
    """UPerNet + L-TAE on every date: a ViT's four taps made a pyramid, a Swin's or ConvNeXt's
    four stages as they are; decoder-only trains the decoder alone."""
    family, side, _ = TINY[name]
    torch.manual_seed(0)
    spec = job_spec({"backbone": _cfg(name),
                     "row": {"method": "linear",
                             "segmentation": {"channels": 16, "ltae": {"d_model": 16,
                                                                        "heads": 4}}}})
    info = StoreInfo(Path("p.zarr"), "pastis", [str(i) for i in range(20)], BANDS, 1e-4,
                     [1000.0] * 4, [500.0] * 4, "f" * 64, (side, side), 19)
    model, _ = build_model(spec, info)
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained <= {"adaptor", "ltae", "pyramid", "upernet"} and "upernet" in trained
    x = torch.randint(1, 3000, (2, 3, 4, side, side)).float()
    days = torch.tensor([[10.0, 50.0, 90.0]] * 2)
    out = model(x, days)
    assert out.shape == (2, 19, side, side)
    out.sum().backward()


@pytest.mark.parametrize("name,tag", [("convnext_atto", "convnext_atto.d2_in1k"),
                                      ("swin_tiny_patch4_window7_224",
                                       "swin_tiny_patch4_window7_224.ms_in1k"),
                                      ("eva02_tiny_patch14_224", "eva02_tiny_patch14_224.mim_in22k")])
def test_timm_weights_load_with_the_band_reading_convolution_mapped(name, tag, tmp_path):
    """``timm:<tag>`` weights (here a local copy of the tag's file, as ``backbone.file`` gives
    it offline) load into a 4-band encoder: RGB kernels moved to B04 B03 B02, B08 their mean
    (ConvNeXt's stem convolution, a ViT's or Swin's patch embedding), every other tensor
    timm's."""
    import timm
    from safetensors.torch import save_file

    from geopeft.models.weights import load_into, load_weights

    family, side, kw = TINY[name]
    torch.manual_seed(0)
    rgb = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    _as_if_trained(rgb)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    bb = backbones.resolve({"name": name, "weights": f"timm:{tag}", "file": str(path),
                            "sha256": sha, "kwargs": dict(kw)})
    weights = load_weights(bb)
    ours = backbones.create_model(bb, 4, 0)
    load_into(ours, weights, ["B02", "B03", "B04", "B08"])
    key = "stem.0.weight" if family == "convnext" else "patch_embed.proj.weight"
    src, dst = rgb.state_dict()[key], ours.state_dict()[key]
    assert dst.shape[1] == 4
    # timm's RGB order is R, G, B = B04, B03, B02: mapped to the data's B02, B03, B04; B08 new
    for i, j in ((0, 2), (1, 1), (2, 0)):
        assert torch.allclose(dst[:, i], src[:, j] * 3 / 4)
    assert torch.allclose(dst[:, 3], src.mean(dim=1) * 3 / 4)
    for k, v in rgb.state_dict().items():
        if k != key:
            assert torch.equal(ours.state_dict()[k], v), k


def test_ssl4eo_s12_resnet50_weights_load_for_pastis_bands(tmp_path):
    """SSL4EO-S12's ResNet-50 (torchgeo's file: timm's resnet50 state dict, 13 bands in ESA
    order) loads through ``url:``; for PASTIS's 10 bands the stem keeps their 10 kernels (B01,
    B09, B10 dropped: zero-filled), normalisation DN/10000."""
    import hashlib

    from fileserver import FaultServer

    from geopeft.models.classifier import build_classifier
    from geopeft.models.weights import load_weights
    from geopeft.models.zoo import REGISTRY, SSL4EO_S2_BANDS

    entry = REGISTRY["ssl4eo_s12_rn50_moco"]
    torch.manual_seed(0)
    import timm

    rn = timm.create_model("resnet50", pretrained=False, num_classes=0, in_chans=13)
    path = tmp_path / "resnet50_sentinel2_all_moco.pth"
    torch.save(rn.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path = path.rename(tmp_path / f"resnet50_sentinel2_all_moco-{sha[:8]}.pth")
    pastis = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with FaultServer({path.name: path.read_bytes()}) as srv:
            cfg = {"name": entry.key, "weights": f"url:{srv.url}/{path.name}"}
            w = load_weights(backbones.resolve(cfg))
            info = StoreInfo(tmp_path / "s.zarr", "eurosat_ms", ["a", "b"], pastis, 1e-4,
                             [1000.0] * 10, [500.0] * 10, "f" * 64, (64, 64))
            m, minfo = build_classifier(cfg, info, 2)
    finally:
        torch.hub.set_dir(old)
    assert list(w.bands) == list(SSL4EO_S2_BANDS)
    assert minfo["norm_mean"] == [0.0] * 10 and minfo["norm_std"] == [1.0] * 10
    keep = [SSL4EO_S2_BANDS.index(b) for b in pastis]
    assert torch.equal(m.backbone.conv1.weight, rn.conv1.weight[:, keep])
    assert torch.equal(m.backbone.layer4[2].conv3.weight, rn.layer4[2].conv3.weight)


def test_the_zoo_listing_says_what_each_new_entry_takes():
    """``geopeft backbones``: a ResNet takes any side that is a multiple of 32; DOFA any
    Sentinel-2 bands, z-scored with the data's statistics; Prithvi its six bands."""
    rows = {r["name"]: r for r in backbones.describe()}
    assert rows["ssl4eo_s12_rn50_moco"]["input"] == "any x32"
    assert rows["ssl4eo_s12_rn50_moco"]["lora_targets"] == "conv2"
    assert rows["dofa_base_patch16_224"]["bands"] == "any Sentinel-2 bands"
    assert rows["dofa_base_patch16_224"]["normalisation"] == "the data's train mean/std"
    assert rows["prithvi_eo_v2_300"]["bands"] == "B02 B03 B04 B8A B11 B12"
    assert rows["prithvi_eo_v2_300"]["normalisation"] == "weights' own mean/std"
    assert rows["embedded"]["normalisation"] == "as pretrained"
    assert rows["vit_b16_in21k"]["normalisation"] == "weights' own mean/std"


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}),
    ("prithvi_eo_v2_300", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32,
                           "patch_size": 8}),
    ("dofa_base_patch16_224", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32,
                               "patch_size": 8}),
], ids=["resnet", "prithvi", "dofa"])
def test_a_lora_row_of_each_new_family_trains_saves_and_serves(rgb_store, tmp_path, name,
                                                                kwargs):
    """train_row (what a workflow job runs) with LoRA, then the saved model rebuilt for
    predict and the app: the same outputs as the trained model, and merged for inference (one
    plain model, the same outputs)."""
    from geopeft.models.saved import load_model
    from geopeft.tracking import init_experiment
    from geopeft.train.run import train_row

    exp = tmp_path / "exp.json"
    init_experiment(f"sqlite:///{tmp_path / 'm.db'}", "families", tmp_path / "art", exp)
    spec = job_spec({"backbone": {"name": name, "weights": "none", "kwargs": kwargs},
                     "row": {"method": "lora", "name": f"lora-{name}",
                             "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
                             "train": {"epochs": 1, "batch_size": 16, "lr": 0.01,
                                       "device": "cpu", "checkpoint_every": 0}}})
    rec = train_row(spec, rgb_store, None, exp, tmp_path / "model")
    assert rec["trainable_params"] < rec["total_params"]
    model = load_model(tmp_path / "model")
    merged = load_model(tmp_path / "model", merge=True)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    x = torch.rand(3, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-4)
