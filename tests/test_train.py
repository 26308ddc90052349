import numpy as np
import pytest
import torch
from conftest import backbone_cfg

from geopeft.data.dataset import load_split, store_info
from geopeft.models.classifier import build_classifier
from geopeft.spec import LoraSpec, TrainArgs
from geopeft.strategies import apply_strategy
from geopeft.train.loop import augment, fit, warmup_cosine


def _fit(store, seed=0, method="lora"):
    info = store_info(store)
    torch.manual_seed(seed)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    m = apply_strategy(m, method, LoraSpec(r=4, alpha=8, dropout=0.1))
    args = TrainArgs(epochs=2, batch_size=16, lr=1e-3, seed=seed, progress=False)
    res = fit(m, load_split(store, "train"), load_split(store, "val"), args)
    return m, res


def test_deterministic_on_cpu(rgb_store):
    a, ra = _fit(rgb_store)
    b, rb = _fit(rgb_store)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    assert ra["history"] == rb["history"]
    c, _ = _fit(rgb_store, seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(),
                                                      strict=True))


def test_records_costs_and_history(rgb_store):
    m, res = _fit(rgb_store, method="linear")
    assert len(res["history"]) == 2 and {"train_loss", "val_score", "lr"} <= set(res["history"][0])
    assert res["images_per_s"] > 0 and res["device"] == "cpu"
    assert res["peak_memory_mb"] == res["tensors_mb"]["total"] > 0  # training tensors, not RSS
    assert res["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine reaches zero


def test_frozen_parameters_do_not_move(rgb_store):
    info = store_info(rgb_store)
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m = apply_strategy(m, "linear")
    fit(m, load_split(rgb_store, "train"), None, TrainArgs(epochs=1, batch_size=16, progress=False))
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.head.weight", "backbone.head.bias"}


def test_warmup_then_cosine():
    f = warmup_cosine(100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0)
    lrs = [f(s) for s in range(10, 100)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:], strict=False))


def test_augment_is_a_dihedral_transform():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    y = augment(x, torch.Generator().manual_seed(0))
    for i in range(2):
        variants = [torch.rot90(x[i], k, (-2, -1)) for k in range(4)]
        variants += [torch.flip(v, (-1,)) for v in variants]
        assert any(torch.equal(y[i], v) for v in variants)
    assert np.array_equal(np.sort(y.numpy().ravel()), np.sort(x.numpy().ravel()))


def test_multilabel_training_uses_bce_and_map(tmp_path):
    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic_bigearthnet import generate_bigearthnet

    generate_bigearthnet(tmp_path / "raw", n_patches=24, seed=3, cloudy_share=0.0)
    store = tmp_path / "s.zarr"
    prepare("bigearthnet_s2", tmp_path / "raw", ["B04", "B03", "B02", "B08"], store,
            options={"size": 32, "resampling": "bilinear"})
    info = store_info(store)
    tr = load_split(store, "train")
    assert tr.y.shape[1] == 19 and tr.y.dtype == np.float32
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    res = fit(m, tr, load_split(store, "val"),
              TrainArgs(epochs=3, batch_size=8, lr=3e-3, progress=False, augment=False))
    h = res["history"]
    assert {"val_map_micro", "val_score"} <= set(h[-1]) and "train_acc" not in h[-1]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert 0 <= h[-1]["val_score"] <= 1


def test_nan_loss_stops_with_the_run_epoch_and_step_and_keeps_the_last_good_state(rgb_store, tmp_path):
    from geopeft.train.loop import NonFiniteLoss
    from geopeft.train.resume import Checkpointer

    info = store_info(rgb_store)
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    m = apply_strategy(m, "linear")
    calls = {"n": 0}

    def poison(module, inputs, output):  # the third training forward pass returns NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] == 3:
                return output * float("nan")
        return output

    m.register_forward_hook(poison)
    ckpt = Checkpointer(tmp_path / "state", every_steps=1, every_minutes=0)
    args = TrainArgs(epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False)
    with pytest.raises(NonFiniteLoss, match=r"lora-f1-s0: training loss is nan at epoch 1, step 3"
                                            r".*last good state is kept in .*state, of step 2"):
        fit(m, load_split(rgb_store, "train"), None, args, checkpointer=ckpt, name="lora-f1-s0")
    assert all(torch.isfinite(p).all() for p in m.parameters())  # no update from the NaN step
    last = ckpt.latest()
    assert last["step"] == 2 and all(torch.isfinite(t).all() for t in last["trainable"].values())
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), last["trainable"][n]), n


def _poisoned(store, at: int, factor: float):
    """A linear probe whose ``at``-th training forward pass returns its logits x ``factor``."""
    info = store_info(store)
    torch.manual_seed(0)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    m = apply_strategy(m, "linear")
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == at:
                return output * factor
        return output

    m.register_forward_hook(poison)
    return m


def test_a_nan_before_any_saved_state_says_that_none_was_saved(rgb_store, tmp_path):
    """With the default checkpointing (by time, at epoch ends) a NaN in the first epoch comes
    before any state: the message must not promise one."""
    from geopeft.train.loop import NonFiniteLoss
    from geopeft.train.resume import Checkpointer

    m = _poisoned(rgb_store, 2, float("nan"))
    ckpt = Checkpointer(tmp_path / "state", every_steps=0, every_minutes=10)
    args = TrainArgs(epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False)
    with pytest.raises(NonFiniteLoss) as err:
        fit(m, load_split(rgb_store, "train"), None, args, checkpointer=ckpt, name="r")
    assert ckpt.latest() is None
    assert "training loss is nan at epoch 1, step 2" in str(err.value)
    assert f"no state was saved yet in {ckpt.directory}: a rerun starts from the beginning" in str(err.value)
    assert "last good state" not in str(err.value)


def test_a_finite_loss_grown_past_max_loss_growth_stops_training(rgb_store, tmp_path):
    """A diverging run's loss is finite but absurd long before it is NaN: a loss past
    train.max_loss_growth x the first step's stops training before the update, naming the step,
    the loss, the first loss and the factor; 0 turns the check off."""
    from geopeft.train.loop import DivergedLoss
    from geopeft.train.resume import Checkpointer

    train = load_split(rgb_store, "train")
    m = _poisoned(rgb_store, 3, 1e7)  # the third step's logits x 1e7: a finite loss ~1e7 x
    ckpt = Checkpointer(tmp_path / "state", every_steps=1, every_minutes=0)
    args = TrainArgs(epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False)
    assert args.max_loss_growth == 1e4  # the default
    with pytest.raises(DivergedLoss) as err:
        fit(m, train, None, args, checkpointer=ckpt, name="r")
    first = ckpt.latest()["first_loss"]  # kept in the state: a resumed run compares with it
    assert 0 < first < 10 and err.value.step == 3 and err.value.loss > 1e4 * first
    assert (f"r: training loss is {err.value.loss:.6g}, {err.value.loss / first:.3g} times the "
            f"first step's {first:.6g}, past train.max_loss_growth 10000 at epoch 1, step 3; "
            f"stopped before the update (the last good state is kept in {ckpt.directory}, of "
            f"step 2)") in str(err.value)
    assert all(torch.equal(p.detach(), ckpt.latest()["trainable"][n])  # no update from step 3
               for n, p in m.named_parameters() if p.requires_grad)
    m = _poisoned(rgb_store, 3, 1e7)
    res = fit(m, train, None, TrainArgs(epochs=2, batch_size=16, lr=1e-3, seed=0, progress=False,
                                        max_loss_growth=0))
    assert len(res["history"]) == 2  # off: the same run trains to its end


def test_training_memory_is_the_training_tensors_and_peft_holds_less(rgb_store):
    """On CPU the memory of a run is what its tensors hold (torch keeps no CPU allocator count
    and the process RSS is mostly torch itself): frozen weights need no gradients and no
    optimiser state, so LoRA and a linear probe hold less than full fine-tuning."""
    mem, trainable = {}, {}
    for method in ("full", "lora", "linear"):
        m, res = _fit(rgb_store, method=method)
        mem[method] = res["tensors_mb"]
        trainable[method] = sum(p.numel() * 4 for p in m.parameters() if p.requires_grad) / 2**20
        params = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
        assert mem[method]["parameters"] >= params  # every weight, frozen ones too (+ buffers)
        assert mem[method]["gradients"] == pytest.approx(trainable[method], rel=1e-6)
        # AdamW: two moments per trainable weight, plus a step counter per tensor
        assert mem[method]["optimizer"] == pytest.approx(2 * trainable[method], rel=0.01)
        assert mem[method]["activations"] > 0
        assert res["memory_kind"].startswith("training tensors")
    assert mem["linear"]["total"] < mem["lora"]["total"] < mem["full"]["total"]


def test_prefetching_the_next_batch_changes_nothing(rgb_store, monkeypatch):
    """The CUDA feeder's prefetch (the next batch gathered and copied while a step runs), made to
    run on CPU: every batch after an epoch's first comes from a prefetch, and the run ends
    bitwise identical (augmentation draws its transforms at its own step)."""
    import functools

    from geopeft.train import loop

    a, ra = _fit(rgb_store)
    feeders = []

    class Ahead(loop._Feeder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "ahead": True})
            feeders.append(self)

    monkeypatch.setattr(loop, "_Feeder", functools.partial(Ahead))
    b, rb = _fit(rgb_store)
    steps_per_epoch = -(-len(load_split(rgb_store, "train")) // 16)
    assert feeders[0].hits == 2 * (steps_per_epoch - 1)
    assert ra["history"] == rb["history"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


def test_channels_last_trains_the_same_model(rgb_store):
    """``train.channels_last``: convolution weights in channels-last format, the same run up to
    rounding."""
    info = store_info(rgb_store)
    runs = []
    for cl in (False, True):
        torch.manual_seed(0)
        m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
        m = apply_strategy(m, "full")
        args = TrainArgs(epochs=1, batch_size=16, seed=0, progress=False, channels_last=cl)
        runs.append((m, fit(m, load_split(rgb_store, "train"), None, args)))
    (m0, r0), (m1, r1) = runs
    conv = m1.backbone.patch_embed.proj.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert r1["history"][0]["train_loss"] == pytest.approx(r0["history"][0]["train_loss"],
                                                           rel=1e-4)
    for (n, p0), p1 in zip(m0.state_dict().items(), m1.state_dict().values(), strict=True):
        assert torch.allclose(p0, p1, atol=1e-4), n


def test_channels_last_runs_the_time_series_models():
    """U-TAE's convolutions run on dates flattened into the batch: with channels-last weights
    the maps and gradients are those of the default format."""
    from geopeft.models.utae import UTAE

    x = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    days = torch.tensor([[1, 40, 80, 120], [5, 50, 90, 130]])
    outs = []
    for cl in (False, True):
        torch.manual_seed(0)
        m = UTAE(3, 5, [0.0] * 3, [1.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8, 16),
                 ltae={"d_model": 16, "heads": 4, "d_k": 4})
        if cl:
            m.to(memory_format=torch.channels_last)
        out = m(x, days)
        out.square().mean().backward()
        conv = next(c for c in m.in_conv.modules() if isinstance(c, torch.nn.Conv2d))
        outs.append((out.detach(), conv.weight.grad))
    for a, b in zip(*outs, strict=True):  # float32 rounding of other kernels, nothing more
        assert float((a - b).abs().max()) < 1e-3 * float(a.abs().max())


@pytest.mark.slow
def test_compile_trains_the_same_model(rgb_store):
    """``train.compile``: the steps run a ``torch.compile`` of the model (inductor, here on
    CPU); the trained weights are those of the eager run up to rounding, and the model saved
    is the one built (no ``_orig_mod`` in its keys)."""
    info = store_info(rgb_store)
    runs = []
    for comp in (False, True):
        torch.manual_seed(0)
        m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
        m = apply_strategy(m, "lora", LoraSpec(r=4, alpha=8, dropout=0.0))
        args = TrainArgs(epochs=1, batch_size=16, seed=0, progress=False, compile=comp,
                         augment=False)
        runs.append((m, fit(m, load_split(rgb_store, "train"), None, args)))
    (m0, r0), (m1, r1) = runs
    assert list(m0.state_dict()) == list(m1.state_dict())
    assert r1["history"][0]["train_loss"] == pytest.approx(r0["history"][0]["train_loss"],
                                                           rel=1e-4)
    for (n, p0), p1 in zip(m0.state_dict().items(), m1.state_dict().values(), strict=True):
        assert torch.allclose(p0, p1, atol=1e-4), n
