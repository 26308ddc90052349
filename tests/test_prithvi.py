"""Prithvi-EO-2.0 in the zoo (issue 33): the publisher's encoder (``prithvi_mae.py``'s
``PrithviViT``), one frame at a time.

Checked from outside against TerraTorch's ``terratorch/models/backbones/prithvi_mae.py`` (IBM/
terratorch at commit 85467a9f, the publisher's file): with the same random weights, the final
tokens and the tapped blocks of ``PrithviViT.forward_features`` (1 frame, 6 bands, 128 px)
equal geopeft's exactly in float32 and float64, its fixed position embedding too, and the
parameter counts below are the reference's (``PrithviViT(img_size=224, num_frames=1,
in_chans=6, ...)``). Here, a reference written from the published architecture (3-D patch
embedding, 3-D sine-cosine position embedding, timm's blocks, final norm; the published
checkpoint's key names and shapes) holds geopeft's outputs to it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import job_spec
from fileserver import FaultServer
from torch import nn

from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones
from geopeft.models.build import build_model
from geopeft.models.classifier import build_classifier
from geopeft.models.families import get_family
from geopeft.models.weights import WeightsError, load_weights
from geopeft.models.zoo import PRITHVI_MEAN, PRITHVI_S2_BANDS, PRITHVI_STD

#: The reference's parameter counts (terratorch 85467a9f, PrithviViT, 1 frame, 6 bands, 224 px).
REFERENCE_PARAMS = {"prithvi_eo_v2_300": 303_886_336, "prithvi_eo_v2_600": 631_188_480}
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 32}


def _bb(name: str = "prithvi_eo_v2_300", weights: str = "none", **kw) -> dict:
    return {"name": name, "weights": weights, "kwargs": {**TINY, **kw}}


# ------------------------------------------------------------------ the independent reference
def _sincos(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=float) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(float), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def ref_pos_embed(dim: int, t: int, h: int, w: int) -> np.ndarray:
    """The published 3-D position embedding: (1 + t h w, dim), class row zero."""
    wd, hd, td = dim // 16 * 6, dim // 16 * 6, dim // 16 * 4
    we = np.tile(_sincos(wd, np.arange(w)), (t * h, 1))
    he = np.tile(np.repeat(_sincos(hd, np.arange(h)), w, axis=0), (t, 1))
    te = np.repeat(_sincos(td, np.arange(t)), h * w, axis=0)
    return np.concatenate([np.zeros((1, dim)), np.concatenate([we, he, te], axis=1)])


def published_state(seed: int = 0, frames: int = 4, dim: int = 64, depth: int = 4,
                    bands: int = 6, patch: int = 16, side: int = 32) -> dict[str, torch.Tensor]:
    """A checkpoint as the publisher's MAE saves it: ``encoder.*`` (a (1, p, p) patch kernel, a
    position embedding of 4 frames), ``decoder.*`` and the mask token; random values."""
    from timm.models.vision_transformer import Block

    g = torch.Generator().manual_seed(seed)
    state = {"encoder.patch_embed.proj.weight": torch.randn(dim, bands, 1, patch, patch,
                                                            generator=g) * 0.05,
             "encoder.patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
             "encoder.cls_token": torch.randn(1, 1, dim, generator=g),
             "encoder.pos_embed": torch.from_numpy(
                 ref_pos_embed(dim, frames, side // patch, side // patch)).float()[None],
             "encoder.norm.weight": 1 + 0.1 * torch.randn(dim, generator=g),
             "encoder.norm.bias": 0.1 * torch.randn(dim, generator=g),
             "decoder.decoder_embed.weight": torch.randn(32, dim, generator=g),
             "decoder.mask_token": torch.zeros(1, 1, 32)}
    for i in range(depth):
        blk = Block(dim, 4, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
        for k, v in blk.state_dict().items():
            state[f"encoder.blocks.{i}.{k}"] = v + 0.1 * torch.randn(v.shape, generator=g)
    return state


def ref_forward(state: dict[str, torch.Tensor], x: torch.Tensor, taps: list[int],
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The publisher's ``PrithviViT.forward_features`` on one frame: final tokens (class token
    first, after the final norm) and the tapped blocks' patch tokens (the last one normalised),
    each (B, D, h, w)."""
    from timm.models.vision_transformer import Block

    enc = {k[len("encoder."):]: v.to(x.dtype) for k, v in state.items()
           if k.startswith("encoder.")}
    dim = enc["cls_token"].shape[-1]
    tokens = nn.functional.conv3d(x[:, :, None], enc["patch_embed.proj.weight"],
                                  enc["patch_embed.proj.bias"], stride=enc[
                                      "patch_embed.proj.weight"].shape[2:])
    b, _, _, h, w = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    # float32, as the publisher's buffer (``torch.from_numpy(pos_embed).float()``)
    pos = torch.from_numpy(ref_pos_embed(dim, 1, h, w)).float().to(x.dtype)[None]
    tokens = torch.cat([(enc["cls_token"] + pos[:, :1]).expand(b, -1, -1), tokens + pos[:, 1:]],
                       dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in enc if k.startswith("blocks."))
    norm = nn.LayerNorm(dim).to(x.dtype)
    norm.load_state_dict({"weight": enc["norm.weight"], "bias": enc["norm.bias"]})
    out = []
    for i in range(depth):
        blk = Block(dim, 4, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm).to(x.dtype).eval()
        blk.load_state_dict({k.split(".", 2)[2]: v for k, v in enc.items()
                             if k.startswith(f"blocks.{i}.")})
        tokens = blk(tokens)
        out.append(norm(tokens) if i == depth - 1 else tokens)
    levels = [out[i][:, 1:].transpose(1, 2).reshape(b, dim, h, w) for i in taps]
    return out[-1], levels


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_equal_the_references_and_the_position_embedding_is_fixed(name):
    with torch.device("meta"):
        m = backbones.create_model({"name": name}, 6, 0)
    assert sum(p.numel() for p in m.parameters()) == REFERENCE_PARAMS[name]
    assert m.encoder_family == "prithvi"
    assert "pos_embed" not in dict(m.named_parameters()) and "pos_embed" in dict(m.named_buffers())
    tl = backbones.resolve({"name": name + "_tl"})
    assert tl["family"] == "prithvi" and tl["weights"].endswith("_TL.pt")
    bb = backbones.resolve({"name": name})
    assert tuple(bb["weight_bands"]) == PRITHVI_S2_BANDS == ("B02", "B03", "B04", "B8A", "B11",
                                                             "B12")
    assert bb["weight_norm"]["mean"] == pytest.approx([m * 1e-4 for m in PRITHVI_MEAN])
    assert bb["weight_norm"]["std"] == pytest.approx([s * 1e-4 for s in PRITHVI_STD])
    assert bb["taps"] == ([5, 11, 17, 23] if "300" in name else [7, 15, 23, 31])
    assert bb["lora_targets"] == ["q", "k", "v"]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_outputs_equal_the_reference_and_the_last_tap_is_normalised(dtype, tol):
    st = published_state()
    fam = get_family("prithvi")
    bb = backbones.resolve(_bb())
    m = backbones.create_model(bb, 6, 0)
    m.load_state_dict(fam.from_checkpoint(st, bb), strict=True)
    m = m.to(dtype).eval()
    x = torch.randn(2, 6, 32, 32, dtype=dtype)
    with torch.no_grad():
        want, levels = ref_forward(st, x, [1, 3])
        assert (m.forward_features(x) - want).abs().max() < tol
        for got, ref in zip(fam.features(m, x, [1, 3]), levels, strict=True):
            assert got.shape == (2, 64, 2, 2) and (got - ref).abs().max() < tol
        # the classifier pools the patch tokens after the final norm (global_pool avg)
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        assert (pooled - want[:, 1:].mean(1)).abs().max() < tol


def test_a_published_checkpoint_loads_from_a_url_without_decoder_or_tl_encodings(tmp_path):
    """A file laid out as ``Prithvi_EO_V2_300M_TL.pt`` (MAE state dict, 4-frame position
    embedding, decoder, the TL variant's time and location scales) loads through ``url:``; for
    other bands the kernel is remapped (B08, not pretrained, gets the mean kernel)."""
    st = published_state(seed=1)
    for enc in ("temporal_embed_enc", "location_embed_enc"):
        st[f"encoder.{enc}.scale"] = torch.full((1,), 0.1)
    path = tmp_path / "Prithvi_EO_V2_300M_TL.pt"
    torch.save(st, path)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    bands = ["B02", "B03", "B04", "B08", "B8A", "B11", "B12"]
    try:
        with FaultServer({path.name: path.read_bytes()}) as srv:
            cfg = _bb("prithvi_eo_v2_300_tl", f"url:{srv.url}/{path.name}", )
            cfg["sha256"] = sha
            w = load_weights(backbones.resolve(cfg))
            assert w is not None and list(w.bands) == list(PRITHVI_S2_BANDS)
            info = StoreInfo(tmp_path / "s.zarr", "eurosat_ms", ["a", "b", "c"], bands, 1e-4,
                             [1000.0] * 7, [500.0] * 7, "f" * 64, (32, 32))
            m, minfo = build_classifier(cfg, info, 3)
            four = ["B8A", "B04", "B03", "B02"]
            info4 = StoreInfo(tmp_path / "s.zarr", "eurosat_ms", ["a", "b", "c"], four, 1e-4,
                              [1000.0] * 4, [500.0] * 4, "f" * 64, (32, 32))
            _, minfo4 = build_classifier(cfg, info4, 3)
    finally:
        torch.hub.set_dir(old)
    # bands the weights know: their pretraining statistics, in the data's order; a band they do
    # not know (B08): the data's train statistics for every band
    for b, mean, std in zip(four, minfo4["norm_mean"], minfo4["norm_std"], strict=True):
        i = PRITHVI_S2_BANDS.index(b)
        assert (mean, std) == pytest.approx((PRITHVI_MEAN[i] * 1e-4, PRITHVI_STD[i] * 1e-4))
    assert minfo["norm_mean"] == pytest.approx([0.1] * 7)
    kernel = st["encoder.patch_embed.proj.weight"][:, :, 0]
    got = m.backbone.patch_embed.proj.weight
    for i, b in enumerate(bands):
        want = (kernel[:, PRITHVI_S2_BANDS.index(b)] if b in PRITHVI_S2_BANDS
                else kernel.mean(dim=1)) * 6 / 7
        assert torch.allclose(got[:, i], want), b
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():  # the six pretrained bands alone: the reference's tokens
        six = backbones.create_model(backbones.resolve(_bb()), 6, 0)
        six.load_state_dict(get_family("prithvi").from_checkpoint(st, backbones.resolve(_bb())))
        assert torch.allclose(six.eval().forward_features(x), ref_forward(st, x, [])[0],
                              atol=1e-5)


def test_files_that_are_not_a_prithvi_encoder_are_errors(tmp_path):
    st = published_state()
    bad = {k.replace("encoder.", "backbone."): v for k, v in st.items()}
    tubelet = dict(st)
    tubelet["encoder.patch_embed.proj.weight"] = torch.zeros(64, 6, 2, 16, 16)
    for name, state, message in (("other.pt", bad, "not a Prithvi MAE checkpoint"),
                                 ("tubelet.pt", tubelet, "a tubelet of 2 frames")):
        torch.save(state, tmp_path / name)
        cfg = {**_bb(weights=f"file:{tmp_path / name}"),
               "sha256": hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()}
        with pytest.raises(WeightsError, match=message):
            load_weights(backbones.resolve(cfg))


@pytest.mark.parametrize("method", ["linear", "lora", "full"])
def test_prithvi_trains_as_classifier_and_as_the_time_series_encoder(method):
    """Every strategy's parameters train (LoRA on q/k/v of every block); UPerNet + L-TAE taps
    four blocks, the last normalised."""
    torch.manual_seed(0)
    info = StoreInfo("x.zarr", "eurosat_ms", ["a", "b", "c"], list(PRITHVI_S2_BANDS), 1e-4,
                     [1000.0] * 6, [500.0] * 6, "f" * 64, (32, 32))
    row = {"method": method, **({"lora": {"r": 2, "alpha": 4, "dropout": 0.0}}
                               if method == "lora" else {})}
    m, _ = build_model(job_spec({"backbone": _bb(), "row": row}), info)
    trained = [n for n, p in m.named_parameters() if p.requires_grad]
    if method == "lora":
        assert sum("lora_A" in n for n in trained) == 4 * 3
    m(torch.rand(2, 6, 32, 32) * 3000).sum().backward()
    seg = {"channels": 16, "out_indices": [0, 1, 2, 3], "ltae": {"d_model": 16, "heads": 4}}
    pastis = StoreInfo("p.zarr", "pastis", [str(i) for i in range(20)], list(PRITHVI_S2_BANDS),
                       1e-4, [1000.0] * 6, [500.0] * 6, "f" * 64, (32, 32), 19)
    s, _ = build_model(job_spec({"backbone": _bb(), "row": {**row, "segmentation": seg}}), pastis)
    out = s(torch.rand(2, 3, 6, 32, 32) * 3000, torch.tensor([[1.0, 40.0, 80.0]] * 2))
    assert out.shape == (2, 19, 32, 32)
    out.sum().backward()


def test_hf_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """``hf:<owner>/<repo>[@<revision>]/<file>``: the publisher's repository file as Hugging
    Face's cache holds it (offline: the cache only), checked against ``backbone.sha256``; a file
    not in the cache is one clear error saying how to get it."""
    import yaml

    from geopeft import config as gcfg

    repo = tmp_path / "hub" / "models--ibm-nasa-geospatial--Prithvi-EO-2.0-300M"
    commit = "a" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    st = published_state(seed=2)
    torch.save(st, repo / "snapshots" / commit / "Prithvi_EO_V2_300M.pt")
    sha = hashlib.sha256((repo / "snapshots" / commit / "Prithvi_EO_V2_300M.pt").read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for weights in ("hf:ibm-nasa-geospatial/Prithvi-EO-2.0-300M/Prithvi_EO_V2_300M.pt",
                    f"hf:ibm-nasa-geospatial/Prithvi-EO-2.0-300M@{commit}/Prithvi_EO_V2_300M.pt"):
        cfg = {**_bb(weights=weights), "sha256": sha.hexdigest()}
        w = load_weights(backbones.resolve(cfg))
        assert w is not None and w.origin == weights
        m = backbones.create_model(backbones.resolve(_bb()), 6, 0)
        m.load_state_dict(w.state, strict=False)
        x = torch.randn(1, 6, 32, 32)
        with torch.no_grad():
            assert torch.allclose(m.eval().forward_features(x), ref_forward(st, x, [])[0],
                                  atol=1e-5)
    with pytest.raises(WeightsError, match=r"Prithvi_EO_V2_600M.pt of ibm-nasa-geospatial/"
                                           r"Prithvi-EO-2.0-600M is not in the Hugging Face "
                                           r"cache \(HF_HUB_OFFLINE is set\).*huggingface-cli "
                                           r"download"):
        load_weights(backbones.resolve(
            _bb(weights="hf:ibm-nasa-geospatial/Prithvi-EO-2.0-600M/Prithvi_EO_V2_600M.pt")))
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(backbones.resolve({**_bb(
            weights="hf:ibm-nasa-geospatial/Prithvi-EO-2.0-300M/Prithvi_EO_V2_300M.pt"),
            "sha256": "0" * 64}))
    # a study file takes hf: weights; a malformed one is named
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for weights, ok in (("hf:ibm-nasa-geospatial/Prithvi-EO-2.0-300M@v1.0/Prithvi_EO_V2_300M.pt",
                         True), ("hf:no-file-given", False)):
        doc["backbone"]["weights"] = weights
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(doc))
        if ok:
            gcfg.resolve([path])
        else:
            with pytest.raises(gcfg.ConfigError, match=r"backbone\.weights: 'hf:no-file-given'"):
                gcfg.resolve([path])
