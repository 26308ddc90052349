"""L-TAE and U-TAE on their own: the reference structure and parameter counts, attention, what
the temporal encoding sees, masks for padded dates, and that every part trains.

Reference numbers were measured with VSainteuf/utae-paps (``src/backbones/utae.py``,
``UTAE(input_dim=10, out_conv=[32, 19])`` at its defaults; random weights): 1,086,969 parameters
in all; in_conv 43,008, down blocks 139,840 + 139,840 + 287,680, up blocks (deepest first)
246,528 + 74,208 + 57,824, L-TAE 83,200, out_conv 14,841; ``encoder_norm="batch"`` has the same
count. With that network's weights copied into ours (names mapped one to one), both predicted the
same logits (max abs difference 0.0, a batch with two padded dates).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geopeft.models.ltae import LTAE2d, aggregate_by_attention, day_encoding
from geopeft.models.utae import UTAE, pad_mask_of


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_day_encoding_is_the_transformers():
    days = torch.tensor([0.0, 10.0, 300.0])
    enc = day_encoding(days, 4, period=1000.0)
    expect = torch.stack([torch.sin(days), torch.cos(days), torch.sin(days / 1000 ** 0.5),
                          torch.cos(days / 1000 ** 0.5)], dim=-1)
    assert torch.allclose(enc, expect, atol=1e-6)


def test_ltae_attention_is_a_distribution_over_dates_and_depends_on_days():
    torch.manual_seed(0)
    m = LTAE2d(8, d_model=16, heads=2, d_k=4, mlp=[16, 6], dropout=0.0, attn_dropout=0.0).eval()
    x = torch.randn(2, 5, 8, 3, 3)
    days = torch.tensor([[0, 30, 60, 90, 120], [0, 10, 20, 200, 300]])
    out, att = m(x, days)
    assert out.shape == (2, 6, 3, 3) and att.shape == (2, 2, 5, 3, 3)
    assert torch.allclose(att.sum(dim=2), torch.ones(2, 2, 3, 3), atol=1e-6)
    _, att2 = m(x, days + 50)
    assert not torch.allclose(att, att2)  # the acquisition days change where it attends
    # without the positional encoding (PANGAEA's shared L-TAE) the days do not matter
    m.positional_encoding = False
    assert torch.equal(m(x, days)[0], m(x, days + 50)[0])
    with pytest.raises(ValueError, match="3 heads must divide"):
        LTAE2d(8, d_model=16, heads=3)
    with pytest.raises(ValueError, match="first width 8 must be d_model 16"):
        LTAE2d(8, d_model=16, heads=2, mlp=[8, 8])


def test_ltae_is_the_reference_structure():
    """U-TAE's L-TAE (128 channels in, d_model 256, 16 heads, d_k 4, MLP 256 -> 128): values
    from the d_model projection, 83,200 parameters as the reference."""
    m = LTAE2d(128, d_model=256, heads=16, d_k=4, mlp=[256, 128])
    assert _n(m) == 83_200
    assert isinstance(m.in_proj, nn.Conv1d) and m.in_proj.out_channels == 256
    assert m.query.shape == (16, 4) and m.key.in_features == 256
    assert [type(x) for x in m.mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert m.mlp[0].in_features == 256 and m.drop.p == 0.2 and m.attn_drop.p == 0.1
    assert m.out_norm.num_groups == 16 and m.in_norm.num_groups == 16


def test_padded_dates_get_no_weight_and_their_days_do_not_matter():
    torch.manual_seed(0)
    m = LTAE2d(8, d_model=16, heads=2, d_k=4, mlp=[16, 8]).eval()
    x = torch.randn(2, 5, 8, 3, 3)
    x[1, 3:] = 0
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    days = torch.tensor([[0, 30, 60, 90, 120], [5, 40, 70, 0, 0]])
    with torch.no_grad():
        out, att = m(x, days, pad_mask=pad)
    assert float(att[:, 1, 3:].abs().max()) == 0.0
    assert torch.allclose(att[:, 1, :3].sum(dim=1), torch.ones(2, 3, 3), atol=1e-6)
    moved = days.clone()
    moved[1, 3:] = 200
    assert torch.equal(m(x, moved, pad_mask=pad)[0], out)
    assert not torch.equal(m(x, moved)[0], out)  # without the mask they would count


def test_aggregate_by_attention_weights_channel_groups_by_their_head():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2)
    att = torch.zeros(2, 2, 3, 2, 2)
    att[0, :, 0] = 1  # head 0 (channels 0-1) takes date 0
    att[1, :, 2] = 1  # head 1 (channels 2-3) takes date 2
    out = aggregate_by_attention(x, att)
    assert torch.equal(out[:, :2], x[:, 0, :2]) and torch.equal(out[:, 2:], x[:, 2, 2:])
    # attention at a coarser level is upsampled to the map's size
    up = aggregate_by_attention(x, att[..., :1, :1])
    assert torch.equal(up, out)
    # a padded date's weight is zeroed
    pad = torch.tensor([[False, False, True], [False, False, False]])
    masked = aggregate_by_attention(x, att, pad)
    assert float(masked[0, 2:].abs().max()) == 0.0 and torch.equal(masked[1], out[1])


def test_utae_is_the_reference_network():
    m = UTAE(10, 19, [0.0] * 10, [1.0] * 10, 1.0)
    assert _n(m) == 1_086_969
    parts = {k: _n(v) for k, v in m.named_children()}
    assert parts == {"in_conv": 43_008, "down": 567_360, "temporal": 83_200, "up": 378_560,
                     "out_conv": 14_841}
    assert [_n(b) for b in m.down] == [139_840, 139_840, 287_680]
    assert [_n(b) for b in reversed(m.up)] == [246_528, 74_208, 57_824]
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size != (1, 1)]
    assert all(c.padding_mode == "reflect" for c in convs)
    # encoder: GroupNorm(4) after every conv, the strided one included; a residual conv
    enc_norms = [x for x in [*m.in_conv.modules(), *m.down.modules()]
                 if isinstance(x, (nn.GroupNorm, nn.BatchNorm2d))]
    assert enc_norms and all(isinstance(x, nn.GroupNorm) and x.num_groups == 4 for x in enc_norms)
    d0 = m.down[0]
    assert d0.strided[0].kernel_size == (4, 4) and d0.strided[0].stride == (2, 2)
    assert [type(x) for x in d0.strided] == [nn.Conv2d, nn.GroupNorm, nn.ReLU]
    # decoder: batch norm; ConvTranspose + norm + ReLU, 1x1 skip conv + norm + ReLU
    u = m.up[0]
    assert [type(x) for x in u.upconv] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(x) for x in u.skip_conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert m.temporal.positional_encoding and m.temporal.d_model == 256
    assert m.temporal.period == 1000.0
    # the batch-norm encoder is the reference's other option, same count
    assert _n(UTAE(10, 19, [0.0] * 10, [1.0] * 10, 1.0, encoder_norm="batch")) == 1_086_969


def test_utae_maps_series_to_class_maps_and_every_part_trains():
    torch.manual_seed(0)
    m = UTAE(3, 5, [0.0] * 3, [1.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8, 16),
             ltae={"d_model": 16, "heads": 4, "d_k": 4})
    x = torch.randn(2, 4, 3, 8, 8)
    days = torch.tensor([[1, 40, 80, 120], [5, 50, 90, 130]])
    out = m(x, days)
    assert out.shape == (2, 5, 8, 8)
    out.square().mean().backward()
    silent = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert silent == [], silent
    assert set(m.new_modules()) == {n for n, _ in m.named_children()}
    with pytest.raises(ValueError, match="same length"):
        UTAE(3, 5, [0.0] * 3, [1.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8,))
    with pytest.raises(ValueError, match="must be equal"):
        UTAE(3, 5, [0.0] * 3, [1.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8, 32))


def test_utae_skips_and_masks_padded_dates():
    """Padded dates (all zero, day 0) are not encoded (the encoder sees only real frames, so they
    cannot move batch statistics), get no attention, and their days do not matter."""
    torch.manual_seed(0)
    m = UTAE(3, 5, [100.0] * 3, [50.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8, 16),
             ltae={"d_model": 16, "heads": 4, "d_k": 4}).eval()
    x = torch.randint(1, 300, (2, 5, 3, 8, 8)).float()
    x[1, 3:] = 0
    days = torch.tensor([[1, 40, 80, 120, 160], [5, 50, 90, 0, 0]])
    assert pad_mask_of(x).tolist() == [[False] * 5, [False, False, False, True, True]]
    seen = []
    hook = m.in_conv.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    out = m(x, days)
    hook.remove()
    assert seen == [8]  # 10 frames, 2 of them padded
    moved = days.clone()
    moved[1, 3:] = 300
    assert torch.equal(m(x, moved), out)
