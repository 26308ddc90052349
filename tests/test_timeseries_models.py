"""L-TAE and U-TAE on their own: shapes, attention, what the temporal encoding sees, and that
every part trains."""

from __future__ import annotations

import pytest
import torch

from geopeft.models.ltae import LTAE2d, aggregate_by_attention, day_encoding
from geopeft.models.utae import UTAE


def test_day_encoding_is_the_transformers():
    days = torch.tensor([0.0, 10.0, 300.0])
    enc = day_encoding(days, 4, period=1000.0)
    expect = torch.stack([torch.sin(days), torch.cos(days), torch.sin(days / 1000 ** 0.5),
                          torch.cos(days / 1000 ** 0.5)], dim=-1)
    assert torch.allclose(enc, expect, atol=1e-6)


def test_ltae_attention_is_a_distribution_over_dates_and_depends_on_days():
    torch.manual_seed(0)
    m = LTAE2d(8, d_model=16, heads=2, d_k=4, out_channels=6, dropout=0.0).eval()
    x = torch.randn(2, 5, 8, 3, 3)
    days = torch.tensor([[0, 30, 60, 90, 120], [0, 10, 20, 200, 300]])
    out, att = m(x, days)
    assert out.shape == (2, 6, 3, 3) and att.shape == (2, 2, 5, 3, 3)
    assert torch.allclose(att.sum(dim=2), torch.ones(2, 2, 3, 3), atol=1e-6)
    _, att2 = m(x, days + 50)
    assert not torch.allclose(att, att2)  # the acquisition days change where it attends
    with pytest.raises(ValueError, match="3 heads must divide"):
        LTAE2d(8, d_model=16, heads=3)


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
    assert silent == [] or all("query" in n for n in silent), silent
    assert set(m.new_modules()) == {n for n, _ in m.named_children()}
    with pytest.raises(ValueError, match="same length"):
        UTAE(3, 5, [0.0] * 3, [1.0] * 3, 1.0, encoder_widths=(8, 16), decoder_widths=(8,))
