"""Fusion-LoRA: shapes, gates, normalisation, ablation ladder, what trains, save/load, merge."""

from pathlib import Path

import pytest
import torch
from conftest import backbone_cfg, full_spec, job_spec
from test_backbones import TINY_SWIN

from geopeft.config import ConfigError
from geopeft.data.dataset import StoreInfo, store_info
from geopeft.models import backbones
from geopeft.models.build import build_model
from geopeft.models.fusion import build_fusion
from geopeft.models.saved import load_model, save_model
from geopeft.models.weights import Normalization
from geopeft.spec import LoraSpec
from geopeft.strategies import apply_strategy, count_parameters

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
LADDER = {
    "rgb_lora": {"tokenizer": False, "caf": False, "glf": False},
    "tokenizer": {"tokenizer": True, "caf": False, "glf": False},
    "caf": {"tokenizer": True, "caf": True, "glf": False},
    "full": {"tokenizer": True, "caf": True, "glf": True},
}
LORA = {"r": 2, "alpha": 4, "dropout": 0.0}


def store(size=32) -> StoreInfo:
    mean = [500.0 + 100 * i for i in range(6)]
    std = [200.0 + 10 * i for i in range(6)]
    return StoreInfo(Path("ms.zarr"), "bigearthnet_s2", [f"c{i}" for i in range(5)], BANDS, 1e-4,
                     mean, std, "f" * 64, (size, size))


def swin():
    return backbone_cfg(name="swinv2_tiny", kwargs=dict(TINY_SWIN))


def fusion(rung="full", cfg=None, info=None):
    torch.manual_seed(0)
    return build_fusion(cfg or backbone_cfg(), info or store(), 5, dict(LADDER[rung], heads=4))


def trainable(m):
    return {n for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("cfg", [backbone_cfg, swin], ids=["vit", "swin"])
def test_shapes_through_tokenizer_caf_glf(cfg):
    m, _ = fusion(cfg=cfg())
    x = torch.rand(3, 6, 32, 32) * 3000
    f = m.features(x)
    grid = backbones.token_grid(m.encoder)
    n, d = grid[0] * grid[1], backbones.width(m.encoder)
    assert f["rgb"].shape == (3, 3, 32, 32)
    assert f["visual"].shape == f["fused"].shape == f["out"].shape == (3, n, d)
    assert m.spectral is not None and m.spectral(m.standardize(x)).shape == (3, n, d)
    assert f["gates"].shape == (3, n, d)
    assert m(x).shape == (3, 5)
    # inputs of another size are resized to the encoder's
    assert m(torch.rand(2, 6, 20, 20) * 3000).shape == (2, 5)


def test_gates_in_open_unit_interval_and_mix():
    m, _ = fusion()
    with torch.no_grad():
        for p in m.glf.parameters():
            p.normal_(0, 0.2)
    f = m.features(torch.rand(2, 6, 32, 32) * 3000)
    g = f["gates"]
    assert (g > 0).all() and (g < 1).all() and g.std() > 0.1
    assert torch.allclose(f["out"], g * f["fused"] + (1 - g) * f["visual"])


def test_normalisation_applied_once_matching_the_encoder():
    enc = Normalization(["B04", "B03", "B02"], [0.3, 0.2, 0.1], [0.05, 0.04, 0.03])
    for learn in (False, True):
        m, _ = fusion("full" if learn else "rgb_lora")
        tok = type(m.tokenizer)(BANDS, enc, learn, 8)
        x = torch.rand(2, 6, 32, 32) * 3000
        z = m.standardize(x)
        info = store()
        assert torch.allclose(z[:, 2], (x[:, 2] * 1e-4 - info.norm_mean[2] * 1e-4)
                              / (info.norm_std[2] * 1e-4), atol=1e-5)
        # pseudo-RGB starts as the true colour composite in the encoder's units ...
        rgb = tok.pseudo_rgb(z)
        for c, band in enumerate(["B04", "B03", "B02"]):
            assert torch.allclose(rgb[:, c], enc.mean[c] + enc.std[c] * z[:, BANDS.index(band)],
                                  atol=1e-5)
        # ... and the encoder's own normalisation is applied exactly once
        out = tok(z)
        assert torch.allclose(out, torch.stack([z[:, BANDS.index(b)] for b in ("B04", "B03", "B02")], 1),
                              atol=1e-4)


def test_encoder_normalisation_comes_from_the_weights(tmp_path):
    import hashlib

    from safetensors.torch import save_file

    vit = backbones.create_model(backbone_cfg(), 13, 0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    # SSL4EO weights: DN/10000, i.e. mean 0 / std 1 in reflectance units, for B04, B03, B02
    cfg = dict(backbone_cfg(f"file:{path}", sha256=sha), name="ssl4eo_s12_vits16_dino")
    m, info = build_fusion(cfg, store(), 5, LADDER["full"])
    assert info["encoder_norm_mean"] == [0.0] * 3 and info["encoder_norm_std"] == [1.0] * 3
    # without weights: the train split's RGB statistics
    m, info = build_fusion(backbone_cfg(), store(), 5, LADDER["full"])
    assert info["encoder_norm_mean"] == pytest.approx([0.07, 0.06, 0.05])


def test_ablation_ladder_parameter_counts_and_what_trains():
    counts = {}
    for rung in LADDER:
        m, _ = fusion(rung)
        m = apply_strategy(m, "lora", LoraSpec(**LORA), ["q", "k", "v"])
        names = trainable(m)
        counts[rung] = count_parameters(m)[0]
        assert any("lora_" in n for n in names)
        assert all(".encoder." not in n or "lora_" in n for n in names)  # encoder frozen
        saved = {n.split(".")[2] for n in names if "modules_to_save" in n}
        expect = {"full": {"tokenizer", "spectral", "caf", "glf"}, "caf": {"tokenizer", "spectral", "caf"},
                  "tokenizer": {"tokenizer"}, "rgb_lora": set()}[rung] | {"pool_norm", "classifier"}
        assert saved == expect
        lora_in = {n.split(".lora_")[0] for n in names if "lora_" in n}
        assert all(".encoder." in n and n.rsplit(".", 1)[-1] in "qkv" for n in lora_in)
    assert counts["rgb_lora"] < counts["tokenizer"] < counts["caf"] < counts["full"]


@pytest.mark.parametrize("method", ["linear", "full", "scratch"])
def test_other_strategies_on_fusion(method):
    m, _ = fusion()
    m = apply_strategy(m, method)
    names = trainable(m)
    enc = {n for n, _ in m.named_parameters() if n.startswith("encoder.")}
    if method == "linear":
        assert not names & enc and {"classifier.weight", "glf.gate.weight",
                                    "tokenizer.weight"} <= names
    else:
        assert enc <= names
    assert "tokenizer.enc_mean" not in names


def test_config_errors():
    with pytest.raises(ConfigError, match="needs fusion.caf"):
        build_fusion(backbone_cfg(), store(), 5, {"tokenizer": True, "caf": False, "glf": True})
    info = StoreInfo(Path("s.zarr"), "bigearthnet_s2", ["a"], ["B08", "B11", "B12"], 1e-4,
                     [0.0] * 3, [1.0] * 3, "f", (32, 32))
    with pytest.raises(ConfigError, match="needs B04, B03, B02.*B04, B03, B02 missing"):
        build_fusion(backbone_cfg(), info, 5, LADDER["full"])
    with pytest.raises(ConfigError, match="fusion.heads: 5 does not divide the encoder width 48"):
        build_fusion(backbone_cfg(), store(), 5, dict(LADDER["full"], heads=5))


@pytest.fixture(scope="module")
def fusion_store(world, tmp_path_factory):
    from geopeft.data.prepare import prepare

    out = tmp_path_factory.mktemp("stores") / "fusion.zarr"
    prepare("eurosat_ms", world["ms"], BANDS, out)
    return out


def _train_a_bit(m, n_classes, steps=3):
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(8, 6, 32, 32, generator=g) * 3000
        loss = torch.nn.functional.cross_entropy(m(x), torch.arange(8) % n_classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("rung", ["full", "rgb_lora"])
def test_adapter_save_load_and_merge_identical(rung, tmp_path, fusion_store):
    info = store_info(fusion_store)
    row = {"name": "r", "method": "lora", "lora": LORA, "fusion": dict(LADDER[rung], heads=4)}
    spec = {"backbone": backbone_cfg(), "row": row, "data": {"dataset": "eurosat_ms"}}
    torch.manual_seed(0)
    m, minfo = build_model(job_spec(spec), info)
    m = _train_a_bit(m, len(info.classes))
    x = torch.rand(4, 6, 32, 32) * 3000
    with torch.no_grad():
        ref = m(x)
    save_model(m, tmp_path / "model", {"spec": full_spec(spec), "model": minfo})
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    loaded = load_model(tmp_path / "model", fusion_store)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
        merged = m.merge_and_unload().eval()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(x), ref, atol=1e-4)


def test_real_study_models_build_at_full_size():
    """The GPU study's ladder builds (Swin-V2-T at 256 px, 19 classes) with the counts it reports."""
    from geopeft import config as gcfg

    cfg = gcfg.load(Path(__file__).resolve().parents[1] / "config" / "studies" / "fusion_lora.yaml")
    info = StoreInfo(Path("ben.zarr"), "bigearthnet_s2", [f"c{i}" for i in range(19)],
                     cfg["data"]["bands"], 1e-4, [1000.0] * 6, [500.0] * 6, "f", (120, 120))
    counts = {}
    for row in gcfg.study_rows(cfg):
        if row["seed"] or row["dataset"] != "bigearthnet_s2":
            continue
        spec = {"backbone": dict(cfg["backbone"], weights="none", normalize="dataset"), "row": row}
        with torch.device("meta"):
            m, _ = build_model(job_spec(spec), info)
        names = trainable(m)
        assert names and all("lora_" in n or "modules_to_save" in n for n in names), row["name"]
        counts[row["strategy"]] = count_parameters(m)
    t = {k: v[0] for k, v in counts.items()}
    assert t["rgb_lora"] < t["tokenizer"] < t["tokenizer_caf"] < t["fusion_lora"] < t["fusion_dora"]
    assert all(v[1] > 27.5e6 for v in counts.values())  # the whole Swin-V2-T (27.6 M) is there
