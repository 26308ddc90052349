import hashlib
import os
from pathlib import Path

import pytest
import torch
from conftest import backbone_cfg, full_spec
from safetensors.torch import save_file

from geopeft.data.dataset import StoreInfo
from geopeft.models.backbones import SplitQKV, create_model, split_qkv
from geopeft.models.classifier import build_classifier
from geopeft.models.saved import load_model, save_model
from geopeft.models.weights import WeightsError, adapt_patch_embed, load_weights
from geopeft.spec import LoraSpec, PromptSpec
from geopeft.strategies import BottleneckSpec, apply_strategy, count_parameters

BANDS = ["B04", "B03", "B02"]


def store(bands=BANDS, scale=1 / 255) -> StoreInfo:
    n = len(bands)
    return StoreInfo(Path("x"), "eurosat_rgb", [f"c{i}" for i in range(4)], list(bands), scale,
                     [100.0] * n, [50.0] * n, "f" * 64)


def model(method, **kw):
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), store(), 4)
    return apply_strategy(m, method, LoraSpec(**kw) if kw else None)


def trainable(m):
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_split_qkv_gives_identical_outputs():
    torch.manual_seed(0)
    vit = create_model(backbone_cfg(), 3, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = vit(x)
    assert split_qkv(vit) == 2
    assert isinstance(vit.blocks[0].attn.qkv, SplitQKV)
    assert torch.allclose(vit(x), ref, atol=1e-6)


def _lora_qkv(method="lora", dropout=0.0):
    """A LoRA model with non-zero adapters (peft starts lora_B at zero: a test of the adapter
    path on them would pass trivially) and the first block's split q/k/v."""
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), store(), 4)
    m = apply_strategy(m, "lora", LoraSpec(method=method, r=4, alpha=8, dropout=dropout,
                                           target_modules=("q", "k", "v")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    qkv = next(mod for mod in m.modules() if isinstance(mod, SplitQKV))
    return m, qkv


def test_lora_qkv_runs_fused_with_the_outputs_and_gradients_of_three_layers():
    """q, k, v with LoRA run as one fused projection (one frozen GEMM, stacked A, block-diagonal
    B): outputs and adapter gradients equal the three peft layers called one by one."""
    from geopeft.models.backbones import fused_lora_qkv

    m, qkv = _lora_qkv()
    x = torch.randn(2, 5, 48, requires_grad=True)
    parts = (qkv.q, qkv.k, qkv.v)
    fused = fused_lora_qkv(parts, x)
    assert fused is not None  # the fast path is taken
    ref = torch.cat([p(x) for p in parts], dim=-1)
    assert torch.allclose(fused, ref, atol=1e-5)
    w = torch.randn_like(ref)
    grads = []
    for out in (fused, ref):
        params = [x, *(p for p in qkv.parameters() if p.requires_grad)]
        grads.append(torch.autograd.grad((out * w).sum(), params))
    assert len(grads[0]) == 1 + 3 * 2  # x, and A and B of q, k, v
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in grads[0][1:])
    # the whole model: the forward goes through the fused path and gives the same logits
    m.eval()
    xb = torch.rand(2, 3, 32, 32) * 255
    fast = m(xb)
    calls = []
    for mod in m.modules():
        if isinstance(mod, SplitQKV):
            mod.forward = lambda x, mod=mod: calls.append(1) or torch.cat(
                [mod.q(x), mod.k(x), mod.v(x)], dim=-1)
    assert torch.allclose(m(xb), fast, atol=1e-5) and len(calls) == 2


def test_lora_vit_keeps_pytorch_fused_attention(monkeypatch):
    """Splitting timm's ``qkv`` for LoRA leaves each block's attention on PyTorch's
    scaled-dot-product kernel (timm's ``fused_attn``), in training as in evaluation."""
    import torch.nn.functional as F

    m, _ = _lora_qkv()
    blocks = [mod for mod in m.modules() if hasattr(mod, "fused_attn") and hasattr(mod, "qkv")]
    assert len(blocks) == 2 and all(b.fused_attn for b in blocks)
    assert all(isinstance(b.qkv, SplitQKV) for b in blocks)
    sdpa, calls = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    m.train()
    m(torch.rand(2, 3, 32, 32) * 255).sum().backward()
    assert len(calls) == 2


def test_fused_lora_qkv_shares_one_dropout_of_the_input_and_falls_back_when_it_must():
    """In training, one dropout mask of the shared input for the three adapters (as LoRA's
    reference MergedLinear); merged adapters, disabled adapters and DoRA use the layers one by
    one, with their outputs."""
    from geopeft.models.backbones import fused_lora_qkv

    m, qkv = _lora_qkv(dropout=0.5)
    m.train()
    parts = (qkv.q, qkv.k, qkv.v)
    used = []
    for p in parts:
        drop = p.lora_dropout["default"]
        drop.register_forward_hook(lambda mod, i, o, p=p: used.append(p))
    x = torch.randn(2, 5, 48)
    assert fused_lora_qkv(parts, x) is not None
    assert used == [qkv.q]  # one mask, drawn once
    torch.manual_seed(3)
    out = fused_lora_qkv(parts, x)
    torch.manual_seed(3)
    mask = torch.nn.functional.dropout(torch.ones_like(x), 0.5, True)
    for i, p in enumerate(parts):  # every adapter saw the same dropped input
        lora = p.lora_B["default"](p.lora_A["default"](x * mask)) * p.scaling["default"]
        want = p.base_layer(x) + lora
        assert torch.allclose(out[..., i * 48:(i + 1) * 48], want, atol=1e-5)
    m.eval()
    x = torch.randn(2, 5, 48)
    ref = torch.cat([p(x) for p in parts], dim=-1)
    m.merge_adapter()
    assert fused_lora_qkv(parts, x) is None  # merged: the base weights hold the adapters
    assert torch.allclose(qkv(x), ref, atol=1e-5)
    m.unmerge_adapter()
    with m.disable_adapter():
        assert fused_lora_qkv(parts, x) is None
    _, dqkv = _lora_qkv("dora")
    assert fused_lora_qkv((dqkv.q, dqkv.k, dqkv.v), x) is None


def test_full_trains_everything_linear_only_head():
    full = model("full")
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    lin = model("linear")
    assert trainable(lin) == {"backbone.head.weight", "backbone.head.bias"}


def test_lora_trains_adapters_and_new_head_only():
    m = model("lora", r=4, alpha=8, dropout=0.0, target_modules=["q", "k", "v"])
    names = trainable(m)
    lora = {n for n in names if "lora_" in n}
    head = names - lora
    assert head == {"base_model.model.backbone.head.modules_to_save.default.weight",
                    "base_model.model.backbone.head.modules_to_save.default.bias"}
    # rank-4 A and B on q, k, v of both blocks
    assert len(lora) == 2 * 3 * 2
    assert all(any(f".attn.qkv.{t}.lora_" in n for t in "qkv") for n in lora)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "lora_" not in n
                   and "modules_to_save" not in n)
    t, total = count_parameters(m)
    assert t == 2 * 3 * (48 * 4 + 4 * 48) + (48 * 4 + 4)
    assert total > t


def _train_a_bit(m, steps=3):
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(8, 3, 32, 32, generator=g) * 255
        loss = torch.nn.functional.cross_entropy(m(x), torch.arange(8) % 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("method", ["lora", "linear", "full", "bitfit", "vpt", "adaptformer",
                                    "houlsby"])
def test_save_load_identical_outputs(method, tmp_path, monkeypatch, rgb_store):
    monkeypatch.chdir(tmp_path)
    from geopeft.data.dataset import store_info

    info = store_info(rgb_store)
    torch.manual_seed(0)
    m, minfo = build_classifier(backbone_cfg(), info, len(info.classes))
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q", "v"]}
    prompt = {"tokens": 4, "deep": True, "dropout": 0.0}
    bottleneck = {"dim": 4, "scale": 0.1, "dropout": 0.0}
    options = PromptSpec(**prompt) if method == "vpt" else BottleneckSpec(**bottleneck)
    m = _train_a_bit(apply_strategy(m, method, LoraSpec(**lora), options=options))
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        ref = m(x)
    row = {"name": "r", "method": method, "lora": lora, "prompt": prompt,
           "bottleneck": bottleneck}
    spec = {"backbone": backbone_cfg(), "row": row, "data": {"dataset": "eurosat_rgb"}}
    save_model(m, tmp_path / "model", {"spec": full_spec(spec), "model": minfo})
    saved = set(__import__("safetensors.torch", fromlist=["x"]).load_file(
        str(tmp_path / "model" / "trainable.safetensors")))
    assert saved == {n for n, _ in m.named_parameters()}  # random base: everything is saved
    if method == "lora":
        assert any("modules_to_save" in k and "head" in k for k in saved)  # head saved with adapter
        assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777
             for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # the weights too (safetensors: 0600)
    loaded = load_model(tmp_path / "model", rgb_store)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


def test_checkpoint_holds_only_trainable_parameters_with_pretrained_base(tmp_path, rgb_store):
    from safetensors.torch import load_file

    from geopeft.data.dataset import store_info
    from geopeft.models.saved import trainable_state

    info = store_info(rgb_store)
    vit = create_model(backbone_cfg(), 3, 0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    bb = backbone_cfg(f"file:{path}", sha256=sha)
    m, minfo = build_classifier(bb, info, len(info.classes))
    m = _train_a_bit(apply_strategy(m, "lora", LoraSpec(r=4, alpha=8, dropout=0.0)))
    assert set(trainable_state(m, minfo["weights"])) == trainable(m)
    spec = {"backbone": bb, "row": {"name": "r", "method": "lora", "lora": {"r": 4, "alpha": 8,
            "dropout": 0.0}}, "data": {"dataset": "eurosat_rgb"}}
    save_model(m, tmp_path / "model", {"spec": full_spec(spec), "model": minfo})
    assert set(load_file(str(tmp_path / "model" / "trainable.safetensors"))) == trainable(m)
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model", rgb_store)(x), m(x))


def test_lora_merge_and_peft_reload_identical(tmp_path, rgb_store):
    from peft import PeftModel

    from geopeft.data.dataset import store_info

    info = store_info(rgb_store)
    torch.manual_seed(0)
    base, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    m = _train_a_bit(apply_strategy(base, "lora", LoraSpec(r=4, alpha=8, dropout=0.0)))
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        ref = m(x)
    m.save_pretrained(str(tmp_path / "adapter"))
    fresh, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x), ref, atol=1e-5)
        merged = m.merge_and_unload().eval()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(x), ref, atol=1e-4)


#: The names of each method's tensors in a peft model.
PEFT_TENSORS = {"ia3": "ia3_l", "vera": "vera_lambda", "fourierft": "fourierft_", "oft": "oft_"}


@pytest.mark.parametrize("method", list(PEFT_TENSORS))
def test_each_peft_method_saves_reloads_alone_and_merges(method, tmp_path, rgb_store):
    """The peft methods beyond LoRA: a trained model saves and loads through geopeft with the
    same outputs; its adapter folder alone (the adapter, and the head saved with it) on the
    frozen base reproduces them (VeRA's frozen projections are saved with it); merged into the
    encoder for inference, the outputs stay (float tolerance)."""
    from peft import PeftModel

    from geopeft.data.dataset import store_info

    info = store_info(rgb_store)
    torch.manual_seed(0)
    base, minfo = build_classifier(backbone_cfg(), info, len(info.classes))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    lora = {"method": method, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q", "v"],
            "n_frequency": 64, "block_size": 4}
    m = apply_strategy(base, "lora", LoraSpec(**lora))
    start = {n: p.detach().clone() for n, p in m.named_parameters()
             if p.requires_grad and "modules_to_save" not in n}
    m = _train_a_bit(m)
    moved = [n for n, p in m.named_parameters() if n in start and not torch.equal(p, start[n])]
    assert moved and len(moved) == len(start)  # every adapter tensor left its initialisation
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        ref = m(x)
    row = {"name": "r", "method": "lora", "lora": lora}
    spec = {"backbone": backbone_cfg(), "row": row, "data": {"dataset": "eurosat_rgb"}}
    save_model(m, tmp_path / "model", {"spec": full_spec(spec), "model": minfo})
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model", rgb_store)(x), ref)
        merged = load_model(tmp_path / "model", rgb_store, merge=True)  # predict --merge
        assert not any(PEFT_TENSORS[method] in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(x), ref, atol=1e-4)
    fresh, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    fresh.load_state_dict(base_state)
    alone = PeftModel.from_pretrained(fresh, str(tmp_path / "model" / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(alone(x), ref, atol=1e-5)
        merged = m.merge_and_unload().eval()
        assert torch.allclose(merged(x), ref, atol=1e-4)


def test_adapt_patch_embed_keeps_known_bands_and_response():
    w = torch.randn(8, 3, 4, 4)
    out = adapt_patch_embed(w, BANDS, ["B02", "B03", "B04", "B08"])
    assert out.shape == (8, 4, 4, 4)
    scale = 3 / 4
    assert torch.allclose(out[:, 0], w[:, 2] * scale)  # B02 keeps its filter
    assert torch.allclose(out[:, 3], w.mean(1) * scale)  # unknown band: mean filter
    # a flat input gives the same response as before
    assert torch.allclose(out.sum(1), w.sum(1), atol=1e-5)
    assert torch.equal(adapt_patch_embed(w, BANDS, BANDS), w)


def test_weights_file_sha256(tmp_path):
    vit = create_model(backbone_cfg(), 3, 0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    w = load_weights(backbone_cfg(f"file:{path}", sha256=good))
    assert w is not None and w.bands == BANDS
    m, info = build_classifier(backbone_cfg(f"file:{path}", sha256=good), store(), 4)
    assert torch.equal(m.backbone.pos_embed, vit.pos_embed)
    assert info["weights"].startswith("file:")
    with pytest.raises(WeightsError, match="does not match backbone.sha256"):
        load_weights(backbone_cfg(f"file:{path}", sha256="0" * 64))
    with pytest.raises(WeightsError, match="not found"):
        load_weights(backbone_cfg(f"file:{tmp_path}/missing.pth", sha256=good))


def test_timm_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # huggingface_hub read the environment when imported: offline for this test, as a user's
    # HF_HUB_OFFLINE=1 makes it (else it waits for network timeouts: 47 s in CI)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"not in the Hugging Face cache.*file:<path>"):
        load_weights(backbone_cfg("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", kwargs={}))


def test_normalisation_matches_pretrained_weights_and_applied_once(tmp_path):
    from geopeft.models.classifier import resolve_norm
    from geopeft.models.weights import Normalization

    wn = Normalization(["B02", "B03", "B04"], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    n = resolve_norm("auto", wn, store())
    assert n.mean == [0.3, 0.2, 0.1] and n.std == [3.0, 2.0, 1.0]  # reordered to the store's bands
    n = resolve_norm("dataset", wn, store())
    assert n.mean == pytest.approx([100 / 255] * 3)
    m, _ = build_classifier(backbone_cfg(), store(), 4)
    x = torch.full((1, 3, 32, 32), 100.0)
    assert torch.allclose(m.normalize(x), torch.zeros(1, 3, 32, 32), atol=1e-6)


def test_e2e_encoder_learning_rate_factor():
    from geopeft.strategies import param_groups

    m = model("e2e")
    assert trainable(m) == {n for n, _ in m.named_parameters()}
    groups = param_groups(m, 1e-3, 0.1)
    head = {id(p) for p in m.backbone.head.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[0]["params"]} == head
    assert len(groups[1]["params"]) == len(list(m.parameters())) - 2
    assert len(param_groups(m, 1e-3, 1.0)) == 1


def test_scratch_ignores_backbone_weights(tmp_path):
    from conftest import job_spec

    vit = create_model(backbone_cfg(), 3, 0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    bb = backbone_cfg(f"file:{path}", sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    spec = job_spec({"backbone": bb, "row": {"method": "scratch"}})
    assert spec.encoder.weights == "none"
    torch.manual_seed(1)
    m, info = build_classifier(spec.encoder.as_dict(), store(), 4)
    assert info["weights"] == "none"
    assert not torch.equal(m.backbone.pos_embed, vit.pos_embed)
    assert job_spec({"backbone": bb, "row": {"method": "lora"}}).encoder.weights.startswith("file:")


def test_input_size_mismatch_is_a_clear_error():
    from geopeft.config import ConfigError

    big = StoreInfo(Path("s.zarr"), "bigearthnet_s2", ["a"], BANDS, 1e-4, [0.0] * 3, [1.0] * 3,
                    "f", (120, 120))
    with pytest.raises(ConfigError, match=r"takes 32x32 inputs but s.zarr holds 120x120.*input_size: 32"):
        build_classifier(backbone_cfg(), big, 1)
    m, _ = build_classifier(backbone_cfg(input_size=32), big, 1)
    assert m(torch.zeros(1, 3, 120, 120)).shape == (1, 1)


def test_lora_cost_benchmark_measures_what_each_strategy_holds():
    """bench/lora_cost.py (smoke size): the four variants train side by side and the memory
    breakdown shows what LoRA saves: no gradients or optimiser state of the frozen encoder."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "lora_cost.py"
    spec = importlib.util.spec_from_file_location("lora_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run("vit_tiny_patch16_224", 32, 2, steps=1, warmup=0, device=torch.device("cpu"))
    v = out["variants"]
    assert list(v) == ["full", "lora", "lora_unfused", "linear"]
    full, lora, unfused, lin = (v[k] for k in ("full", "lora", "lora_unfused", "linear"))
    assert lora["trainable_params"] == unfused["trainable_params"] < full["trainable_params"] / 10
    assert lin["trainable_params"] < lora["trainable_params"]
    fm, lm = full["memory_mb"], lora["memory_mb"]
    assert abs(fm["parameters"] - lm["parameters"]) < 0.1 * fm["parameters"]
    assert fm["gradients"] > 0.9 * fm["parameters"] and fm["optimizer"] > 1.8 * fm["parameters"]
    assert lm["gradients"] + lm["optimizer"] < 0.1 * (fm["gradients"] + fm["optimizer"])
    assert lin["memory_mb"]["activations"] < lm["activations"]
    assert full["time_vs_full"] == 1.0 and lora["memory_vs_full"] < 0.6
    assert "| lora_unfused |" in bench.report(out)


def test_startup_benchmark_summarizes_stages_and_times_imports():
    """bench/startup.py: per-stage seconds from the cumulative marks a job records, medians
    over runs; the import times of the heavy packages from a fresh interpreter."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "startup.py"
    spec = importlib.util.spec_from_file_location("startup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [{"imports": 3.0, "data": 4.0, "model": 6.0, "mlflow_run": 8.0, "first_step": 8.5},
            {"imports": 5.0, "data": 5.5, "model": 7.5, "mlflow_run": 9.0, "first_step": 9.0}]
    assert bench.summarize(runs) == {"imports": 4.0, "data": 0.75, "model": 2.0,
                                     "mlflow_run": 1.75, "first_step": 0.25, "total": 8.75}
    t = bench.import_times()
    assert list(t) == list(bench.PACKAGES) and t["torch"] > 0.1
