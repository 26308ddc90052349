"""The strategy registry (geopeft.strategies): each strategy is one object that every part of
geopeft asks, and BitFit arrived as one such object."""

from pathlib import Path

import pytest
import torch
from conftest import backbone_cfg

from geopeft import config as gcfg
from geopeft.data.dataset import StoreInfo
from geopeft.models.classifier import build_classifier
from geopeft.spec import ConfigError, LoraSpec
from geopeft.strategies import (
    PEFT_METHODS,
    REGISTRY,
    STRATEGIES,
    Strategy,
    apply_strategy,
    count_parameters,
    get,
    param_groups,
    register,
)
from geopeft.strategies.builtin import is_bias


def _store(n_classes: int = 4) -> StoreInfo:
    return StoreInfo(Path("x"), "eurosat_rgb", [f"c{i}" for i in range(n_classes)],
                     ["B04", "B03", "B02"], 1 / 255, [100.0] * 3, [50.0] * 3, "f" * 64)


def _model(method: str, lora: LoraSpec | None = None, prompt=None) -> torch.nn.Module:
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), _store(), 4)
    return apply_strategy(m, method, lora, options=prompt)


#: geopeft's own strategies and peft methods, first in their registries (more may follow).
BUILTIN = ("full", "lora", "linear", "e2e", "scratch", "bitfit", "vpt", "adaptformer", "houlsby")
BUILTIN_PEFT = ("lora", "dora", "loha", "lokr", "ia3", "vera", "fourierft", "oft")
#: What peft names their trained tensors.
PEFT_NAMES = ("lora_", "hada_", "lokr_", "ia3_", "vera_lambda", "fourierft_", "oft_")


def test_the_registry_holds_the_strategies_in_the_schemas_order():
    assert STRATEGIES[:len(BUILTIN)] == BUILTIN
    assert PEFT_METHODS[:len(BUILTIN_PEFT)] == BUILTIN_PEFT
    own = {n: REGISTRY[n] for n in BUILTIN}
    assert [n for n, s in own.items() if not s.loads_weights] == ["scratch"]
    assert [n for n, s in own.items() if s.without_encoder] == ["full", "scratch"]
    assert {n: s.encoder_lr_factor for n, s in own.items() if s.encoder_lr_factor} == {"e2e": 0.1}
    assert [n for n, s in own.items() if s.uses_adapter] == ["lora"]
    with pytest.raises(ValueError, match=r"strategy 'prompt' is not one of \('full'"):
        get("prompt")
    with pytest.raises(ValueError, match="registered twice"):
        register(REGISTRY["full"])


def test_bias_terms_are_named_bias_or_something_bias():
    assert is_bias("blocks.0.attn.qkv.bias") and is_bias("layers.0.blocks.1.attn.q_bias")
    assert not is_bias("layers.0.blocks.0.attn.relative_position_bias_table")
    assert not is_bias("blocks.0.norm1.weight") and not is_bias("bias_table")


def test_bitfit_trains_the_bias_terms_and_the_head_only():
    m = _model("bitfit")
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in m.named_parameters()
                     if n.endswith(".bias") or n.startswith("backbone.head.")}
    assert "backbone.head.weight" in names and "backbone.blocks.0.attn.qkv.q.bias" in names
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(param_groups(m, 1e-2), lr=1e-2)
    x = torch.rand(8, 3, 32, 32) * 255
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(m(x), torch.arange(8) % 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names  # every bias and the head moved; nothing else did


def test_bitfit_on_vit_b16_trains_0_11_million_parameters():
    """ViT-B/16 (timm vit_base_patch16_224) with a 10-class head: the bias terms of the patch
    embedding, of 12 blocks (two LayerNorms, qkv, the attention projection, two MLP layers) and
    of the final LayerNorm, plus the head: 110,602 of 85.8 M (BitFit's 0.1 M on ViT-B, e.g.
    the VTAB tables of Jia et al. 2022, counts the encoder's bias terms: 102,912 here)."""
    bb = {"name": "vit_base_patch16_224", "kwargs": {}, "weights": "none", "sha256": None,
          "input_size": None, "normalize": "auto"}
    with torch.device("meta"):
        m, _ = build_classifier(bb, _store(10), 10)
    m = apply_strategy(m, "bitfit")
    per_block = 768 + (3 * 768) + 768 + 768 + 3072 + 768  # norm1, qkv, proj, norm2, fc1, fc2
    encoder_biases = 768 + 12 * per_block + 768
    head = 768 * 10 + 10
    trainable, total = count_parameters(m)
    assert encoder_biases == 102_912
    assert trainable == encoder_biases + head == 110_602
    assert total == 85_806_346


def _vit_b16(method: str, lora: LoraSpec | None = None, prompt=None) -> torch.nn.Module:
    bb = {"name": "vit_base_patch16_224", "kwargs": {}, "weights": "none", "sha256": None,
          "input_size": None, "normalize": "auto"}
    with torch.device("meta"):  # counted, never run: no memory spent on 86 M weights
        m, _ = build_classifier(bb, _store(10), 10)
    return apply_strategy(m, method, lora, options=prompt)


#: ViT-B/16's trainable parameters per peft method, without the 10-class head (7,690), and the
#: published figure each is held to. 12 blocks, width d = 768, MLP width 3,072; q and v adapted
#: unless said.
PUBLISHED_COUNTS = {
    # LoRA r 8 on q, v: 12 x 2 x (768 x 8 + 8 x 768) = 294,912: "0.29 M" (V-PETL Bench, VTAB-1k
    # ViT-B/16; the VeRA and FourierFT papers' ViT-Base LoRA rows, 294.9 K)
    "lora": (LoraSpec(r=8, target_modules=("q", "v")), 294_912),
    # VeRA r 256 on q, v: per layer a d-vector (256) and a b-vector (768), the projections frozen
    # and shared: 12 x 2 x 1,024 = 24,576 ("24.6 K", Kopiczko et al. 2024, ViT-Base)
    "vera": (LoraSpec(method="vera", r=256, target_modules=("q", "v")), 24_576),
    # FourierFT n 3,000 on q, v: 12 x 2 x 3,000 = 72,000 ("72 K", Gao et al. 2024, ViT-Base)
    "fourierft": (LoraSpec(method="fourierft", n_frequency=3000, alpha=300,
                           target_modules=("q", "v")), 72_000),
    # IA3 on keys, values and the MLP's inner activations: 12 x (768 + 768 + 3,072) = 55,296
    # (l_k, l_v, l_ff of Liu et al. 2022)
    "ia3": (LoraSpec(method="ia3"), 55_296),
    # OFT, blocks of 32 on q, v: each a skew-symmetric 32 x 32 matrix (Cayley transform), 496
    # free parameters, 24 blocks per layer: 12 x 2 x 24 x 496 = 285,696 (Qiu et al. 2023's
    # parameterisation; no ViT-B figure of theirs to compare with)
    "oft": (LoraSpec(method="oft", block_size=32, target_modules=("q", "v")), 285_696),
}


@pytest.mark.parametrize("method", list(PUBLISHED_COUNTS))
def test_each_peft_method_on_vit_b16_trains_its_published_count(method):
    """The adapter a method adds to ViT-B/16 is the published one: its trainable count, beside
    the head's, equals the paper's (or V-PETL Bench's) figure; nothing of the encoder trains."""
    lora, published = PUBLISHED_COUNTS[method]
    m = _vit_b16("lora", lora)
    trainable, total = count_parameters(m)
    head = 768 * 10 + 10
    assert trainable - head == published, trainable - head
    assert total - trainable == 85_806_346 - head  # the frozen encoder, whole


def test_param_groups_put_adapters_and_new_modules_at_the_heads_rate():
    """What the strategy added is recorded when it prepares the model, not guessed from names:
    the groups are those of the names peft gives geopeft's adapters (lora_, hada_, ...), and
    for every method of the registry, everything that trains (adapters and new modules) is at
    the head's rate, nothing of the frozen encoder."""
    for method in PEFT_METHODS:
        m = _model("lora", LoraSpec(method=method, r=2, alpha=4, dropout=0.0))
        groups = param_groups(m, 1e-3, 0.1)
        trains = {id(p) for p in m.parameters() if p.requires_grad}
        assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == trains, method
    for method in BUILTIN_PEFT:
        m = _model("lora", LoraSpec(method=method, r=2, alpha=4, dropout=0.0))
        groups = param_groups(m, 1e-3, 0.1)
        head = {id(p) for g in groups[:1] for p in g["params"]}
        by_name = {id(p) for n, p in m.named_parameters() if p.requires_grad and (
            ".modules_to_save." in n or any(k in n for k in PEFT_NAMES))}
        assert head == by_name and len(groups) == 1, method  # nothing of the encoder trains
    m = _model("bitfit")
    groups = param_groups(m, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m.backbone.head.parameters()}
    assert all(p.ndim == 1 for p in groups[1]["params"])  # the encoder's bias terms
    assert len(param_groups(m, 1e-3, 1.0)) == 1


def test_every_site_asks_the_strategy_object(monkeypatch):
    """A strategy registered at run time is at once a study's strategy: it resolves, its rows
    get its encoder learning-rate factor, the spec loads (or not) its weights, and U-TAE's
    check and the words follow its attributes."""

    class Probe(Strategy):
        name = "probe_test"
        summary = "the head only, the encoder at a slower rate"
        encoder_lr_factor = 0.5
        loads_weights = False

        def mark(self, model, new):
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(tuple(new)))

    register(Probe())
    try:
        cfg = {"study": "s", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"]},
               "backbone": {"name": "vit_tiny_patch16_224"},
               "strategies": {"p": {"strategy": "probe_test"}}, "grid": {"strategy": ["p"]}}
        import copy

        from geopeft.config import load_schema

        schema = load_schema()
        schema["$defs"]["strategy"]["properties"]["strategy"]["enum"].append("probe_test")
        monkeypatch.setattr("geopeft.config.checks.load_schema", lambda name="": schema)
        resolved = gcfg.validate(copy.deepcopy(cfg))
        (spec,) = gcfg.job_specs(resolved)
        assert spec.row.method == "probe_test" and spec.row.lora is None
        assert spec.row.train.encoder_lr_factor == 0.5
        assert spec.encoder.weights == "none"
        assert spec.tracked_params()["adapter"] == "none"
        m = _model("probe_test")
        assert {n for n, p in m.named_parameters() if p.requires_grad} == {
            "backbone.head.weight", "backbone.head.bias"}
    finally:
        del REGISTRY["probe_test"]


def test_u_tae_takes_the_strategies_that_train_every_weight():
    cfg = gcfg.read_yaml("config/.test/pastis.yaml")
    key = next(k for k, s in cfg["strategies"].items()
               if (s.get("segmentation") or {}).get("model") == "utae")
    cfg["strategies"][key]["strategy"] = "bitfit"
    with pytest.raises(ConfigError, match=rf"strategies\.{key}\.strategy: U-TAE is trained from "
                                          r"scratch \(strategy full or scratch\), not 'bitfit'"):
        gcfg.validate(cfg, "pastis.yaml")


def test_the_adapter_in_words_is_written_once():
    lora = LoraSpec(method="dora", r=4, alpha=8, dropout=0.05)
    words = "dora r 4 alpha 8 dropout 0.05 on default"
    assert get("lora").words(lora) == words
    assert get("lora").words(lora, ["q", "v"]) == words.replace("default", "q,v")
    assert get("bitfit").words() == "bitfit"
    from geopeft.strategies import PEFT_REGISTRY, PeftMethod

    PEFT_REGISTRY["probe_test"] = PeftMethod("probe_test", "scales only", lambda lo, c: None, ())
    try:  # a method that takes no rank, alpha or dropout is worded without them
        assert get("lora").words(LoraSpec(method="probe_test"), ["q"]) == "probe_test on q"
    finally:
        del PEFT_REGISTRY["probe_test"]


def test_bitfit_on_swin_v2_trains_its_separate_query_and_value_biases():
    """Swin-V2's attention has no qkv bias but separate ``q_bias`` and ``v_bias`` (k has none):
    BitFit trains them with every other bias term (the continuous position bias MLP's too), not
    the position tables, the MLP's weights or the attention's logit scale. Swin-V2-T with a
    10-class head: 60,298 trainable of 27.6 M."""
    bb = {"name": "swinv2_tiny", "kwargs": {}, "weights": "none", "sha256": None,
          "input_size": None, "normalize": "auto"}
    with torch.device("meta"):
        m, _ = build_classifier(bb, _store(10), 10)
    m = apply_strategy(m, "bitfit")
    trains = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "backbone.layers.0.blocks.0.attn.q_bias" in trains
    assert "backbone.layers.3.blocks.1.attn.v_bias" in trains
    assert "backbone.layers.0.blocks.0.attn.cpb_mlp.0.bias" in trains
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert any(n.endswith("logit_scale") for n in frozen)
    assert any(n.endswith("cpb_mlp.0.weight") for n in frozen)
    assert not any("relative_position" in n or "logit_scale" in n for n in trains)
    assert count_parameters(m) == (60_298, 27_585_844)


# ------------------------------------------------------------------------- visual prompt tuning

#: A tiny random Swin-V2, which the ViT-only strategies refuse.
TINY_SWIN = {"name": "swinv2_tiny", "kwargs": {"img_size": 32, "window_size": 4, "embed_dim": 24,
                                               "depths": (1, 1), "num_heads": (2, 4)},
             "weights": "none", "sha256": None, "input_size": None, "normalize": "auto"}


def _reference_vpt(vit, x: torch.Tensor, prompts: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT's forward as its reference implementation writes it (KMnP/vpt, PromptedTransformer:
    ``incorporate_prompt`` after the class token, then ``forward_deep_prompt``, which replaces the
    prompt tokens before each block but the first), on the blocks' own forward (no hooks)."""
    s, n = vit.num_prefix_tokens, prompts.shape[1]
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    p0 = prompts[0].expand(h.shape[0], -1, -1)
    h = torch.cat([h[:, :s], p0, h[:, s:]], dim=1)
    for i, blk in enumerate(vit.blocks):
        if deep and i > 0:
            h = torch.cat([h[:, :s], prompts[i].expand(h.shape[0], -1, -1), h[:, s + n:]], dim=1)
        h = blk.forward(h)
    h = vit.norm(h)
    return torch.cat([h[:, :s], h[:, s + n:]], dim=1)  # the image tokens the head reads


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_vpt_equals_the_reference_forward_and_trains_only_its_prompts(deep):
    """VPT through hooks on a frozen ViT: its features equal the reference implementation's
    forward with the same prompts (prompts after the class token; deep: each block's own);
    the prompts and the head train, nothing of the encoder; the prompts change the output;
    every block's output (a segmentation decoder's taps) has the encoder's own token count."""
    from geopeft.strategies import PromptSpec

    m = _model("vpt", prompt=PromptSpec(tokens=3, deep=deep, dropout=0.0)).eval()
    vit = m.backbone
    layers = len(vit.blocks) if deep else 1
    assert vit.vpt.prompts.shape == (layers, 3, vit.embed_dim)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "backbone.vpt.prompts", "backbone.head.weight", "backbone.head.bias"}
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        z = m.normalize(x) if hasattr(m, "normalize") else x
        got = vit.forward_features(z)
        want = _reference_vpt(vit, z, vit.vpt.prompts, deep)
        plain_vit = _model("linear").eval().backbone
        plain = plain_vit.forward_features(z)
        assert got.shape == want.shape == plain.shape  # the encoder's own tokens
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(got, plain, atol=1e-3)  # the prompts act
        index = [0, len(vit.blocks) - 1]
        taps = vit.forward_intermediates(z, indices=index, intermediates_only=True)
        plain_taps = plain_vit.forward_intermediates(z, indices=index, intermediates_only=True)
        assert [t.shape for t in taps] == [t.shape for t in plain_taps]


def test_vpt_on_vit_b16_trains_its_published_count_and_refuses_other_encoders():
    """VPT on ViT-B/16 trains tokens x width x layers (deep) or tokens x width (shallow): 50
    deep tokens 460,800, 50 shallow 38,400 (Jia et al. 2022's parameterisation: one d-vector per
    prompt and layer), beside the 10-class head. Swin-V2 and CROMA are refused, by name."""
    from geopeft.strategies import PromptSpec

    head = 768 * 10 + 10
    for deep, count in ((True, 50 * 768 * 12), (False, 50 * 768)):
        m = _vit_b16("vpt", prompt=PromptSpec(tokens=50, deep=deep))
        trainable, total = count_parameters(m)
        assert trainable - head == count == {True: 460_800, False: 38_400}[deep]
        assert total - trainable == 85_806_346 - head
    m, _ = build_classifier(TINY_SWIN, _store(), 4)
    with pytest.raises(ValueError, match=r"strategy vpt needs a ViT encoder .* this model has"):
        apply_strategy(m, "vpt")


def test_a_vpt_study_resolves_with_its_prompts_in_the_spec_and_the_words():
    """A study names VPT and the bottleneck adapters from YAML: their rows carry the strategy's
    own settings (defaults filled), the job spec holds them, and MLflow's adapter param words
    them."""
    cfg = {"study": "s", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"]},
           "backbone": {"name": "vit_tiny_patch16_224"},
           "strategies": {"deep": {"strategy": "vpt", "prompt": {"tokens": 50}},
                          "shallow": {"strategy": "vpt", "prompt": {"deep": False}},
                          "af": {"strategy": "adaptformer", "bottleneck": {"dim": 16}},
                          "ho": {"strategy": "houlsby"}},
           "grid": {"strategy": ["deep", "shallow", "af", "ho"]}}
    resolved = gcfg.validate(cfg)
    specs = {s.row.strategy: s for s in gcfg.job_specs(resolved)}
    assert specs["deep"].row.options.tokens == 50 and specs["deep"].row.options.deep
    assert specs["shallow"].row.options.tokens == 10 and not specs["shallow"].row.options.deep
    assert specs["deep"].row.lora is None
    assert specs["deep"].tracked_params()["adapter"] == "vpt deep, 50 tokens"
    assert specs["shallow"].tracked_params()["adapter"] == "vpt shallow, 10 tokens"
    assert specs["af"].tracked_params()["adapter"] == "adaptformer bottleneck 16, scale 0.1"
    assert specs["ho"].tracked_params()["adapter"] == "houlsby bottleneck 64"
    for name, family in (("swinv2_tiny", "swin"), ("croma_optical_base", "croma")):
        with pytest.raises(gcfg.ConfigError, match=rf"strategies\.ho\.strategy: houlsby works on "
                                                  rf"vit encoders; backbone '{name}' is a {family}"):
            gcfg.validate({**cfg, "backbone": {"name": name},
                           "strategies": {"ho": {"strategy": "houlsby"}}, "grid": {"strategy": ["ho"]}})
    with pytest.raises(gcfg.ConfigError, match=r"strategies\.deep\.prompt\.tokens: 0 is less"):
        gcfg.validate({**cfg, "strategies": {"deep": {"strategy": "vpt", "prompt": {"tokens": 0}}},
                       "grid": {"strategy": ["deep"]}})


# ------------------------------------------------------------------------- bottleneck adapters


def _reference_adapter(a, h: torch.Tensor) -> torch.Tensor:
    return a.up(torch.relu(a.down(h))) * a.scale


def _reference_blocks(vit, x: torch.Tensor, parallel: bool) -> torch.Tensor:
    """The blocks as AdaptFormer's AdaptMLP and Houlsby's adapter write them, on the blocks'
    own sub-modules (no hooks): parallel x + mlp(norm2(x)) + s * adapter(x); sequential an
    adapter with its own residual after the attention and after the MLP sub-layer."""
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    ad = vit.bottleneck
    for i, blk in enumerate(vit.blocks):
        attn = blk.ls1.forward(blk.attn(blk.norm1(h)))
        if not parallel:
            attn = attn + _reference_adapter(ad[f"{i}_ls1"], attn)
        h = h + attn
        mlp = blk.ls2.forward(blk.mlp(blk.norm2.forward(h)))
        if parallel:
            h = h + mlp + _reference_adapter(ad[f"{i}_mlp"], h)
        else:
            h = h + mlp + _reference_adapter(ad[f"{i}_ls2"], mlp)
    return vit.norm(h)


@pytest.mark.parametrize("method", ["adaptformer", "houlsby"])
def test_bottleneck_adapters_equal_the_reference_and_start_as_the_frozen_encoder(method):
    """AdaptFormer and the Houlsby adapter through hooks on a frozen ViT: they start as the
    frozen encoder (up-projection at zero), train only the adapters and the head, and, once
    their weights move, the features equal the published block equations computed on the
    blocks' own sub-modules."""
    from geopeft.strategies import BottleneckSpec

    spec = BottleneckSpec(dim=4, scale=0.1, dropout=0.0)
    m = _model(method, prompt=spec).eval()
    vit = m.backbone
    n_adapters = len(vit.blocks) * (1 if method == "adaptformer" else 2)
    assert len(vit.bottleneck) == n_adapters
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        f"backbone.bottleneck.{k}.{lin}.{w}" for k in vit.bottleneck for lin in ("down", "up")
        for w in ("weight", "bias")} | {"backbone.head.weight", "backbone.head.bias"}
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        z = m.normalize(x) if hasattr(m, "normalize") else x
        plain = _model("linear").eval().backbone.forward_features(z)
        assert torch.equal(vit.forward_features(z), plain)  # it starts as the frozen encoder
        for p in vit.bottleneck.parameters():
            p.normal_(0, 0.5)
        got = vit.forward_features(z)
        assert not torch.allclose(got, plain, atol=1e-3)
        assert torch.allclose(got, _reference_blocks(vit, z, method == "adaptformer"), atol=1e-5)


def test_bottleneck_adapters_on_vit_b16_train_their_counts():
    """On ViT-B/16 (width 768) with a bottleneck of 64, an adapter has 768 x 64 + 64 + 64 x 768
    + 768 = 99,136 parameters: AdaptFormer one per block, 1,189,632 (AdaptFormer-64, Chen et al.
    2022), Houlsby two, 2,379,264; the encoder stays whole and frozen; Swin-V2 is refused."""
    from geopeft.strategies import BottleneckSpec

    head = 768 * 10 + 10
    per = 768 * 64 + 64 + 64 * 768 + 768
    for method, count in (("adaptformer", 1_189_632), ("houlsby", 2_379_264)):
        m = _vit_b16(method, prompt=BottleneckSpec(dim=64))
        trainable, total = count_parameters(m)
        assert trainable - head == count == per * 12 * (1 if method == "adaptformer" else 2)
        assert total - trainable == 85_806_346 - head
    m, _ = build_classifier(TINY_SWIN, _store(), 4)
    with pytest.raises(ValueError, match=r"strategy houlsby needs a ViT encoder"):
        apply_strategy(m, "houlsby")
