"""Learning-rate sweeps (``strategies.<key>.lr_sweep``): one row per rate, the rate chosen on
validation only, the paper's tables and the MLflow summary report the chosen rate, and the
cost ledger counts what choosing cost."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import yaml
from conftest import full_spec

from geopeft import config as gcfg
from geopeft.io import write_json
from geopeft.paper.aggregate import aggregate, summary_markdown
from geopeft.paper.runs import read_runs
from geopeft.paper.selection import chosen_rates, selected
from geopeft.paper.tables import make_table
from geopeft.spec import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    with open(ROOT / "config" / "config.yaml") as fh:
        c = yaml.safe_load(fh)
    c["strategies"]["lora"].pop("lr")
    c["strategies"]["lora"]["lr_sweep"] = [0.0003, 0.003]
    return c


def test_a_swept_strategy_runs_once_per_rate_and_says_so(cfg):
    rows = gcfg.study_rows(gcfg.validate(cfg))
    lora = [r for r in rows if r["strategy"] == "lora"]
    # 2 fractions x 2 seeds x 2 rates; the others once per fraction and seed
    assert len(lora) == 8 and len(rows) == 16
    assert [r["name"] for r in lora[:4]] == ["lora-lr0.0003-f0.1-s0", "lora-lr0.003-f0.1-s0",
                                              "lora-lr0.0003-f0.1-s1", "lora-lr0.003-f0.1-s1"]
    assert {r["train"]["lr"] for r in lora} == {0.0003, 0.003}
    assert all(r["lr_sweep"] == [0.0003, 0.003] for r in lora)
    full = next(r for r in rows if r["strategy"] == "full")
    assert full["name"] == "full-f0.1-s0" and "lr_sweep" not in full  # unswept rows unchanged


def test_a_row_that_sets_its_own_rate_runs_at_that_rate_only(cfg):
    cfg["runs"] = [{"strategy": "lora", "lr": 0.01, "name": "lora-hot"},
                   {"strategy": "lora", "name": "lora-both", "seed": 3}]
    rows = {r["name"]: r for r in gcfg.study_rows(gcfg.validate(cfg))}
    assert rows["lora-hot"]["train"]["lr"] == 0.01 and "lr_sweep" not in rows["lora-hot"]
    assert {n for n in rows if n.startswith("lora-both")} == {"lora-both-lr0.0003",
                                                              "lora-both-lr0.003"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.update(lr=0.001), r"strategies\.lora: lr 0\.001 and lr_sweep \[0\.0003, 0\.003\]"),
    (lambda s: s.update(lr_sweep=[0.001]), r"strategies\.lora\.lr_sweep: \[0\.001\] is too short"),
    (lambda s: s.update(lr_sweep=[0.001, 0.001]), r"strategies\.lora\.lr_sweep: .*non-unique"),
    (lambda s: s.update(lr_sweep=[0.001, 0]), r"strategies\.lora\.lr_sweep\[1\]: 0 is less than"),
])
def test_a_sweep_that_cannot_choose_is_refused_by_name(cfg, edit, message):
    edit(cfg["strategies"]["lora"])
    with pytest.raises(ConfigError, match=message):
        gcfg.validate(cfg)


def _row(lr, seed, val, test, fraction=1.0, strategy="lora", sweep=(0.001, 0.01)):
    return {"dataset": "d", "strategy": strategy, "label_fraction": fraction,
            "sequence_length": None, "seed": seed, "lr": lr, "lr_sweep": list(sweep),
            "val_score": val, "test_primary": test}


def test_the_rate_is_chosen_by_mean_validation_score_never_by_test():
    # 0.01 wins on test and on one seed's validation; 0.001 has the better mean validation score
    rows = [_row(0.001, 0, 0.80, 0.50), _row(0.01, 0, 0.85, 0.95),
            _row(0.001, 1, 0.80, 0.50), _row(0.01, 1, 0.70, 0.95),
            _row(0.001, 0, 0.1, 0.9, fraction=0.1), _row(0.01, 0, 0.2, 0.1, fraction=0.1),
            {**_row(0.5, 0, 0.0, 0.0, strategy="full"), "lr_sweep": []}]
    assert chosen_rates(rows) == {("d", "lora", 1.0, None): 0.001, ("d", "lora", 0.1, None): 0.01}
    assert selected(rows) == [True, False, True, False, False, True, True]


def test_ties_go_to_the_rate_listed_first_and_a_run_without_a_score_cannot_win():
    tie = [_row(0.01, 0, 0.8, 0, sweep=(0.01, 0.001)), _row(0.001, 0, 0.8, 1, sweep=(0.01, 0.001))]
    assert selected(tie) == [True, False]
    missing = [_row(0.001, 0, None, 0), _row(0.01, 0, 0.1, 0)]
    assert selected(missing) == [False, True]


def _run(root, lr, seed, val, test, wall, sweep=(0.001, 0.01), strategy="lora"):
    name = f"{strategy}-lr{lr:g}-f1-s{seed}" if sweep else f"{strategy}-f1-s{seed}"
    model = root / name / "model"
    model.mkdir(parents=True)
    spec = full_spec({"backbone": {"name": "vit"}, "row": {
        "name": name, "strategy": strategy, "method": strategy, "seed": seed,
        "train": {"epochs": 2, "lr": lr}, **({"lr_sweep": list(sweep)} if sweep else {})}})
    write_json(model / "run.json", {
        "spec": spec, "trainable_params": 4000, "total_params": 100_000, "train_samples": 10,
        "wall_time_s": wall, "train_time_s": wall / 2, "steps": 10, "images_per_s": 50.0,
        "peak_memory_mb": 100.0, "history": [{"val_score": 0.1}, {"val_score": val}],
        "device": "cpu", "mlflow_run_id": f"id{name}"})
    write_json(root / name / "metrics.json", {
        "primary_metric": "overall_accuracy", "primary": test, "overall_accuracy": test,
        "macro_f1": test, "confusion_matrix": [[5, 0], [0, 5]], "classes": ["a", "b"]})
    return root / name


@pytest.fixture
def swept(tmp_path):
    runs = tmp_path / "runs"
    folders = [_run(runs, 0.001, 0, 0.80, 0.60, 360), _run(runs, 0.01, 0, 0.70, 0.99, 720),
               _run(runs, 0.001, 1, 0.90, 0.70, 360), _run(runs, 0.01, 1, 0.75, 0.99, 720),
               _run(runs, 0.1, 0, 0.5, 0.5, 3600, sweep=(), strategy="full")]
    out = tmp_path / "runs.csv"
    rows = aggregate([f / "model" for f in folders], [f / "metrics.json" for f in folders], out)
    return out, rows


def test_runs_csv_keeps_every_run_and_marks_the_chosen_rate(swept):
    out, _ = swept
    rows = list(csv.DictReader(out.open()))
    assert [(r["run"], r["lr"], r["selected"]) for r in rows] == [
        ("lora-lr0.001-f1-s0", "0.001", "True"), ("lora-lr0.01-f1-s0", "0.01", "False"),
        ("lora-lr0.001-f1-s1", "0.001", "True"), ("lora-lr0.01-f1-s1", "0.01", "False"),
        ("full-f1-s0", "0.1", "True")]
    assert rows[0]["lr_sweep"] == "0.001 0.01" and rows[4]["lr_sweep"] == ""
    assert float(rows[0]["step_time_s"]) == 18.0 and float(rows[0]["device_hours"]) == 0.1
    assert list(read_runs(out)["run"]) == ["lora-lr0.001-f1-s0", "lora-lr0.001-f1-s1",
                                           "full-f1-s0"]
    assert len(read_runs(out, every=True)) == 5


def test_the_tables_report_the_chosen_rate_and_the_ledger_counts_the_sweep(swept, tmp_path):
    out, rows = swept
    text = make_table(out, tmp_path / "t.tex", "demo", tmp_path / "ledger.csv")
    lora = next(line for line in text.splitlines() if line.startswith("lora &"))
    # the chosen rate's test scores (60, 70), not the better test scores of the other rate (99)
    assert lora.split(" & ")[3] == "65.0 $\\pm$ 7.1"
    sweep_line = next(line for line in text.splitlines() if "\\textbf{0.001: 85.0}" in line)
    assert sweep_line.endswith("\\textbf{0.001: 85.0}; 0.01: 72.5 \\\\")
    assert "The test split chose nothing" in text
    ledger = list(csv.DictReader((tmp_path / "ledger.csv").open()))
    assert [(r["strategy"], r["runs"], r["sweep_runs"]) for r in ledger] == [
        ("lora", "2", "4"), ("full", "1", "1")]
    # reported: 2 x 360 s; with the sweep: + 2 x 720 s; step time 180 s / 10 steps
    assert float(ledger[0]["device_hours"]) == pytest.approx(0.2)
    assert float(ledger[0]["sweep_device_hours"]) == pytest.approx(0.6)
    assert float(ledger[0]["step_time_ms"]) == pytest.approx(18000)
    assert "lora & 4.0\\,k & 18000.0 & 100 & 2 & 0.2 & 4 & 0.6 \\\\" in text
    summary = summary_markdown(rows)  # the MLflow experiment's description
    assert "| lora | 100 % | overall accuracy 65.0 ± 7.1 | 2 |" in summary.replace("d | ", "", 1)


def test_a_study_without_a_sweep_has_no_sweep_table_and_keeps_every_run(tmp_path):
    runs = tmp_path / "runs"
    folders = [_run(runs, 0.1, s, 0.5, 0.5, 60, sweep=(), strategy="full") for s in (0, 1)]
    out = tmp_path / "runs.csv"
    aggregate([f / "model" for f in folders], [f / "metrics.json" for f in folders], out)
    text = make_table(out, tmp_path / "t.tex", "demo")
    assert "sweep" not in text and "Runs, sweep" not in text
    assert "cost ledger" in text and len(read_runs(out)) == 2
    # a runs.csv written before sweeps existed (no selected column) reports every run
    legacy = tmp_path / "legacy.csv"
    with out.open() as src, legacy.open("w") as dst:
        r = list(csv.reader(src))
        keep = [i for i, c in enumerate(r[0]) if c not in ("selected", "lr_sweep", "lr",
                                                          "step_time_s", "device_hours")]
        csv.writer(dst).writerows([[row[i] for i in keep] for row in r])
    assert len(read_runs(legacy)) == 2
    assert "cost ledger" in make_table(legacy, tmp_path / "t2.tex", "demo")


def test_shipped_sweep_free_studies_keep_their_run_names():
    c = gcfg.load(ROOT / "config" / "config.yaml")
    assert [r["name"] for r in gcfg.study_rows(copy.deepcopy(c))][:2] == ["full-f0.1-s0",
                                                                          "full-f0.1-s1"]


def test_a_cell_without_validation_scores_chooses_nothing_and_says_which():
    rows = [_row(0.001, 0, float("nan"), 0.9), _row(0.01, 0, None, 0.1)]
    with pytest.raises(ValueError, match=r"'strategy': 'lora', 'label_fraction': 1.0.*no rate has "
                                         r"a validation score for every seed"):
        selected(rows)


def test_the_sweep_table_counts_seeds_per_length_and_marks_a_rate_missing_a_score(tmp_path):
    import pandas as pd

    from geopeft.paper.tables import sweep_table

    rows = [{"dataset": "pastis", "strategy": "lora", "label_fraction": 1.0, "sequence_length": t,
             "seed": s, "lr": lr, "lr_sweep": "0.001 0.01", "selected": True,
             "val_score": None if (lr, s, t) == (0.01, 1, 6) else 0.5 + lr}
            for t in (6, 1) for s in (0, 1) for lr in (0.001, 0.01)]
    text = sweep_table(pd.DataFrame(rows), "demo")
    assert "mean over 2 seeds" in text  # 2 lengths x 2 seeds: each cell has 2, not 4
    lines = [ln for ln in text.splitlines() if ln.startswith("pastis")]
    assert lines[0].endswith("& 6 & \\textbf{0.001: 50.1}; 0.01: -- \\\\")
    assert lines[1].endswith("& 1 & 0.001: 50.1; \\textbf{0.01: 51.0} \\\\")
