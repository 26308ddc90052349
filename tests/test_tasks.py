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


#: The modules that serve, score, train, tabulate or draw a task: they ask the task (of the
#: dataset's source, of the saved metrics, of the targets), never name it.
TASK_FREE = ["evaluate/run.py", "evaluate/predict.py", "evaluate/pyfunc.py", "app.py",
             "paper/figures.py", "paper/runs.py", "paper/tables.py", "paper/aggregate.py",
             "paper/document.py", "train/validation.py", "train/losses.py"]
#: Of these, the ones that once told the task from the targets' shape.
SHAPE_FREE = ["train/validation.py", "train/losses.py"]


def task_facts(module: str, text: str) -> list[str]:
    """What ``text`` (the module ``module``) spells that only geopeft.tasks may: a dataset's or a
    task's name, a primary metric's key (``"miou"``, ``"map_macro"``, ``"overall_accuracy"``),
    and in the training modules a target shape (``.ndim``)."""
    code = re.sub(r'""".*?"""|#[^\n]*', "", text, flags=re.S)  # docstrings and comments aside
    # a job spec row's sections (``row.get("segmentation")``: the segmentation model) name no task
    code = re.sub(r"\brow(?:\.get\(|\[)\s*['\"]\w+['\"]", "", code)
    keys = [t.primary_metric for t in TASKS.values()]
    found = [n for n in [*SOURCES, *TASKS, *keys] if re.search(rf"['\"]{n}['\"]", code)]
    found += [n for n in ("bigearthnet", "pastis", "eurosat") if f'"{n}' in code]
    if module in SHAPE_FREE:
        found += re.findall(r"\.ndim\b", code)
    return found


@pytest.mark.parametrize("module", TASK_FREE)
def test_the_code_that_serves_a_task_never_names_a_dataset_a_task_or_its_metric(module):
    found = task_facts(module, (SRC / module).read_text())
    assert not found, (f"{module} spells {found}: ask the task (geopeft.tasks.get(get_source(ds)"
                       f".task), tasks.of_metrics(m), tasks.of_targets(y)) what it declares")


@pytest.mark.parametrize(("module", "before"), [
    ("paper/figures.py", 'if (df["primary_metric"] == "miou").all():'),
    ("paper/tables.py", 'SHORT = {"overall_accuracy": "OA", "map_macro": "mAP"}'),
    ("paper/aggregate.py", '"test_miou": met.get("miou"),'),
    ("paper/document.py", 'segmentation = bool((df["primary_metric"] == "miou").all())'),
    ("train/validation.py", 'return {"val_loss": loss, "val_score": m["map_macro"]}'),
    ("train/losses.py", "if y.ndim == 2 and y.dtype.is_floating_point:"),
    ("app.py", 'if source.task == "segmentation":')])
def test_the_guard_catches_a_task_fact_spelled_outside_the_tasks(module, before):
    """What these modules once spelled (the metric keys, y.ndim) fails the guard."""
    assert task_facts(module, before)


def test_one_rule_picks_a_study_s_figures_for_the_rules_the_figures_and_the_paper():
    """Time-series segmentation studies get the label fraction x sequence length figures, every
    other study the classification ones, decided from the study's datasets alike by the
    workflow (common.smk), make_figures and the paper section."""
    from geopeft.paper.runs import FIGURES, SERIES_FIGURES, figure_names, study_figures

    seg, mc, ml = TASKS["segmentation"], TASKS["multiclass"], TASKS["multilabel"]
    assert study_figures(["pastis"]) == SERIES_FIGURES == figure_names([seg], True)
    assert study_figures(["eurosat_rgb"]) == study_figures(["bigearthnet_s2", "eurosat_ms"]) == FIGURES
    # a segmentation dataset that is no time series has no sequence lengths to draw
    assert figure_names([seg], False) == figure_names([mc, ml], True) == FIGURES
    rules = (SRC.parents[1] / "workflow" / "rules" / "common.smk").read_text()
    assert "FIGURES = study_figures(" in rules  # make_figures: tests/test_paper.py


def test_each_task_declares_its_metrics_columns_loss_and_targets():
    import torch

    from geopeft.paper.aggregate import COLUMNS
    from geopeft.tasks import RUN_COLUMNS, of_targets

    mc, ml, seg = TASKS["multiclass"], TASKS["multilabel"], TASKS["segmentation"]
    assert [t.short for t in TASKS.values()] == ["OA", "mAP", "mIoU"]
    assert RUN_COLUMNS == ("test_overall_accuracy", "test_macro_f1", "test_map_macro",
                           "test_map_micro", "test_f1_micro", "test_miou", "test_mf1")
    assert set(RUN_COLUMNS) < set(COLUMNS)
    assert [c for c, _ in seg.secondary] == ["test_mf1", "test_overall_accuracy"]
    assert [t.loss for t in TASKS.values()] == ["cross_entropy", "bce", "cross_entropy"]
    assert of_targets(np.zeros(4, np.int64)) is mc and of_targets(torch.zeros(4, 3)) is ml
    assert of_targets(np.zeros((4, 3), np.float32)) is ml and of_targets(np.zeros((2, 5, 5))) is seg
    with pytest.raises(ValueError, match="fit no task"):
        of_targets(np.zeros((2, 2, 2, 2)))
    assert mc.val_scores(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]])) == {"val_score": 0.5}
    assert set(seg.val_scores(None, np.array([[3, 1], [0, 4]]))) == {"val_score", "val_oa"}


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
