"""The paper outputs from run folders: runs.csv, the LaTeX table (mean ± sd over seeds) and the
figures, with their provenance."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import full_spec

from geopeft.io import write_json
from geopeft.paper.aggregate import COLUMNS, aggregate
from geopeft.paper.figures import (
    SYNTHETIC_NOTE,
    figure_names,
    make_figures,
    provenance_note,
    study_figures,
)
from geopeft.paper.tables import make_table
from geopeft.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b"]


def _run(root, strategy, method, fraction, seed, acc, trainable):
    name = f"{strategy}-f{fraction:g}-s{seed}"
    model = root / name / "model"
    model.mkdir(parents=True)
    spec = full_spec({"backbone": {"name": "vit"}, "row": {
        "name": name, "strategy": strategy, "method": method, "label_fraction": fraction,
        "seed": seed, "train": {"epochs": 2}}})
    write_json(model / "run.json", {
        "spec": spec, "trainable_params": trainable, "total_params": 100_000, "train_samples": 10,
        "wall_time_s": 2.0 + seed, "images_per_s": 50.0, "peak_memory_mb": 100.0,
        "history": [{"val_score": 0.5}, {"val_score": acc - 0.1}], "device": "cpu",
        "mlflow_run_id": f"id{name}"})
    cm = [[5, 0], [0, 5]]
    write_json(root / name / "metrics.json", {
        "primary_metric": "overall_accuracy", "primary": acc, "overall_accuracy": acc,
        "macro_f1": acc - 0.05, "confusion_matrix": cm, "classes": CLASSES})
    return root / name


@pytest.fixture
def runs(tmp_path):
    folders = [_run(tmp_path / "runs", s, m, f, seed, acc, tr)
               for s, m, tr in (("full", "full", 100_000), ("lora", "lora", 4000))
               for f in (0.1, 1.0) for seed, acc in ((0, 0.8), (1, 0.9))]
    out = tmp_path / "runs.csv"
    aggregate([f / "model" for f in folders], [f / "metrics.json" for f in folders], out)
    return out


def test_aggregate_one_row_per_run_in_study_order(runs):
    rows = list(csv.DictReader(runs.open()))
    assert list(rows[0]) == COLUMNS
    assert [r["run"] for r in rows][:2] == ["full-f0.1-s0", "full-f0.1-s1"]
    lora = rows[4]
    assert (lora["strategy"], lora["method"], lora["trainable_pct"]) == ("lora", "lora", "4.0")
    assert (lora["test_primary"], lora["val_score"], lora["epochs"]) == ("0.8", "0.7000000000000001", "2")
    assert lora["synthetic"] == "True" and lora["rehearsal"] == "False"


def test_aggregate_needs_a_metrics_file_per_model(tmp_path):
    with pytest.raises(ValueError, match="one metrics file per model folder"):
        aggregate([tmp_path / "a"], [], tmp_path / "x.csv")


def test_table_reports_mean_and_sd_over_seeds(runs, tmp_path):
    text = make_table(runs, tmp_path / "t.tex", "demo_study")
    assert (tmp_path / "t.tex").read_text() == text
    assert "mean $\\pm$ sd over 2 seeds (n $<$ 3: a rough spread)" in text
    assert "\\label{tab:demo_study}" in text
    lora = next(line for line in text.splitlines() if line.startswith("lora"))
    # accuracy 0.8 and 0.9 over two seeds: 85.0 ± 7.1 at both fractions; 4000 of 100k trainable
    assert lora.split(" & ")[:5] == ["lora", "4.0\\,k", "4.00", "85.0 $\\pm$ 7.1",
                                     "85.0 $\\pm$ 7.1"]
    assert SYNTHETIC_NOTE.split()[0] in text  # synthetic results say so


def test_figures_are_written_with_their_provenance(runs, tmp_path):
    import pandas as pd

    out = make_figures(runs, tmp_path / "fig", runs.parent / "runs")
    names = {p.stem for p in out}
    # the figures the rules expect of the study (common.smk), no more, no fewer
    assert names == set(study_figures(pd.read_csv(runs)["dataset"]))
    assert names == set(figure_names([TASKS["multiclass"]], False))
    assert all(p.stat().st_size > 1000 for p in out)
    assert provenance_note(pd.read_csv(runs)) == SYNTHETIC_NOTE


def test_resumed_runs_are_counted_and_said(runs, tmp_path):
    import pandas as pd

    assert "resumed" not in make_table(runs, tmp_path / "t.tex", "demo")  # none was resumed
    df = pd.read_csv(runs)
    assert (df["attempts"] == 1).all()  # a run.json without attempts is one attempt
    df.loc[2, "attempts"] = 3
    df.to_csv(tmp_path / "resumed.csv", index=False)
    text = make_table(tmp_path / "resumed.csv", tmp_path / "t2.tex", "demo")
    assert "time summed over every attempt of a run; 1 of 8 runs resumed, at most 3 attempts" in text


def test_every_spread_says_what_it_is_and_over_how_many_seeds():
    import pandas as pd

    from geopeft.paper.figures import seeds_phrase

    df = pd.DataFrame({"dataset": "d", "strategy": ["a"] * 3 + ["b"] * 3,
                       "label_fraction": [0.1, 0.1, 0.1, 1.0, 1.0, 1.0]})
    assert seeds_phrase(df) == "mean ± sd over 3 seeds"
    assert seeds_phrase(df.iloc[:5]) == "mean ± sd over 2-3 seeds"
    assert seeds_phrase(df.iloc[[0, 3]]) == "mean ± sd over 1 seed (n = 1: no spread)"


def test_cost_is_per_strategy_and_label_fraction_never_pooled(runs):
    import pandas as pd

    from geopeft.paper.figures import cost_table

    df = pd.read_csv(runs)
    df.loc[df.label_fraction == 1.0, "wall_time_s"] += 100  # the full-data runs take longer
    cost = cost_table(df)
    assert len(cost) == 4 and (cost["n"] == 2).all()  # 2 strategies x 2 fractions, 2 seeds each
    full = cost.set_index(["strategy", "label_fraction"]).loc["full"]
    # seeds 0 and 1 took 2 and 3 s: the spread is the seeds', not the label fraction's
    assert full.loc[0.1, "time"] == 2.5 and full.loc[1.0, "time"] == 102.5
    assert abs(full.loc[0.1, "time_sd"] - 0.7071) < 1e-3


def test_confusion_is_summed_over_seeds_not_the_best_test_run(runs):
    import pandas as pd

    from geopeft.paper.figures import summed_confusion

    df = pd.read_csv(runs)
    m, n = summed_confusion(df, runs.parent / "runs", "eurosat_rgb", "lora", 1.0)
    assert n == 2  # both seeds, whatever their test scores
    assert m["confusion_matrix"].tolist() == [[10, 0], [0, 10]]


def test_training_curves_show_the_mean_and_range_of_the_largest_fraction_s_seeds(runs, tmp_path,
                                                                                 monkeypatch):
    """The curves figure draws, per strategy, the mean over seeds of each epoch's val score at
    the largest label fraction (runs of 10 % never pooled in) with their range as a band, and
    says what the band is and over how many seeds."""
    import numpy as np
    import pandas as pd

    from geopeft.paper import figures

    df = pd.read_csv(runs)
    assert set(figures.curve_runs(df).label_fraction) == {1.0}
    figs = {}

    def keep(fig, outdir, name, note):
        figs[name] = fig
        return []

    monkeypatch.setattr(figures, "_save", keep)
    figures.make_figures(runs, tmp_path / "fig", runs.parent / "runs")
    fig = figs["curves"]
    score_ax = fig.axes[1]  # 2 rows x 1 dataset: loss, then the val score
    lines = {ln.get_label(): ln for ln in score_ax.get_lines()}
    # each strategy's two seeds: val_score 0.5 then acc - 0.1 (0.7 and 0.8): mean 50 %, 75 %
    assert np.allclose(lines["lora"].get_ydata(), [50, 75])
    assert np.allclose(lines["full"].get_ydata(), [50, 75])
    band = score_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.max(), 80) and np.isclose(band.min(), 50)  # the range over seeds
    title = fig._suptitle.get_text()
    assert "band: range over 2 seeds" in title and "n < 3" in title
    bars = figs["trainable_params"].axes[0]
    assert sorted(p.get_height() for p in bars.patches) == [4000, 100_000]
    assert {t.get_text() for t in bars.texts} == {"4 k\n4 %", "0.1 M\nall"}


def test_the_runs_table_page_has_a_row_per_run_and_says_where_they_come_from(runs, tmp_path):
    import pandas as pd

    from geopeft.paper.tables import write_html_table

    df = pd.read_csv(runs)
    df.loc[0, "run"] = "<script>x</script>"  # any value is escaped
    df.to_csv(tmp_path / "r.csv", index=False)
    write_html_table(tmp_path / "r.csv", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr>") == len(df) and "<script>" not in page
    assert "&lt;script&gt;" in page and SYNTHETIC_NOTE in page and f"{len(df)} runs" in page
    header = page.split("<th>")[1:4]
    assert [h.split("</th>")[0] for h in header] == ["run", "dataset", "strategy"]


def test_the_report_words_each_study_s_task_and_metric():
    from geopeft.config import report_task

    assert report_task([{"dataset": "eurosat_rgb"}]) == ("multiclass", "overall accuracy")
    assert report_task([{"dataset": "pastis"}]) == ("segmentation", "mIoU (void excluded)")
    assert report_task([{"dataset": "bigearthnet_s2"}, {"dataset": "eurosat_ms"}]) == (
        "multiclass+multilabel", "macro mAP (bigearthnet_s2), overall accuracy (eurosat_ms)")


def test_the_paper_without_tex_says_what_to_install(runs, monkeypatch, tmp_path):
    import shutil

    from geopeft.paper import document

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(document.PaperError, match=r"latexmk/pdflatex not found on PATH: install "
                       r"TeX: on Debian/Ubuntu `sudo apt-get install latexmk "
                       r"texlive-latex-recommended texlive-latex-extra`"):
        document.build_paper([runs.parent], tmp_path / "main.pdf")
    assert not (tmp_path / "main.pdf").exists()


def test_a_study_section_is_generated_from_its_results(runs, tmp_path):
    """The section names the study, says its data are synthetic, states its setup from the job
    specs, inputs its table and includes each figure it has with a caption; LaTeX specials in
    names are escaped."""
    from geopeft.paper.document import study_section, tex_escape
    from geopeft.paper.tables import make_table

    results = runs.parent
    make_table(runs, results / "table.tex", results.name)
    make_figures(runs, results / "figures", results / "runs")
    build = tmp_path / "build"
    tex = study_section(results, build)
    assert f"\\section{{{tex_escape(results.name)}}}" in tex
    assert "\\textbf{Synthetic data:}" in tex
    assert "Strategies: full (full; 2 epochs" in tex and "Label fractions: 10, 100\\,\\%" in tex
    assert "seeds: 0, 1 (8 runs on cpu)" in tex
    assert "\\input{../table.tex}" in tex
    assert tex.count("\\begin{figure}") == len(figure_names([TASKS["multiclass"]], False))
    assert "Training curves at the largest label fraction" in tex
    assert "mean $\\pm$ sd over 2 seeds" in tex
    assert tex_escape("a_b & c%") == "a\\_b \\& c\\%"


def test_a_paper_of_a_study_without_results_names_the_missing_file(tmp_path):
    from geopeft.paper.document import PaperError, study_section

    with pytest.raises(PaperError, match=r"nope/runs\.csv: missing; run the study first"):
        study_section(tmp_path / "nope", tmp_path)


def test_confusion_matrices_sum_the_largest_fraction_and_longest_series_only(runs, tmp_path,
                                                                            monkeypatch):
    import pandas as pd

    from geopeft.paper import figures

    seen = {}
    monkeypatch.setattr(figures, "_confusion",
                        lambda plt, df, *a: seen.setdefault("df", df) is None or [])
    figures.make_figures(runs, tmp_path / "fig", runs.parent / "runs")
    assert set(seen["df"].label_fraction) == {1.0}  # the 10 % runs are not summed in
    series = pd.DataFrame({"dataset": ["p"] * 6, "label_fraction": [1.0, 1.0, 1.0, 1.0, 0.5, 0.5],
                           "sequence_length": [3, 3, 1, 1, 3, 3], "run": list("abcdef")})
    assert list(figures.curve_runs(series).run) == ["a", "b"]


def test_the_per_class_report_sums_the_seeds_and_agrees_with_scikit_learn(runs, tmp_path):
    import numpy as np
    from sklearn.metrics import precision_recall_fscore_support

    from geopeft.paper.tables import per_class_report, write_per_class

    root = runs.parent / "runs"
    # seed 1 of lora at 100 %: another confusion matrix, a class never predicted
    m = json.loads((root / "lora-f1-s1" / "metrics.json").read_text())
    m["confusion_matrix"] = [[3, 2], [0, 0]]
    (root / "lora-f1-s1" / "metrics.json").write_text(json.dumps(m))
    rep = per_class_report(runs, root)
    assert set(rep.label_fraction) == {1.0} and set(rep.seeds) == {2}
    lora = rep[rep.strategy == "lora"].set_index("class")
    cm = np.array([[5, 0], [0, 5]]) + np.array([[3, 2], [0, 0]])  # summed over the seeds
    y_true = np.repeat([0, 0, 1, 1], [cm[0, 0], cm[0, 1], cm[1, 0], cm[1, 1]])
    y_pred = np.repeat([0, 1, 0, 1], [cm[0, 0], cm[0, 1], cm[1, 0], cm[1, 1]])
    p, r, f, sup = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    assert np.allclose(lora.precision, p) and np.allclose(lora.recall, r)
    assert np.allclose(lora.f1, f) and list(lora.support) == list(sup) == [10, 5]
    tex = write_per_class(runs, root, tmp_path / "pc.tex", tmp_path / "pc.csv")
    text = (tmp_path / "pc.tex").read_text()
    assert "per-class test F1 (\\%) of each strategy at 100\\,\\% of labels" in text
    assert "summed over 2 seeds" in text and "synthetic data" in text
    assert "class & support & full & lora \\\\" in text
    assert "a & 10 & 100.0 & " in text  # full: F1 1.0 on class a
    assert len(tex) == 4 and (tmp_path / "pc.csv").read_text().startswith("dataset,strategy")


@pytest.mark.parametrize(("task", "metric", "words"), [
    ("multiclass", "overall accuracy", ["validation overall accuracy", "confusion matrices"]),
    ("multilabel", "macro mAP", ["validation macro mAP", "Per-class test average precision"]),
    ("segmentation", "mIoU (void excluded)", ["validation mIoU (void excluded)",
                                              "Pixel confusion matrices", "longest sequence"])])
def test_the_report_captions_fit_the_study_s_task(task, metric, words):
    """Each figure's caption file, rendered as Snakemake renders it (Jinja, with the rule's
    params), speaks of the study's task and metric."""
    from types import SimpleNamespace

    import jinja2

    from geopeft.paper.figures import figure_names

    sm = SimpleNamespace(params=SimpleNamespace(task=task, metric=metric),
                         config={"study": "s", "grid": {}})
    text = " ".join(
        " ".join(jinja2.Template((ROOT / "workflow" / "report" / "figures" / f"{name}.rst")
                                 .read_text()).render(snakemake=sm).split())
        for name in figure_names([TASKS[task]], task == "segmentation"))
    assert all(w in text for w in words), text
    others = {"multiclass": "mIoU", "multilabel": "mIoU", "segmentation": "mAP"}
    assert others[task] not in text
