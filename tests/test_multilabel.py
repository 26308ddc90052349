import numpy as np
import pytest
from sklearn import metrics as skm

from geopeft.metrics.multilabel import average_precision, multilabel_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 7)) < 0.3).astype(int)
    y[:, 6] = 0  # a class that never occurs
    s = np.clip(y * 0.4 + rng.random((300, 7)) * 0.7, 0, 1)
    s[:50, 0] = 0.5  # ties
    m = multilabel_metrics(y, s)
    present = y.sum(0) > 0
    ref_ap = skm.average_precision_score(y[:, present], s[:, present], average=None)
    assert np.allclose([a for a in m["per_class_ap"] if a is not None], ref_ap)
    assert m["per_class_ap"][6] is None
    assert m["map_macro"] == pytest.approx(ref_ap.mean())
    assert m["map_micro"] == pytest.approx(skm.average_precision_score(y, s, average="micro"))
    pred = (s >= 0.5).astype(int)
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    used = np.flatnonzero(present | (pred.sum(0) > 0))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=used,
                                                       zero_division=0))
    assert m["per_class_f1"] == pytest.approx(list(skm.f1_score(y, pred, average=None, zero_division=0)))


def test_perfect_and_worst_ranking():
    y = np.array([1, 1, 0, 0])
    assert average_precision(y, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert average_precision(y, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert np.isnan(average_precision(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="differ in shape"):
        multilabel_metrics(np.zeros((2, 3)), np.zeros((2, 4)))
