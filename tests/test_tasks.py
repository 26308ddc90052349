"""The task registry (geopeft.tasks): every dataset's task is an object, and the code that
evaluates, predicts, serves and writes the paper asks it, never the dataset's name."""

import re
from pathlib import Path

import numpy as np
import pytest

from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.tasks import TASKS, get

SRC = Path(__file__).resolve().parents[1] / "src" / "geopeft"


def test_every_source_names_a_registered_task():
    assert {s.task for s in SOURCES.values()} == set(TASKS) == {
        "multiclass", "multilabel", "segmentation"}
    with pytest.raises(ValueError, match=r"task 'regression' is not one of"):
        get("regression")


@pytest.mark.parametrize("module", ["evaluate/run.py", "evaluate/predict.py", "evaluate/pyfunc.py",
                                    "app.py", "paper/tables.py", "paper/document.py"])
def test_the_code_that_serves_a_task_never_names_a_dataset_or_a_task(module):
    text = (SRC / module).read_text()
    code = re.sub(r'""".*?"""|#[^\n]*', "", text, flags=re.S)  # docstrings and comments aside
    names = [n for n in [*SOURCES, *TASKS] if re.search(rf"['\"]{n}['\"]", code)]
    names += [n for n in ("bigearthnet", "pastis", "eurosat") if f'"{n}' in code]
    assert not names, f"{module} names {names}: ask the dataset's source for its task"


def test_each_task_scores_and_words_its_outputs():
    mc, ml, seg = TASKS["multiclass"], TASKS["multilabel"], TASKS["segmentation"]
    scores, label_map = mc.scores(np.array([0.0, 2.0, 1.0]))
    assert label_map is None and scores.sum() == pytest.approx(1) and scores.argmax() == 1
    ranked = [("a", 0.7), ("b", 0.5), ("c", 0.2)]
    assert mc.labels(ranked) == ["a"] and ml.labels(ranked) == ["a", "b"]
    assert seg.labels([("a", 0.75), ("b", 0.25), ("c", 0.0)]) == ["a", "b"]
    share, label_map = seg.scores(np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[0.5, 0.5]]]))
    assert share.tolist() == [0.5, 0.5, 0.0] and label_map.tolist() == [[0, 1]]
    assert [t.metric_words for t in TASKS.values()] == [
        "overall accuracy", "macro mAP", "mIoU (void excluded)"]
    assert [t.csv_header("top3") for t in TASKS.values()] == [
        ["file", "prediction", "probability", "top3"], ["file", "labels", "top3"],
        ["file", "classes", "map"]]
    y = np.array([0, 1, 1])
    m, table, flat = mc.test_metrics(y, np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), ["a", "b"])
    assert m["primary"] == m["overall_accuracy"] == pytest.approx(2 / 3)
    assert table == "true\\pred,a,b\na,1,0\nb,1,1\n" and flat["test_f1_a"] == pytest.approx(2 / 3)
    cm = np.array([[3, 1], [0, 4]])
    m, table, flat = seg.test_metrics(None, cm, ["a", "b"])
    assert m["primary_metric"] == "miou" and m["primary"] == pytest.approx((0.75 + 0.8) / 2)
