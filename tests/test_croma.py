"""CROMA's optical encoder in the zoo: structure and parameter counts against PANGAEA-bench's
encoder, the published checkpoint layout, band dropping, taps, LoRA and its normalisation.

The reference here is written from the published architecture, independently of
``geopeft.models.croma``: its key names and shapes are those of PANGAEA's / the authors' ``ViT``
(``linear_input``, ``transformer.layers.<i>.0.to_qkv`` ...), its forward pass is the
rearrange-linear-attention-with-ALiBi of the paper, with the ALiBi bias built point by point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fileserver import FaultServer

from geopeft.data.dataset import StoreInfo
from geopeft.data.sources.pastis import BANDS as PASTIS_BANDS
from geopeft.models import backbones, zoo
from geopeft.models.classifier import build_classifier, check_input_size, resolve_norm
from geopeft.models.croma import CROMAOptical, alibi_2d, alibi_slopes, from_publisher, to_publisher
from geopeft.models.weights import Normalization, WeightsError, expected_sha256, load_weights
from geopeft.spec import ConfigError, LoraSpec
from geopeft.strategies import apply_strategy

#: PANGAEA-bench's CROMA_OPTICAL_Encoder, 12 bands, 120 px, counted with its own code.
PANGAEA_PARAMS = {"croma_optical_base": 85_618_944, "croma_optical_large": 303_025_152}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 16, "patch_size": 8, "img_size": 16}
CROMA12 = list(zoo.CROMA_S2_BANDS)


# ------------------------------------------------------------------ the independent reference
def published_shapes(dim: int, depth: int, bands: int = 12) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' ``s2_encoder`` state dict (PANGAEA's / CROMA's ``ViT``)."""
    shapes: dict[str, tuple[int, ...]] = {
        "linear_input.weight": (dim, bands * 64), "linear_input.bias": (dim,),
        "transformer.norm_out.weight": (dim,), "transformer.norm_out.bias": (dim,)}
    for i in range(depth):
        lay = f"transformer.layers.{i}."
        shapes.update({
            lay + "0.input_norm.weight": (dim,), lay + "0.input_norm.bias": (dim,),
            lay + "0.to_qkv.weight": (3 * dim, dim),  # no bias
            lay + "0.to_out.weight": (dim, dim), lay + "0.to_out.bias": (dim,),
            lay + "1.input_norm.weight": (dim,), lay + "1.input_norm.bias": (dim,),
            lay + "1.net.0.weight": (4 * dim, dim), lay + "1.net.0.bias": (4 * dim,),
            lay + "1.net.3.weight": (dim, 4 * dim), lay + "1.net.3.bias": (dim,)})
    return shapes


def published_state(dim: int = 64, depth: int = 2, bands: int = 12, seed: int = 0,
                    ) -> dict[str, torch.Tensor]:
    """Random values in the published layout: no zero biases, no unit norms (nothing a wrong key
    mapping could hide behind)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in published_shapes(dim, depth, bands).items():
        v = torch.randn(shape, generator=g)
        if len(shape) == 2:
            v = v / math.sqrt(shape[1])
        elif "norm" in k and k.endswith("weight"):
            v = 1 + 0.2 * v
        else:
            v = 0.2 * v
        out[k] = v
    return out


def ref_patchify(x: torch.Tensor, p: int = 8) -> torch.Tensor:
    """``b c (h i) (w j) -> b (h w) (c i j)``."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(
        b, (h // p) * (w // p), c * p * p)


def ref_alibi(rows: int, cols: int, heads: int) -> torch.Tensor:
    """The paper's 2-D ALiBi, point by point (heads a power of two)."""
    slopes = torch.tensor([2 ** (-8 / heads * (h + 1)) for h in range(heads)])
    points = [(r, c) for r in range(rows) for c in range(cols)]
    bias = torch.zeros(heads, len(points), len(points))
    for a, (r1, c1) in enumerate(points):
        for b, (r2, c2) in enumerate(points):
            bias[:, a, b] = -slopes * math.sqrt((r1 - r2) ** 2 + (c1 - c2) ** 2)
    return bias


def ref_forward(st: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 16,
                output_layers: list[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
    """PANGAEA's ``ViT.forward`` on a published state dict: final tokens after ``norm_out``, or
    the ``output_layers`` outputs with ``norm_out`` on the last one only."""
    w = st["linear_input.weight"]
    dim = w.shape[0]
    depth = len({k.split(".")[2] for k in st if k.startswith("transformer.layers.")})
    t = ref_patchify(x) @ w.T + st["linear_input.bias"]
    b, n, _ = t.shape
    bias = ref_alibi(x.shape[-2] // 8, x.shape[-1] // 8, heads)
    outs = []
    for i in range(depth):
        lay = f"transformer.layers.{i}."
        h = F.layer_norm(t, (dim,), st[lay + "0.input_norm.weight"], st[lay + "0.input_norm.bias"])
        q, k, v = (z.reshape(b, n, heads, dim // heads).transpose(1, 2)
                   for z in (h @ st[lay + "0.to_qkv.weight"].T).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) * (dim // heads) ** -0.5 + bias
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, dim)
        t = t + o @ st[lay + "0.to_out.weight"].T + st[lay + "0.to_out.bias"]
        h = F.layer_norm(t, (dim,), st[lay + "1.input_norm.weight"], st[lay + "1.input_norm.bias"])
        h = F.gelu(h @ st[lay + "1.net.0.weight"].T + st[lay + "1.net.0.bias"])
        t = t + h @ st[lay + "1.net.3.weight"].T + st[lay + "1.net.3.bias"]
        if output_layers is not None and i in output_layers:
            outs.append(t)

    def norm(z: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(z, (dim,), st["transformer.norm_out.weight"], st["transformer.norm_out.bias"])

    if output_layers is None:
        return norm(t)
    outs[-1] = norm(outs[-1])
    return outs


# ------------------------------------------------------------------ helpers
def tiny_entry(weights: str = "url:http://127.0.0.1:9/CROMA_tiny-00000000.pt") -> zoo.BackboneEntry:
    base = zoo.REGISTRY["croma_optical_base"]
    return dataclasses.replace(base, key="croma_tiny", arch="croma_tiny", weights=weights,
                               kwargs=dict(TINY))


@pytest.fixture
def tiny(monkeypatch):
    """A small CROMA entry in the zoo (the real ones' declarations, width 64, depth 2)."""
    e = tiny_entry()
    monkeypatch.setitem(zoo.REGISTRY, e.key, e)
    return e


def store(bands, size: int = 16, scale: float = 1e-4) -> StoreInfo:
    n = len(bands)
    return StoreInfo(Path("x.zarr"), "pastis", ["a", "b", "c"], list(bands), scale,
                     [1000.0 + 100 * i for i in range(n)], [400.0 + 10 * i for i in range(n)],
                     "f" * 64, (size, size))


def publisher_file(path: Path, s2: dict[str, torch.Tensor]) -> str:
    """A checkpoint laid out as CROMA_base.pt (several encoders); its sha256."""
    decoy = published_state(dim=64, depth=1, bands=2, seed=5)  # the radar encoder: 2 bands
    torch.save({"s1_encoder": decoy, "s1_GAP_FFN": {"0.weight": torch.ones(64)},
                "s2_encoder": s2, "s2_GAP_FFN": {"0.weight": torch.ones(64)},
                "joint_encoder": {"norm_out.weight": torch.ones(64)}}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", sorted(PANGAEA_PARAMS))
def test_parameter_counts_equal_pangaea_and_no_class_token_or_position_embedding(name):
    with torch.device("meta"):
        m = backbones.create_model({"name": name}, 12, 0)
    assert sum(p.numel() for p in m.parameters()) == PANGAEA_PARAMS[name]
    dim, depth = (768, 12) if name.endswith("base") else (1024, 24)
    assert (backbones.width(m), len(m.blocks), m.num_heads) == (dim, depth, 16)
    assert backbones.token_grid(m) == (15, 15) and backbones.input_size(m) == 120
    assert m.num_prefix_tokens == 0
    assert not [n for n, _ in m.named_parameters() if "pos" in n or "cls" in n or "token" in n]
    assert not list(m.buffers())  # the ALiBi bias is computed, not stored
    assert m.blocks[0].attn.qkv.bias is None and m.blocks[0].attn.proj.bias is not None
    # a published checkpoint's tensors map one to one onto the model's, shapes included
    own = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    mapped = from_publisher({k: torch.empty(s, device="meta")
                             for k, s in published_shapes(dim, depth).items()})
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own


def test_alibi_slopes_and_the_bias_of_a_2x2_grid():
    assert alibi_slopes(16) == pytest.approx([2 ** (-0.5 * (h + 1)) for h in range(16)])
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(h + 1) for h in range(8)])
    # not a power of two: the 8 slopes, then every other one of 16's
    assert alibi_slopes(12) == pytest.approx(alibi_slopes(8) + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5,
                                                                2 ** -3.5])
    bias = alibi_2d(2, 2, alibi_slopes(16))
    assert bias.shape == (16, 4, 4)
    r2 = math.sqrt(2)
    # tokens row by row: (0,0) (0,1) (1,0) (1,1)
    dist = torch.tensor([[0, 1, 1, r2], [1, 0, r2, 1], [1, r2, 0, 1], [r2, 1, 1, 0]])
    for h in range(16):
        assert torch.allclose(bias[h], -(2 ** (-0.5 * (h + 1))) * dist, atol=1e-7)
    assert bias[0, 0, 3].item() == pytest.approx(-1.0)  # slope 1/sqrt(2) x the diagonal
    assert bias[1, 1, 0].item() == pytest.approx(-0.5)
    # a 2 x 3 grid: token 5 is (1, 2), sqrt(5) from token 0; and the reference, point by point
    assert alibi_2d(2, 3, [1.0])[0, 0, 5].item() == pytest.approx(-math.sqrt(5))
    assert torch.allclose(alibi_2d(3, 3, alibi_slopes(16)), ref_alibi(3, 3, 16), atol=1e-6)
    m = CROMAOptical(**TINY)
    assert torch.equal(m.attn_bias(2, 2, torch.device("cpu")), bias[None])


def test_patches_are_flattened_channel_slowest():
    """With the identity as ``linear_input``, token (r, q) lists pixel [c, 8r + i, 8q + j] at
    column c * 64 + i * 8 + j."""
    m = CROMAOptical(img_size=16, in_chans=2, embed_dim=128, depth=1)
    eye = {"linear_input.weight": torch.eye(128), "linear_input.bias": torch.zeros(128)}
    own = from_publisher(eye)
    m.patch_embed.load_state_dict({k[len("patch_embed."):]: v for k, v in own.items()})
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        tok = m.patch_embed(x)[0]
    assert tok.shape == (4, 128)
    for r, q, c, i, j in [(0, 0, 0, 0, 0), (0, 1, 1, 2, 7), (1, 0, 0, 7, 1), (1, 1, 1, 3, 4)]:
        assert tok[r * 2 + q, c * 64 + i * 8 + j] == x[0, c, 8 * r + i, 8 * q + j]
    # random weights: the convolution is the rearrange + linear map
    st = published_state(dim=64, depth=2, bands=12)
    m = CROMAOptical(**TINY)
    m.load_state_dict(from_publisher(st))
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        got = m.patch_embed(x)
    want = ref_patchify(x) @ st["linear_input.weight"].T + st["linear_input.bias"]
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.equal(to_publisher(from_publisher(st))["linear_input.weight"], st["linear_input.weight"])


def test_outputs_equal_the_reference_at_any_multiple_of_8_and_taps_normalise_the_last():
    st = published_state(depth=3)
    m = CROMAOptical(**dict(TINY, depth=3)).eval()
    m.load_state_dict(from_publisher(st))
    with torch.no_grad():
        for side in (16, 24):  # built for 16 px; 24 px is a 3 x 3 grid with its own bias
            x = torch.randn(2, 12, side, side)
            assert torch.allclose(m.forward_features(x), ref_forward(st, x), atol=1e-5)
        x = torch.randn(2, 12, 24, 16)
        for taps in ([0, 2], [0, 1]):
            want = ref_forward(st, x, output_layers=taps)
            got = m.forward_intermediates(x, indices=taps, intermediates_only=True)
            assert [g.shape for g in got] == [(2, 64, 3, 2)] * 2
            for g, w in zip(got, want, strict=True):  # NCHW: token r * cols + c at [:, :, r, c]
                assert torch.allclose(g.flatten(2).transpose(1, 2), w, atol=1e-5)
        raw = m.forward_intermediates(x, indices=[0, 1], norm_last=False, output_fmt="NLC",
                                      intermediates_only=True)
        assert torch.allclose(m.norm(raw[1]), want[1], atol=1e-5)
        assert not torch.allclose(raw[1], want[1], atol=1e-2)  # the norm does something
        every = m.forward_intermediates(x, indices=[0, 1], norm=True, output_fmt="NLC",
                                        intermediates_only=True)
        assert torch.allclose(every[0], m.norm(raw[0]), atol=1e-6)
        final, last = m.forward_intermediates(x, indices=[-1])  # a negative index counts from the end
        assert torch.allclose(final, ref_forward(st, x), atol=1e-5)
        assert torch.allclose(last[0].flatten(2).transpose(1, 2), final, atol=1e-6)
        assert len(m.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        logits = CROMAOptical(**dict(TINY, depth=3), num_classes=5)
        logits.load_state_dict(from_publisher(st), strict=False)
        assert torch.allclose(logits.forward_head(logits.forward_features(x), pre_logits=True),
                              ref_forward(st, x).mean(1), atol=1e-5)  # the mean token
    with pytest.raises(ValueError, match=r"block indices of 0\.\.2"):
        m.forward_intermediates(x, indices=[1, 3])


def test_sides_that_are_not_multiples_of_8_are_clear_errors(tiny):
    m = CROMAOptical(**TINY)
    with pytest.raises(ValueError, match=r"multiples of its patch size 8; got 36x36"):
        m(torch.zeros(1, 12, 36, 36))
    with pytest.raises(ConfigError, match=r"backbone\.kwargs\.img_size: 124 is not a multiple of "
                                          r"the patch size 8 \(croma_optical_base\)"):
        backbones.create_model({"name": "croma_optical_base", "kwargs": {"img_size": 124}}, 12, 0)
    with pytest.raises(ConfigError, match=r"backbone\.kwargs: croma_tiny: .*unexpected keyword "
                                          r"argument 'window_size'"):
        backbones.create_model({"name": "croma_tiny", "kwargs": {"window_size": 4}}, 12, 0)
    with pytest.raises(ConfigError, match=r"backbone\.input_size: 124 is not a multiple of 8"):
        check_input_size(m, 124, store(CROMA12, size=128))
    # PASTIS's 128 px patches: resized to the pretraining 120, or a model built for 128 (16 x 16)
    with pytest.raises(ConfigError, match=r"takes 120x120 inputs but .* holds 128x128"):
        check_input_size(backbones.create_model({"name": "croma_tiny", "kwargs": {"img_size": 120}},
                                                12, 0), None, store(CROMA12, size=128))
    check_input_size(m, 120, store(CROMA12, size=128))
    m128 = backbones.create_model({"name": "croma_tiny", "kwargs": {"img_size": 128}}, 10, 0)
    check_input_size(m128, None, store(PASTIS_BANDS, size=128))
    assert backbones.token_grid(m128) == (16, 16)


# ------------------------------------------------------------------ weights
def test_zoo_declarations():
    for size, prefix in (("base", "0238d814"), ("large", "921e69ad")):
        bb = backbones.resolve({"name": f"croma_optical_{size}"})
        assert bb["family"] == "croma" and bb["weight_bands"] == CROMA12
        assert "B10" not in bb["weight_bands"] and bb["weight_bands"][8] == "B8A"
        assert bb["weight_norm"] == {"rule": "croma_2sigma"}
        assert bb["checkpoint_wrapper"] == "s2_encoder" and bb["taps"] == [3, 5, 7, 11]
        assert bb["lora_targets"] == ["q", "k", "v"]
        # torchgeo's rehost of the authors' file at a pinned revision, sha256 prefix in the name
        url = bb["weights"]
        assert re.match(r"url:https://(hf\.co|huggingface\.co)/torchgeo/croma/resolve/[0-9a-f]{40}/", url)
        assert expected_sha256(bb, url.rsplit("/", 1)[-1]) == prefix
    for m in ("dino", "moco", "mae"):
        assert backbones.resolve({"name": f"ssl4eo_s12_vits16_{m}"})["taps"] == [3, 5, 7, 11]
    assert backbones.resolve({"name": "vit_b16_in21k"})["taps"] is None
    assert backbones.resolve({"name": "vit_small_patch16_224"})["taps"] is None
    rows = {r["name"]: r for r in backbones.describe()}
    assert (rows["croma_optical_base"]["grid"], rows["croma_optical_base"]["width"]) == ("15x15", 768)
    assert rows["croma_optical_large"]["width"] == 1024 and rows["croma_optical_large"]["input"] == 120
    assert rows["croma_optical_base"]["normalisation"] == "data mean +- 2 std -> [0, 1]"


def test_a_published_checkpoint_loads_from_a_url_and_bands_drop_as_zero_filling(tmp_path, tiny):
    """The optical encoder of a file laid out as CROMA_base.pt, downloaded through ``url:``,
    gives the reference's outputs; for PASTIS's 10 bands, the model without B01 and B09 gives
    what the 12-band reference gives with those bands zero."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        st = published_state(seed=1)
        sha = publisher_file(tmp_path / "c.pt", st)
        name = f"CROMA_tiny-{sha[:8]}.pt"
        with FaultServer({name: (tmp_path / "c.pt").read_bytes()}) as srv:
            cfg = {"name": "croma_tiny", "weights": f"url:{srv.url}/{name}"}
            w = load_weights(backbones.resolve(cfg))
            assert w is not None and w.bands == CROMA12 and w.norm is not None
            assert w.norm.rule == "croma_2sigma" and w.norm.mean == []
            m12, info = build_classifier(cfg, store(CROMA12), 3)
            m10, _ = build_classifier(cfg, store(PASTIS_BANDS), 3)
    finally:
        torch.hub.set_dir(old)
    assert info["weights"] == f"url:{name}" and info["norm_clip"] == [0.0, 1.0]
    assert m12.backbone.patch_embed.proj.weight.shape == (64, 12, 8, 8)
    assert m10.backbone.patch_embed.proj.weight.shape == (64, 10, 8, 8)
    z = torch.rand(2, 12, 16, 16)
    keep = [CROMA12.index(b) for b in PASTIS_BANDS]
    assert [CROMA12[i] for i in sorted(set(range(12)) - set(keep))] == ["B01", "B09"]
    zero = z.clone()
    zero[:, [0, 9]] = 0
    with torch.no_grad():
        assert torch.allclose(backbones.tokens(m12.backbone, z), ref_forward(st, z), atol=1e-5)
        got = backbones.tokens(m10.backbone, z[:, keep])
        assert torch.allclose(got, ref_forward(st, zero), atol=1e-5)
        assert not torch.allclose(got, ref_forward(st, z), atol=1e-3)  # B01, B09 mattered
        # the classifier (head on the mean token) runs on the dropped-band model's output
        assert torch.allclose(m10.backbone(z[:, keep]), m10.backbone.head(got.mean(1)), atol=1e-6)
    # its columns are the 12-band matrix's without B01's and B09's 64 columns each
    cols = torch.cat([torch.arange(64 * i, 64 * (i + 1)) for i in keep])
    assert torch.equal(m10.backbone.patch_embed.proj.weight.flatten(1), st["linear_input.weight"][:, cols])


def test_a_file_without_the_optical_encoder_or_of_another_size_is_an_error(tmp_path, tiny):
    torch.save({"s1_encoder": published_state(bands=2), "joint_encoder": {"x": torch.ones(1)}},
               tmp_path / "sar.pt")
    sha = hashlib.sha256((tmp_path / "sar.pt").read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match=r"sar\.pt: holds s1_encoder, joint_encoder but no "
                                           r"'s2_encoder' state dict"):
        load_weights(backbones.resolve({"name": "croma_tiny", "weights": f"file:{tmp_path / 'sar.pt'}",
                                        "sha256": sha}))
    sha = publisher_file(tmp_path / "deep.pt", published_state(depth=3))
    cfg = {"name": "croma_tiny", "weights": f"file:{tmp_path / 'deep.pt'}", "sha256": sha}
    with pytest.raises(WeightsError, match=r"does not fit CROMAOptical: unexpected \(\d+\): blocks\.2\."):
        build_classifier(cfg, store(CROMA12), 3)


def test_rehearsal_fixture_is_in_the_published_layout_and_loads(tmp_path, tiny):
    from geopeft.rehearsal import _weights_file

    path = _weights_file(tiny.weights, tmp_path)
    assert path.name == "rehearsal-CROMA_tiny.pt"
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert {"s2_encoder", "s2_GAP_FFN", "s1_GAP_FFN"} == set(obj)
    assert {k: tuple(v.shape) for k, v in obj["s2_encoder"].items()} == published_shapes(64, 2)
    assert {k: tuple(v.shape) for k, v in obj["s2_GAP_FFN"].items()} == {
        "0.weight": (64,), "0.bias": (64,), "1.weight": (256, 64), "1.bias": (256,),
        "3.weight": (64, 256), "3.bias": (64,)}
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    m, _ = build_classifier({"name": "croma_tiny", "weights": f"file:{path}", "sha256": sha},
                            store(PASTIS_BANDS), 3)
    z = torch.rand(1, 10, 16, 16)
    full = torch.zeros(1, 12, 16, 16)
    full[:, [CROMA12.index(b) for b in PASTIS_BANDS]] = z
    with torch.no_grad():
        assert torch.allclose(backbones.tokens(m.backbone, z), ref_forward(obj["s2_encoder"], full),
                              atol=1e-5)


# ------------------------------------------------------------------ normalisation and LoRA
def test_normalisation_is_the_data_mean_plus_minus_2_std_clipped_to_0_1(tmp_path, tiny):
    info = store(PASTIS_BANDS)
    declared = Normalization(CROMA12, [], [], rule="croma_2sigma")
    norm = resolve_norm("auto", declared, info)
    s = info.value_scale
    assert norm.clip == (0.0, 1.0) and norm.bands == list(PASTIS_BANDS)
    assert norm.mean == pytest.approx([(m - 2 * d) * s for m, d in
                                       zip(info.norm_mean, info.norm_std, strict=True)])
    assert norm.std == pytest.approx([4 * d * s for d in info.norm_std])
    plain = resolve_norm("dataset", declared, info)
    assert plain.clip is None and plain.mean == pytest.approx([m * s for m in info.norm_mean])
    sha = publisher_file(tmp_path / "c.pt", published_state())
    cfg = {"name": "croma_tiny", "weights": f"file:{tmp_path / 'c.pt'}", "sha256": sha}
    m, minfo = build_classifier(cfg, info, 3)
    mean = torch.tensor(info.norm_mean)[:, None, None]
    std = torch.tensor(info.norm_std)[:, None, None]
    x = mean + std * 3 * torch.randn(2, 10, 16, 16)  # raw DN, beyond +- 2 std both ways
    lo, hi = mean - 2 * std, mean + 2 * std
    z = m.normalize(x)
    assert torch.allclose(z, ((x - lo) / (hi - lo)).clamp(0, 1), atol=1e-5)
    assert z.min() == 0 and z.max() == 1 and ((z > 0) & (z < 1)).float().mean() > 0.3
    assert minfo["norm_clip"] == [0.0, 1.0]
    m, minfo = build_classifier(dict(cfg, normalize="dataset"), info, 3)
    assert m.clip is None and "norm_clip" not in minfo and m.normalize(x).min() < -1


def test_lora_adapts_q_k_v_of_every_block_and_is_the_identity_at_init(tiny):
    torch.manual_seed(0)
    cfg = {"name": "croma_tiny", "weights": "none"}
    m, _ = build_classifier(cfg, store(PASTIS_BANDS), 3)
    randomised(m).eval()
    assert sum(isinstance(mod, backbones.SplitQKV) for mod in m.modules()) == 2
    x = (torch.rand(2, 10, 16, 16) * 3000).float()
    with torch.no_grad():
        before = m(x)
    m = apply_strategy(m, "lora", LoraSpec(r=2, alpha=4, dropout=0.0),
                       backbones.resolve(cfg)["lora_targets"]).eval()
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    lora = {n for n in names if "lora_" in n}
    assert len(lora) == 2 * 3 * 2  # A and B of q, k, v in both blocks
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"q", "k", "v"}
    assert all("modules_to_save" in n and ".head." in n for n in names - lora)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-6)  # B = 0: the unadapted model
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
        assert not torch.allclose(m(x), before, atol=1e-3)  # the adapters are live


# ------------------------------------------------------------------ as the study's encoder
@pytest.mark.parametrize("method", ["linear", "e2e", "lora"])
def test_croma_trains_as_the_time_series_studys_encoder(tmp_path, tiny, method):
    """CROMA (published layout, 10 PASTIS bands) under PANGAEA's UPerNet + L-TAE: taps from a
    12-block encoder as declared, its input normalised by the 2-sigma rule and clipped to [0, 1],
    and one training step moves what the mode trains (decoder only; all; adapters + decoder)."""
    from geopeft.models.segmentation import build_segmenter

    sha = publisher_file(tmp_path / "c.pt", published_state(depth=12))
    cfg = {"name": "croma_tiny", "weights": f"file:{tmp_path / 'c.pt'}", "sha256": sha,
           "kwargs": {"depth": 12}}
    info = store(PASTIS_BANDS, size=16)
    torch.manual_seed(0)
    model, minfo = build_segmenter(cfg, info, 19, {"channels": 16})
    assert model.indices == [3, 5, 7, 11] and model.clip == (0.0, 1.0)
    assert minfo["norm_mean"] == pytest.approx(
        [(m - 2 * d) * 1e-4 for m, d in zip(info.norm_mean, info.norm_std, strict=True)])
    seen = []
    model.encoder.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    model = apply_strategy(model, method, LoraSpec(r=2, alpha=4) if method == "lora" else None,
                           ["q", "k", "v"])
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(info.norm_mean)[None, None, :, None, None]
    x = (mean + 1500 * torch.randn(2, 3, 10, 16, 16, generator=g)).clamp(1, None).to(torch.int16)
    y = torch.randint(0, 19, (2, 16, 16), generator=g)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    loss = F.cross_entropy(model(x, torch.tensor([[10, 50, 90], [20, 60, 100]])), y)
    loss.backward()
    opt.step()
    z = seen[0]
    assert z.min() >= 0 and z.max() <= 1 and z.min() == 0 and z.max() == 1  # clipped both ways
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    enc = {n for n in moved if ".encoder." in f".{n}"}
    assert any("upernet" in n for n in moved) and any("ltae" in n for n in moved)
    if method == "linear":
        assert not enc
    elif method == "e2e":
        assert any("blocks.0.attn" in n for n in enc) and any("patch_embed" in n for n in enc)
    else:
        assert enc and all("lora_" in n for n in enc)
