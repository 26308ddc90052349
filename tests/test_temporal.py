import numpy as np
import pytest

from geopeft.data.temporal import (
    LADDER,
    ShortSeriesError,
    days_since,
    evenly_spaced,
    temporal_indices,
)


@pytest.mark.parametrize("n", [35, 38, 47, 61])
def test_nested_and_in_date_order(n):
    sel = {t: temporal_indices(n, t, LADDER) for t in LADDER}
    for t, idx in sel.items():
        assert len(idx) == t and len(set(idx.tolist())) == t
        assert (np.diff(idx) > 0).all()  # strictly increasing: date order, no repeat
        assert idx.min() >= 0 and idx.max() < n
    for longer, shorter in zip(LADDER, LADDER[1:], strict=False):
        assert set(sel[shorter]) <= set(sel[longer]), (longer, shorter)


def test_evenly_spaced_and_single_date_is_the_median():
    assert evenly_spaced(15, 6).tolist() == [0, 3, 6, 8, 11, 14]
    assert evenly_spaced(6, 1).tolist() == [2]
    # T=1 is the median date of the T=6 selection (of the 15 (of the 25 (of the 35)))
    six = temporal_indices(50, 6)
    assert temporal_indices(50, 1).tolist() == [six[2]]
    # the longest length spans the season: first and last date kept
    full = temporal_indices(50, 35)
    assert full[0] == 0 and full[-1] == 49


def test_ladder_of_the_study_keeps_other_lengths_nested():
    ladder = [30, 10, 4]
    a, b, c = (set(temporal_indices(44, t, ladder)) for t in ladder)
    assert c <= b <= a


def test_short_series_masked_by_default():
    """As the reference implementations: every date once, then padding positions (PAD) at the
    end, which the loader fills with empty dates."""
    from geopeft.data.temporal import PAD

    idx = temporal_indices(20, 35)
    assert idx[:20].tolist() == list(range(20)) and (idx[20:] == PAD).all() and len(idx) == 35
    assert temporal_indices(40, 6).tolist() == temporal_indices(40, 6, pad="repeat").tolist()


def test_short_series_repeat_or_error():
    idx = temporal_indices(20, 35, pad="repeat")
    assert len(idx) == 35 and set(idx.tolist()) == set(range(20))  # every date, repeated
    assert (np.diff(idx) >= 0).all()
    with pytest.raises(ShortSeriesError, match=r"patch 7: 20 dates, shorter than the sequence length 35"):
        temporal_indices(20, 35, pad="error", where="patch 7")
    with pytest.raises(ValueError, match="pad rule"):
        temporal_indices(40, 6, pad="crop")


def test_days_since_reference():
    d = days_since(np.array([[20180901, 20180902, 20190101, 0]]))
    assert d.tolist() == [[0.0, 1.0, 122.0, 0.0]]
