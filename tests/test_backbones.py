"""The backbone zoo: declarations, strategies on every family, Swin-V2 adapters, url/file weights."""

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import backbone_cfg
from fileserver import FaultServer

from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones
from geopeft.models.classifier import build_classifier
from geopeft.models.weights import WeightsError, hub_cache_path, load_weights
from geopeft.spec import LoraSpec
from geopeft.strategies import apply_strategy, count_parameters, param_groups

TINY_SWIN = {"img_size": 32, "window_size": 4, "embed_dim": 24, "depths": (1, 1), "num_heads": (2, 4)}
MS_BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


def swin_cfg(weights: str = "none", **kw: object) -> dict:
    return backbone_cfg(weights, name="swinv2_tiny", kwargs=dict(TINY_SWIN), **kw)


def croma_cfg(weights: str = "none", **kw: object) -> dict:
    return backbone_cfg(weights, name="croma_optical_base",
                        kwargs={"img_size": 32, "embed_dim": 32, "depth": 2}, **kw)


def store(bands=("B04", "B03", "B02"), scale=1 / 255, size=32) -> StoreInfo:
    n = len(bands)
    return StoreInfo(Path("x.zarr"), "eurosat_ms", [f"c{i}" for i in range(4)], list(bands), scale,
                     [1000.0] * n, [500.0] * n, "f" * 64, (size, size))


def trainable(m):
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_registry_declares_grid_width_bands_norm_targets():
    rows = {r["name"]: r for r in backbones.describe()}
    assert {"vit_b16_in21k", "swinv2_tiny", "ssl4eo_s12_vits16_dino", "ssl4eo_s12_vits16_moco",
            "ssl4eo_s12_vits16_mae", "embedded"} <= set(rows)
    assert (rows["vit_b16_in21k"]["grid"], rows["vit_b16_in21k"]["width"]) == ("14x14", 768)
    assert (rows["swinv2_tiny"]["grid"], rows["swinv2_tiny"]["width"]) == ("8x8", 768)
    assert rows["swinv2_tiny"]["input"] == 256
    ssl = backbones.REGISTRY["ssl4eo_s12_vits16_dino"]
    assert (rows[ssl.key]["grid"], rows[ssl.key]["width"]) == ("14x14", 384)
    assert ssl.bands is not None and len(ssl.bands) == 13 and ssl.bands[8] == "B8A"  # ESA order
    assert ssl.norm == ((0.0,) * 13, (1.0,) * 13) and rows[ssl.key]["normalisation"] == "DN/10000"
    # published locations carry the torch-hub sha256 prefix in the file name
    assert ssl.weights.endswith("-36bcc127.pth")
    for e in backbones.REGISTRY.values():
        assert e.family in ("vit", "swin", "croma", "prithvi", "dofa", "resnet")
        assert e.targets() == (("conv2",) if e.family == "resnet" else ("q", "k", "v"))
    # a plain timm name gets a generic entry: the family whose timm file registers it, weights
    # from pretrain; a name no timm family registers is named
    assert backbones.resolve({"name": "swinv2_tiny_window16_256"})["family"] == "swin"
    assert backbones.resolve({"name": "vit_small_patch16_224"})["weights"] == "pretrain"
    with pytest.raises(ValueError, match="'swinv2_cr_tiny_ns_224' is neither a zoo backbone"):
        backbones.resolve({"name": "swinv2_cr_tiny_ns_224"})


@pytest.mark.parametrize("family", ["vit", "swin", "croma"])
@pytest.mark.parametrize("method", ["full", "lora", "linear", "e2e", "scratch"])
def test_which_parameters_train_every_strategy_and_family(family, method):
    torch.manual_seed(0)
    cfg = {"vit": backbone_cfg, "swin": swin_cfg, "croma": croma_cfg}[family]()
    m, _ = build_classifier(cfg, store(), 4)
    head = {f"backbone.{h}.{p}" for h in (["head.fc"] if family == "swin" else ["head"])
            for p in ("weight", "bias")}
    m = apply_strategy(m, method, LoraSpec(r=2, alpha=4, dropout=0.0)
                       if method == "lora" else None)
    names = trainable(m)
    if method in ("full", "e2e", "scratch"):
        assert names == {n for n, _ in m.named_parameters()}
    elif method == "linear":
        assert names == head
    else:
        lora = {n for n in names if "lora_" in n}
        heads = names - lora
        assert heads and all("modules_to_save" in n and "head" in n for n in heads)
        n_attn = sum(1 for mod in m.modules() if isinstance(mod, backbones.SplitQKV))
        assert len(lora) == n_attn * 3 * 2  # A and B for q, k, v of every attention
        frozen = [p for n, p in m.named_parameters() if n not in names]
        assert frozen and not any(p.requires_grad for p in frozen)
    if method == "e2e":
        groups = param_groups(m, 1e-3, 0.1)
        assert {id(p) for p in groups[0]["params"]} == {id(p) for n, p in m.named_parameters()
                                                       if n in head}


def test_swin_adapters_are_live():
    """timm's Swin-V2 attention bypasses its qkv layer; adapters must change the output."""
    torch.manual_seed(0)
    import timm

    sw = timm.create_model("swinv2_tiny_window8_256", num_classes=3, **TINY_SWIN).eval()
    for mod in sw.modules():
        if getattr(mod, "q_bias", None) is not None:
            torch.nn.init.normal_(mod.q_bias)
            torch.nn.init.normal_(mod.v_bias)
    x = torch.randn(2, 3, 32, 32)
    ref = sw(x)
    assert backbones.prepare_for_adapters(sw) == 2
    assert torch.allclose(sw(x), ref, atol=1e-5)  # identical outputs, biases kept
    m, _ = build_classifier(swin_cfg(), store(), 3)
    with torch.no_grad():  # timm zero-initialises the residual post-norms: act as if trained
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32) * 255
    m = apply_strategy(m.eval(), "lora", LoraSpec(r=2, alpha=4, dropout=0.0))
    with torch.no_grad():
        before = m(x)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
        assert not torch.allclose(m(x), before, atol=1e-4)


#: The names peft gives each method's trained tensors.
PEFT_MARKERS = {"dora": "lora_magnitude_vector", "loha": "hada_", "lokr": "lokr_", "ia3": "ia3_l",
                "vera": "vera_lambda_", "fourierft": "fourierft_spectrum", "oft": "oft_"}


@pytest.mark.parametrize("family", ["vit", "swin", "croma"])
@pytest.mark.parametrize("method", list(PEFT_MARKERS))
def test_other_peft_methods_train_adapters_and_merge(method, family):
    """Each peft method, on each encoder family of the zoo (timm ViT, as SSL4EO-S12's; Swin-V2;
    CROMA), trains its own tensors (and the new modules) only, and merges into the encoder with
    the same outputs."""
    torch.manual_seed(0)
    cfg, info = {"vit": (backbone_cfg(), store()), "swin": (swin_cfg(), store()),
                 "croma": (croma_cfg(), store(MS_BANDS, scale=1e-4))}[family]
    m, _ = build_classifier(cfg, info, 4)
    with torch.no_grad():  # timm zero-initialises Swin-V2's residual post-norms: as if trained
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = apply_strategy(m, "lora", LoraSpec(method=method, r=2, alpha=4, dropout=0.0,
                                           n_frequency=64, block_size=4))
    names = trainable(m)
    marker = PEFT_MARKERS[method]
    assert any(marker in n for n in names)
    assert all("modules_to_save" in n or marker in n or "lora_" in n for n in names), names
    for p in m.parameters():  # move away from the identity initialisation
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, len(info.bands), 32, 32) * 255
    m.eval()
    with torch.no_grad():
        ref = m(x)
        merged = m.merge_and_unload().eval()
        assert torch.allclose(merged(x), ref, atol=1e-4)


def _checkpoint(path: Path, in_chans: int, **kw) -> dict[str, torch.Tensor]:
    vit = backbones.create_model(backbone_cfg(**kw), in_chans, 0)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


def test_url_weights_from_hub_cache_or_server_with_published_checksum(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        state = _checkpoint(tmp_path / "w.pth", 13)
        data = (tmp_path / "w.pth").read_bytes()
        prefix = hashlib.sha256(data).hexdigest()[:8]
        good, bad = f"ssl-{prefix}.pth", "ssl-00000000.pth"
        spec = dict(backbone_cfg(), name="ssl4eo_s12_vits16_dino", kwargs=backbone_cfg()["kwargs"])
        with FaultServer({good: data, bad: data}) as srv:
            w = load_weights(backbones.resolve(dict(spec, weights=f"url:{srv.url}/{good}")))
            assert w is not None and len(w.bands) == 13 and w.bands[8] == "B8A"
            assert torch.equal(w.state["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
            assert w.norm is not None and w.norm.std == [1.0] * 13
            assert hub_cache_path(f"{srv.url}/{good}").is_file()
            with pytest.raises(WeightsError, match="does not match the expected 00000000"):
                load_weights(backbones.resolve(dict(spec, weights=f"url:{srv.url}/{bad}")))
            assert not hub_cache_path(f"{srv.url}/{bad}").exists()  # never kept under its name
        # offline: the cached copy is used; a missing one is a clear error naming both places
        assert load_weights(backbones.resolve(dict(spec, weights=f"url:{srv.url}/{good}"))) is not None
        with pytest.raises(WeightsError, match=r"other-1234abcd.pth is not in the torch hub cache"
                                               r".*download it to .*hub/checkpoints/other"):
            load_weights(backbones.resolve(dict(spec, weights=f"url:{srv.url}/other-1234abcd.pth")))
    finally:
        torch.hub.set_dir(old)


def test_ssl4eo_normalisation_is_dn_over_10000_and_bands_map_by_name(tmp_path):
    state = _checkpoint(tmp_path / "w.pth", 13)
    sha = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    cfg = dict(backbone_cfg(f"file:{tmp_path / 'w.pth'}", sha256=sha), name="ssl4eo_s12_vits16_moco")
    info = store(MS_BANDS, scale=1e-4)
    m, minfo = build_classifier(cfg, info, 4)
    x = torch.randint(0, 10000, (2, 6, 32, 32)).float()
    assert torch.allclose(m.normalize(x), x / 10000, atol=1e-7)  # once, DN / 10000
    assert minfo["norm_mean"] == [0.0] * 6 and minfo["norm_std"] == [1.0] * 6
    src = state["patch_embed.proj.weight"]
    order = list(backbones.SSL4EO_S2_BANDS)
    for i, b in enumerate(MS_BANDS):  # each band keeps its own filter (= zero-filling the rest)
        assert torch.equal(m.backbone.patch_embed.proj.weight[:, i], src[:, order.index(b)])
    with pytest.raises(WeightsError, match="does not match backbone.sha256"):
        build_classifier(dict(cfg, sha256="0" * 64), info, 4)


def test_unknown_backbone_name_is_a_clear_error():
    with pytest.raises(WeightsError, match="'vit_nonexistent' is neither a zoo backbone"):
        backbones.create_model({"name": "vit_nonexistent"}, 3, 0)


def test_count_parameters_counts_saved_copies_once():
    m, _ = build_classifier(swin_cfg(), store(), 4)
    total = sum(p.numel() for p in m.parameters())
    m = apply_strategy(m, "lora", LoraSpec(r=2, alpha=4, dropout=0.0))
    t, tot = count_parameters(m)
    assert tot == total + sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    assert t < tot


@pytest.mark.parametrize(("change", "message"), [
    ({"embed_dim": 96}, r"shape mismatch \(\d+\): cls_token \(1, 1, 96\) \(model \(1, 1, 48\)\)"),
    ({"depth": 1}, r"missing \(\d+\): blocks\.1\.attn"),
    ({"depth": 3}, r"unexpected \(\d+\): blocks\.2\.attn"),
])
def test_a_checkpoint_that_does_not_fit_names_the_file_and_keys(tmp_path, change, message):
    """Wrong-size weights are an error naming the file and the first mismatching keys, never a
    silent partial load."""
    from conftest import TINY_VIT

    _checkpoint(tmp_path / "wrong.pth", 3, kwargs=dict(TINY_VIT, **change))
    sha = hashlib.sha256((tmp_path / "wrong.pth").read_bytes()).hexdigest()
    cfg = backbone_cfg(f"file:{tmp_path / 'wrong.pth'}", sha256=sha)
    with pytest.raises(WeightsError, match=rf"{tmp_path / 'wrong.pth'}: checkpoint \(file:[0-9a-f]+\) "
                                           rf"does not fit VisionTransformer: .*{message}"):
        build_classifier(cfg, store(), 4)


def test_drop_qkv_bias_is_pangaea_s_ssl4eo_encoder_and_leaves_the_published_biases_out(
        tmp_path, caplog):
    """Issue 34: backbone.drop_qkv_bias builds the ViT as PANGAEA-bench builds its SSL4EO-S12
    encoder (no q/k/v biases: 22,634,880 parameters for ViT-S/16, 22,648,704 published) and loads
    the published checkpoint without them: the same outputs as the published model whose q/k/v
    biases are zeroed, and not the published model's own."""
    import logging

    from geopeft.models.classifier import build_classifier

    for drop, count in ((False, 22_648_704), (True, 22_634_880)):
        with torch.device("meta"):
            m = backbones.create_model({"name": "ssl4eo_s12_vits16_dino", "drop_qkv_bias": drop},
                                       13, 0)
        assert sum(p.numel() for p in m.parameters()) == count
    torch.manual_seed(0)
    vit = backbones.create_model(backbone_cfg(name="ssl4eo_s12_vits16_moco"), 13, 0)
    with torch.no_grad():  # a trained checkpoint: timm initialises the biases at zero
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"model": {f"module.{k}": v.contiguous() for k, v in vit.state_dict().items()}},
               tmp_path / "w.pth")
    sha = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    cfg = dict(backbone_cfg(f"file:{tmp_path / 'w.pth'}", sha256=sha), name="ssl4eo_s12_vits16_moco")
    info = store(MS_BANDS, scale=1e-4)
    published, _ = build_classifier(cfg, info, 4)
    with caplog.at_level(logging.INFO, logger="geopeft.models.weights"):
        pangaea, _ = build_classifier(dict(cfg, drop_qkv_bias=True), info, 4)
    assert f"left out the {len(vit.blocks)} published q/k/v biases" in caplog.text
    assert not [n for n, _ in pangaea.backbone.named_parameters() if "attn" in n and "bias" in n
                and "proj" not in n]
    x = torch.rand(2, len(MS_BANDS), 32, 32) * 10000
    feats = {k: m.backbone.forward_features(m.normalize(x)) for k, m in
             (("published", published.eval()), ("pangaea", pangaea.eval()))}
    assert not torch.allclose(feats["published"], feats["pangaea"], atol=1e-3)
    with torch.no_grad():
        biases = [p for n, p in published.backbone.named_parameters()
                  if "attn" in n and n.endswith("bias") and "proj" not in n]
        assert len(biases) == 3 * len(vit.blocks) and all(b.abs().sum() > 0 for b in biases)
        for b in biases:
            b.zero_()
        zeroed = published.backbone.forward_features(published.normalize(x))
    assert torch.allclose(zeroed, feats["pangaea"], atol=1e-6)


def test_drop_qkv_bias_on_a_non_vit_encoder_is_refused():
    from geopeft import config as gcfg
    from geopeft.spec import ConfigError

    cfg = gcfg.read_yaml(Path(__file__).resolve().parents[1] / "config/studies/shaping_ft.yaml")
    cfg["strategies"]["croma_e2e"]["backbone"]["drop_qkv_bias"] = True
    with pytest.raises(ConfigError, match=r"strategies\.croma_e2e\.backbone\.drop_qkv_bias: ViT "
                                          r"encoders only .* 'croma_optical_base' is a croma"):
        gcfg.validate(cfg, "s.yaml")
    cfg["strategies"]["croma_e2e"]["backbone"].pop("drop_qkv_bias")
    cfg["backbone"]["drop_qkv_bias"] = True  # the SSL4EO-S12 encoder: as PANGAEA builds it
    card = dict(gcfg.protocol_record(gcfg.validate(cfg, "s.yaml"))["card"])
    assert "q/k/v biases left out (drop_qkv_bias)" in card["encoder"]
