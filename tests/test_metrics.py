import numpy as np
import pytest
from sklearn import metrics as skm

from geopeft.metrics.classification import classification_metrics, confusion_matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 6, 500))
    m = classification_metrics(y, p, 6)
    assert m["overall_accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert m["per_class_f1"] == pytest.approx(list(skm.f1_score(y, p, average=None)))
    assert m["per_class_precision"] == pytest.approx(list(skm.precision_score(y, p, average=None)))
    assert m["per_class_recall"] == pytest.approx(list(skm.recall_score(y, p, average=None)))
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(y, p, labels=range(6)))


def test_precision_and_recall_are_not_swapped():
    # class 0: 4 true samples, 2 found; predicted 0 three times, 2 right -> P 2/3, R 1/2
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 1, 1, 0, 1])
    m = classification_metrics(y, p, 2)
    assert m["per_class_precision"][0] == pytest.approx(2 / 3)
    assert m["per_class_recall"][0] == pytest.approx(1 / 2)
    assert m["confusion_matrix"] == [[2, 2], [1, 1]]  # rows true, columns predicted


def test_absent_class_left_out_of_macro_and_bad_labels():
    y = np.array([0, 1, 1])
    p = np.array([0, 1, 0])
    m = classification_metrics(y, p, 3)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
