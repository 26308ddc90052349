"""Segmentation metrics (void excluded), time-series models, decoder-only freezing."""

import numpy as np
import pytest
import torch
from conftest import job_spec

from geopeft.data.dataset import StoreInfo
from geopeft.data.subsets import class_presence, label_fraction_subset
from geopeft.metrics.segmentation import pixel_confusion, segmentation_metrics
from geopeft.models.segmentation import build_segmenter
from geopeft.spec import LoraSpec
from geopeft.strategies import apply_strategy

PASTIS_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def test_miou_excludes_void_hand_computed():
    y = np.array([[0, 0, 1], [1, 2, 19]])
    p = np.array([[0, 1, 1], [1, 0, 2]])  # the void pixel is "predicted" 2: must not count
    cm = pixel_confusion(y, p, 3, ignore=19)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = segmentation_metrics(cm)
    # IoU: class 0 = 1/(2+2-1), class 1 = 2/(2+3-2), class 2 = 0/(1+0-0)
    assert m["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["overall_accuracy"] == pytest.approx(3 / 5)
    # precision = TP / predicted, recall = TP / true: class 1 is predicted 3 times, 2 right
    assert m["per_class_precision"][1] == pytest.approx(2 / 3)
    assert m["per_class_recall"][1] == pytest.approx(1.0)
    # counting void as a class would give another mIoU
    wrong = segmentation_metrics(pixel_confusion(np.where(y == 19, 3, y), p, 4))
    assert wrong["miou"] != pytest.approx(m["miou"])


def test_matches_scikit_learn():
    from sklearn.metrics import confusion_matrix, jaccard_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, (6, 16, 16))
    p = np.where(rng.random(y.shape) < 0.6, np.minimum(y, 18), rng.integers(0, 19, y.shape))
    cm = pixel_confusion(y, p, 19, ignore=19)
    keep = y.ravel() != 19
    yt, yp = y.ravel()[keep], p.ravel()[keep]
    assert np.array_equal(cm, confusion_matrix(yt, yp, labels=range(19)))
    m = segmentation_metrics(cm)
    assert m["per_class_iou"] == pytest.approx(jaccard_score(yt, yp, labels=range(19), average=None))
    assert m["miou"] == pytest.approx(jaccard_score(yt, yp, labels=range(19), average="macro"))
    prec, rec, f1, _ = precision_recall_fscore_support(yt, yp, labels=range(19), zero_division=0)
    assert m["per_class_precision"] == pytest.approx(prec)
    assert m["per_class_recall"] == pytest.approx(rec)
    assert m["mf1"] == pytest.approx(f1.mean())


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"true labels outside 0..18 .*\[25\]"):
        pixel_confusion(np.array([25, 1]), np.array([1, 1]), 19, ignore=19)


def test_label_subsets_on_patches_stratified_nested_seeded():
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 3, (200, 8, 8))
    maps[:20, 0, 0] = 7   # a rare class in 20 patches
    maps[:5, 1, 1] = 19   # void is ignored
    presence, counts = class_presence(maps, 19, ignore=19)
    assert presence.shape == (200, 19) and counts[:, 7].sum() == 20 and presence[:, 7].sum() == 20
    subs = {f: set(label_fraction_subset(presence, f, seed=3)) for f in (0.01, 0.1, 0.5, 1.0)}
    assert subs[0.01] <= subs[0.1] <= subs[0.5] <= subs[1.0] and len(subs[1.0]) == 200
    rare = set(range(20))
    assert len(subs[0.1] & rare) == 2  # the rare-class stratum keeps its 10 %
    assert len(subs[0.01] & rare) == 1  # ... and at least one patch at 1 %
    assert subs[0.1] == set(label_fraction_subset(presence, 0.1, seed=3))
    assert subs[0.1] != set(label_fraction_subset(presence, 0.1, seed=4))
    with pytest.raises(ValueError, match=r"outside 0..18: \[25\]"):
        class_presence(np.full((1, 2, 2), 25), 19, ignore=19)


def _info(size=32, bands=PASTIS_BANDS):
    return StoreInfo("store", "pastis", [str(i) for i in range(20)], list(bands), 1e-4,
                     [1200.0] * len(bands), [600.0] * len(bands), "fp", (size, size), 19)


SMALL_VIT = {"name": "embedded", "weights": "none", "kwargs": {"img_size": 32, "patch_size": 8}}
SMALL_SEG = {"channels": 16, "ltae": {"d_model": 16, "heads": 4}}
SMALL_UTAE = {"model": "utae", "encoder_widths": [8, 16], "decoder_widths": [8, 16],
              "ltae": {"d_model": 16, "heads": 4}}


def _batch(b, t, size=32, bands=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4000, (b, t, bands, size, size), generator=g).to(torch.int16)
    days = torch.sort(torch.rand(b, t, generator=g) * 365, dim=1).values
    return x, days


@pytest.mark.parametrize("seg", [SMALL_SEG, SMALL_UTAE], ids=["upernet_ltae", "utae"])
@pytest.mark.parametrize("t", [1, 3, 6])
def test_forward_shapes_for_several_lengths(seg, t):
    torch.manual_seed(0)
    model, info = build_segmenter(SMALL_VIT, _info(), 19, seg)
    x, days = _batch(2, t)
    out = model.eval()(x, days)
    assert out.shape == (2, 19, 32, 32) and torch.isfinite(out).all()


def test_days_reach_the_output_only_with_the_positional_encoding():
    """PANGAEA's shared L-TAE has no positional encoding: the same frames on other dates predict
    the same; with ``positional_encoding: true`` the day encoding reaches the output."""
    torch.manual_seed(0)
    x, days = _batch(1, 4)
    model, _ = build_segmenter(SMALL_VIT, _info(), 19, SMALL_SEG)
    model.eval()
    assert torch.equal(model(x, days), model(x, days + 90))
    seg = dict(SMALL_SEG, ltae={"d_model": 16, "heads": 4, "positional_encoding": True})
    model, _ = build_segmenter(SMALL_VIT, _info(), 19, seg)
    model.eval()
    assert not torch.allclose(model(x, days), model(x, days + 90))


@pytest.mark.parametrize("seg", [SMALL_SEG, SMALL_UTAE], ids=["upernet_ltae", "utae"])
def test_padded_dates_are_masked(seg):
    """A series padded with empty dates (``temporal.pad: mask``): what the padded dates' days are
    does not change the prediction, and a padded series predicts as its real dates would if the
    padding did not exist, up to the L-TAE input norm's statistics (checked: it changes)."""
    torch.manual_seed(0)
    seg = dict(seg, ltae=dict(seg["ltae"], positional_encoding=True))
    model, _ = build_segmenter(SMALL_VIT, _info(), 19, seg)
    model.eval()
    x, days = _batch(2, 5)
    x[1, 3:] = 0
    days[1, 3:] = 0
    with torch.no_grad():
        out = model(x, days)
        moved = days.clone()
        moved[1, 3:] = 500
        assert torch.equal(model(x, moved), out)
        unmasked = x.clone()
        unmasked[1, 3:] = 1  # no longer padding: the dates count
        assert not torch.allclose(model(unmasked, moved)[1], out[1])


def test_decoder_is_pangaeas_seg_upernet_mt_ltae():
    """Parameter counts of the decoder on SSL4EO-S12 ViT-S/16 (taps 3, 5, 7, 11), measured with
    PANGAEA-bench's ``SegMTUPerNet`` (channels 512, ``multi_temporal_strategy: ltae``, an encoder
    of output_dim [384] x 4, 19 classes): 31,220,243 in all: neck (ours: pyramid) 1,771,392,
    shared L-TAE 322,688, UPerNet 29,126,163 (psp 792,576, bottleneck 11,208,192, lateral 594,432,
    fpn 7,082,496, fpn_bottleneck 9,438,720, conv_seg 9,747). Also for width 768 (CROMA base): 40,588,691.
    With PANGAEA's weights copied in (names mapped), both decoders gave the same logits (max abs
    difference 0.0)."""
    model, _ = build_segmenter({"name": "ssl4eo_s12_vits16_dino", "weights": "none",
                                "kwargs": {"img_size": 128}}, _info(128), 19, {})
    n = {k: sum(p.numel() for p in v.parameters()) for k, v in model.named_children()}
    assert model.indices == [3, 5, 7, 11]
    assert {k: v for k, v in n.items() if k != "encoder"} == {
        "ltae": 322_688, "pyramid": 1_771_392, "upernet": 29_126_163}
    up = model.upernet
    assert sum(p.numel() for p in up.ppm.parameters()) == 792_576
    assert sum(p.numel() for p in up.bottleneck.parameters()) == 11_208_192
    assert sum(p.numel() for p in up.fuse.parameters()) == 9_438_720
    assert up.cls.in_channels == 512 and isinstance(up.fuse[1], torch.nn.BatchNorm2d)
    tae = model.ltae.tae
    assert (tae.heads, tae.d_k, tae.d_model, tae.positional_encoding) == (16, 4, 384, False)
    assert model.new_modules() == ["ltae", "pyramid", "upernet"]


def test_chunking_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    big, _ = build_segmenter(SMALL_VIT, _info(), 19, dict(SMALL_SEG, encoder_chunk=64))
    small, _ = build_segmenter(SMALL_VIT, _info(), 19, dict(SMALL_SEG, encoder_chunk=3))
    small.load_state_dict(big.state_dict())
    x, days = _batch(2, 5)
    grads = []
    for m in (big, small):
        m.eval()  # no dropout; chunk of 3 frames + checkpointing vs one pass
        out = m(x, days)
        out.square().mean().backward()
        grads.append(m.encoder.patch_embed.proj.weight.grad.clone())
    assert torch.allclose(big(x, days), small(x, days), atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_decoder_only_freezes_the_encoder():
    torch.manual_seed(0)
    model, _ = build_segmenter(SMALL_VIT, _info(), 19, SMALL_SEG)
    model = apply_strategy(model, "linear")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in ("ltae", "pyramid", "upernet") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, days = _batch(2, 3)
    model.train()
    model(x, days).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    opt.step()
    assert all(torch.equal(before[n], p) for n, p in model.encoder.named_parameters())
    assert model.upernet.cls.weight.grad is not None


def test_lora_adapts_the_encoder_and_trains_the_decoder():
    torch.manual_seed(0)
    model, _ = build_segmenter(SMALL_VIT, _info(), 19, SMALL_SEG)
    model = apply_strategy(model, "lora", LoraSpec(r=4, alpha=8), ["q", "k", "v"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert any(".upernet." in n for n in trainable) and any(".ltae." in n for n in trainable)
    enc = [n for n in trainable if ".encoder." in n]
    assert enc and all("lora_" in n for n in enc)


def test_utae_trains_everything_and_rejects_odd_sizes():
    from geopeft.config import ConfigError

    model, info = build_segmenter(None, _info(), 19, SMALL_UTAE)
    assert info["weights"] == "none"
    model = apply_strategy(model, "scratch")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match=r"divisible by 4; store has 30"):
        build_segmenter(None, _info(size=30), 19, dict(SMALL_UTAE, encoder_widths=[8, 8, 16],
                                                       decoder_widths=[8, 8, 16]))


def test_ssl4eo_weights_zero_fill_missing_bands(monkeypatch):
    """PASTIS lacks B01, B09, B10 of the 13 SSL4EO-S12 bands: dropping their patch-embedding
    channels equals feeding zeros (DN/10000 normalisation has mean 0)."""
    from geopeft.models.backbones import create_model
    from geopeft.models.weights import Normalization, Weights
    from geopeft.models.zoo import SSL4EO_S2_BANDS

    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
    full = create_model({"name": "vit_small_patch16_224", "kwargs": kwargs}, 13, 0)
    state = {k: v for k, v in full.state_dict().items()}
    weights = Weights(state, list(SSL4EO_S2_BANDS), Normalization(list(SSL4EO_S2_BANDS),
                                                                  [0.0] * 13, [1.0] * 13), "test")
    import geopeft.models.segmentation as seg_mod

    monkeypatch.setattr(seg_mod, "load_weights", lambda spec, pretrain_dir=None: weights)
    model, info = build_segmenter({"name": "vit_small_patch16_224", "weights": "pretrain",
                                   "kwargs": kwargs}, _info(), 19, SMALL_SEG)
    assert info["norm_mean"] == [0.0] * 10 and info["norm_std"] == [1.0] * 10
    x, _ = _batch(1, 1)
    z10 = x[:, 0].float() * 1e-4
    z13 = torch.zeros(1, 13, 32, 32)
    for i, b in enumerate(PASTIS_BANDS):
        z13[:, SSL4EO_S2_BANDS.index(b)] = z10[:, i]
    full.eval()
    model.eval()
    ref = full.forward_intermediates(z13, indices=[1], intermediates_only=True)[0]
    got = model.encoder.forward_intermediates(z10, indices=[1],
                                              intermediates_only=True)[0]
    assert torch.allclose(ref, got, atol=1e-5)


def test_augment_moves_images_and_label_maps_together():
    from geopeft.train.loop import augment

    x = torch.arange(2 * 3 * 1 * 4 * 4).view(2, 3, 1, 4, 4)
    y = x[:, 0, 0].clone()  # the label map equals the first date's band
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        ax, ay = augment(x, g, y)
        assert torch.equal(ax[:, 0, 0], ay) and torch.equal(ax[:, 1] - ax[:, 0], x[:, 1] - x[:, 0])


def test_loss_ignores_void_and_weights_rare_classes():
    from geopeft.train.losses import class_weights, loss_fn

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y2 = y.clone()
    y[0, 0, 0], y2[0, 0, 0] = 19, 19
    y2[1, 1, 1] = 19
    base = loss_fn(logits, y, ignore_index=19)
    assert torch.isfinite(base)
    manual = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[y != 19], y[y != 19])
    assert torch.allclose(base, manual)
    assert float(loss_fn(logits, torch.full_like(y, 19), ignore_index=19)) == 0.0
    w = class_weights(np.array([[0, 0, 0, 1], [19, 19, 0, 1]]), 3, ignore_index=19)
    assert w[2] == 0 and w[1] == pytest.approx(2 * w[0]) and w[:2].mean() == pytest.approx(1.0)


def test_zoo_encoders_as_temporal_segmenters():
    """SSL4EO-S12 ViT-S/16 (PASTIS-sized, 8x8 tokens) and a Swin-V2 (its four stages as the
    pyramid) both build and segment a short series at full resolution."""
    torch.manual_seed(0)
    vit, info = build_segmenter({"name": "ssl4eo_s12_vits16_dino", "weights": "none",
                                 "kwargs": {"img_size": 128}}, _info(128), 19, SMALL_SEG)
    assert vit.indices == [3, 5, 7, 11] and vit.encoder.embed_dim == 384  # PANGAEA's taps
    x, days = _batch(1, 2, size=128)
    with torch.no_grad():
        assert vit.eval()(x, days).shape == (1, 19, 128, 128)
    swin_kwargs = {"img_size": 64, "window_size": 4, "embed_dim": 16, "depths": (1, 1, 1, 1),
                   "num_heads": (1, 1, 1, 2)}
    swin, _ = build_segmenter({"name": "swinv2_tiny_window8_256", "weights": "none",
                               "kwargs": swin_kwargs}, _info(64), 19,
                              dict(SMALL_SEG, ltae={"d_model": 16, "heads": 2}))
    # a Swin's stages are a pyramid already; their widths differ: a channel adaptor first
    assert swin.new_modules() == ["adaptor", "ltae", "pyramid", "upernet"]
    x, days = _batch(1, 2, size=64)
    with torch.no_grad():
        assert swin.eval()(x, days).shape == (1, 19, 64, 64)
    model = apply_strategy(swin, "lora", LoraSpec(r=2, alpha=4), ["q", "k", "v"])
    assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("seg,method", [(SMALL_UTAE, "scratch"), (SMALL_SEG, "linear")],
                         ids=["utae", "decoder_only"])
def test_checkpoint_keeps_batch_norm_statistics(seg, method):
    """Batch-norm running statistics change in training and drive inference: a saved model must
    predict exactly as the trained one (U-TAE convs; the L-TAE's MLP in the decoder)."""
    from geopeft.models.saved import saved_names, trainable_state

    torch.manual_seed(0)
    spec = {"row": {"method": method, "segmentation": seg}, "backbone": SMALL_VIT}
    from geopeft.models.build import build_model

    model, minfo = build_model(job_spec(spec), _info())
    x, days = _batch(2, 3)
    model.train()
    for _ in range(3):
        model(x, days)  # updates the running statistics
    state = trainable_state(model, minfo["weights"])
    assert any(k.endswith("running_mean") for k in state)
    assert set(state) == saved_names(model, minfo["weights"])
    torch.manual_seed(1)
    fresh, _ = build_model(job_spec(spec), _info())
    fresh.load_state_dict(state, strict=False)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, days), fresh(x, days), atol=1e-5)
