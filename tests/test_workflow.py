"""The Snakemake workflow end to end on the tiny CI study, in a temporary directory."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geopeft import config as study_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / ".test" / "config.yaml"
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, config: Path = TINY) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    r = snakemake(wd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return wd


def test_outputs(done):
    res = done / "results" / "ci_tiny"
    csv = (res / "runs.csv").read_text().splitlines()
    assert len(csv) == 1 + 4
    assert csv[0].startswith("run,strategy,method,label_fraction,seed,lr,lr_sweep,selected,"
                             "trainable_params")
    for name in ("accuracy_vs_params", "accuracy_vs_fraction", "cost", "confusion"):
        for ext in ("pdf", "png"):
            assert (res / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert "\\toprule" in (res / "table.tex").read_text() and "synthetic" in (res / "table.tex").read_text()
    assert (res / "runs" / "lora-f0.5-s0" / "model" / "adapter" / "adapter_config.json").is_file()
    # every rule wrote a log
    assert len(list((res / "logs").rglob("*.log"))) >= 1 + 1 + 4 + 4 + 3
    # the weights follow the umask as every other result does (safetensors writes them 0600)
    weights = list(res.rglob("*.safetensors"))
    assert len(weights) >= 1 + 4 + 2  # the pretrained encoder, each run's tensors, 2 adapters
    umask = os.umask(0)
    os.umask(umask)
    assert {w.stat().st_mode & 0o777 for w in weights} == {0o666 & ~umask}


def test_mlflow_runs_in_study_experiment_not_default(done):
    db = sqlite3.connect(done / "results" / "mlflow.db")
    rows = db.execute("select e.name, r.name, r.status from runs r join experiments e "
                      "on r.experiment_id = e.experiment_id").fetchall()
    # the study's runs in its experiment; the pretraining run kept apart, in its own
    assert sorted(r[:2] for r in rows) == sorted(
        [("ci_tiny (pretraining)", "pretrain")] + [("ci_tiny", n) for n in (
            "lora-f0.5-s0", "lora-f1-s0", "linear-f0.5-s0", "linear-f1-s0")])
    assert {r[2] for r in rows} == {"FINISHED"}
    # the experiment's description: the summary, then the study's protocol card (protocol.json)
    (note,) = db.execute("select t.value from experiment_tags t join experiments e on "
                         "t.experiment_id = e.experiment_id where e.name = 'ci_tiny' and "
                         "t.key = 'mlflow.note.content'").fetchone()
    card = json.loads((done / "results" / "ci_tiny" / "protocol.json").read_text())
    assert note.index("| lora | 50 % |") < note.index("### Protocol")
    assert f"| learning rate and its selection | {dict(card['card'])['lr']} |" in note


def test_a_run_rebuilds_from_its_mlflow_artifacts_alone(done, tmp_path):
    """A LoRA run on the study's pretrained encoder: its MLflow 'model' artifacts and the
    pretrain run's 'backbone' artifacts (weights logged by the pretrain job) rebuild the model,
    with no file of results/ read; it predicts as the model in results/ does. (Before the test
    that deletes the MLflow store.)"""
    import json
    import os

    import numpy as np

    from geopeft.data.dataset import load_split
    from geopeft.models.inference import predict
    from geopeft.models.saved import load_model
    from geopeft.tracking import download_model

    res = done / "results" / "ci_tiny"
    run = next(p for p in sorted((res / "runs").glob("lora-*")) if (p / "model").is_dir())
    rec = json.loads((run / "model" / "run.json").read_text())
    assert rec["spec"]["backbone"]["weights"] == "pretrain" and rec["pretrain_run_id"]
    exp = json.loads((res / "mlflow_experiment.json").read_text())
    cwd = os.getcwd()
    os.chdir(done)  # the study's tracking URI is relative to its working directory
    try:
        model_dir, pretrain_dir = download_model(exp["tracking_uri"], rec["mlflow_run_id"],
                                                 tmp_path / "dl")
    finally:
        os.chdir(cwd)
    assert model_dir.is_relative_to(tmp_path) and pretrain_dir.is_relative_to(tmp_path)
    assert {p.name for p in pretrain_dir.iterdir()} >= {"backbone.safetensors", "backbone.json"}
    rebuilt = load_model(model_dir, pretrain_dir=pretrain_dir)
    original = load_model(run / "model")
    x = load_split(done / rec["store"]["path"], "test").x[:16]  # (a relative path: from done)
    assert np.array_equal(predict(rebuilt, x), predict(original, x))


def test_rerun_does_nothing(done):
    r = snakemake(done, "-n")
    assert r.returncode == 0
    assert "Nothing to be done" in r.stdout + r.stderr


def test_a_lost_model_is_trained_again(done):
    """Issue 37, item 10: Snakemake deletes a job's output before it starts, so a killed
    `--forcerun` left runs/<row>/model missing while every later output stood, and a plain rerun
    said "Nothing to be done". Each run's model is a target of the study now: the rerun trains
    that run again (and, its model newer, evaluates it and aggregates); nothing else."""
    import shutil

    model = done / "results" / "ci_tiny" / "runs" / "linear-f1-s0" / "model"
    aside = model.with_name("model.aside")
    shutil.move(model, aside)  # the state a killed --forcerun leaves
    try:
        r = snakemake(done, "-n")
        assert r.returncode == 0, r.stderr[-3000:]
        counts = job_counts(r.stdout)
        assert counts.get("train") == 1 and "pretrain" not in counts and "prepare" not in counts
        assert re.search(r"^    output: results/ci_tiny/runs/linear-f1-s0/model$", r.stdout, re.M)
    finally:
        shutil.move(aside, model)
    r = snakemake(done, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


def test_editing_one_row_reruns_only_that_run_and_aggregates(done, tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["grid"] = {"strategy": []}
    cfg["runs"] = [{"strategy": s, "label_fraction": f, "seed": 0}
                   for s in ("lora", "linear") for f in (0.5, 1.0)]
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(cfg))
    r = snakemake(done, "-n", config=same)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    cfg["runs"][0]["lr"] = 0.001  # the lora-f0.5-s0 row
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    r = snakemake(done, "-n", config=edited)
    assert r.returncode == 0, r.stderr[-3000:]
    # the protocol card's learning rates change too (lora: 0.001 / 0.003), so it is rewritten
    assert job_counts(r.stdout) == {"train": 1, "evaluate": 1, "protocol": 1, "aggregate": 1,
                                    "figures": 1, "table": 1, "all": 1}
    assert set(re.findall(r"run=([\w.-]+)", r.stdout)) == {"lora-f0.5-s0"}


def test_a_lost_mlflow_store_is_created_again_at_the_next_run(done, tmp_path):
    """The DB deleted: mlflow_init's output describes a store that is gone; the next run creates
    the store and the experiment again before any job logs, logs the runs whose folders exist
    again, and reruns nothing trained (the jobs take the experiment file as ancient)."""
    import json
    import shutil

    (done / "results" / "mlflow.db").unlink()
    r = snakemake(done, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr  # a dry run changes nothing
    assert not (done / "results" / "mlflow.db").exists()
    model = "results/ci_tiny/runs/linear-f0.5-s0/model"
    shutil.rmtree(done / model)
    r = snakemake(done, model)  # the next job that logs (one row retrained, asked by name)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mlflow.db is gone; creating the store and the experiment again" in r.stdout + r.stderr
    assert "logged 4 run(s) again from their folders" in r.stdout + r.stderr
    assert job_counts(r.stdout + r.stderr) == {"train": 1}
    db = sqlite3.connect(done / "results" / "mlflow.db")
    rows = db.execute("select e.name, r.name, r.status from runs r join experiments e "
                      "on r.experiment_id = e.experiment_id").fetchall()
    # the run trained again, and the pretraining run and the other runs logged again from their
    # folders (issue 37, item 2: the pretraining run was lost)
    assert sorted(rows) == sorted(
        [("ci_tiny (pretraining)", "pretrain", "FINISHED")] + [("ci_tiny", n, "FINISHED") for n in (
            "lora-f0.5-s0", "lora-f1-s0", "linear-f0.5-s0", "linear-f1-s0")])
    # the run trained again names the pretraining run its backbone.json records: found (in a
    # process of its own, as a user's: MLflow keeps one store per URI for its process, and this
    # one read the store that was deleted)
    rec = json.loads((done / model / "run.json").read_text())
    code = ("import sys; from geopeft.tracking import download_model; "
            "print(download_model('sqlite:///results/mlflow.db', sys.argv[1], sys.argv[2])[1])")
    r = subprocess.run([sys.executable, "-c", code, rec["mlflow_run_id"], str(tmp_path / "dl")],
                       cwd=done, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    pretrain_dir = Path(r.stdout.strip().splitlines()[-1])
    assert (pretrain_dir / "backbone.safetensors").is_file()
    # the whole study: nothing else reruns for the rewritten experiment file (ancient)
    r = snakemake(done, "-n")
    assert job_counts(r.stdout).keys() <= {"evaluate", "aggregate", "figures", "table", "all"}


HOLD = """
import sys, time
from pathlib import Path
from geopeft.train.resume import lock_run
lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_a_failed_attempt_keeps_its_log_and_a_second_trainer_is_refused(done):
    """Snakemake empties a job's log before each attempt: the train log still shows every
    attempt, here one refused because another trainer holds the run."""
    model = "results/ci_tiny/runs/linear-f1-s0/model"
    run = done / "results" / "ci_tiny" / "runs" / "linear-f1-s0"
    import shutil

    shutil.rmtree(run / "model")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / "state")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = snakemake(done, "--retries", "0", model)
        assert r.returncode != 0 and "Error in rule train" in r.stdout + r.stderr, r.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "model").exists()
    r = snakemake(done, model)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (done / "results" / "ci_tiny" / "logs" / "train" / "linear-f1-s0.log").read_text()
    headers = re.findall(r"^=== \S+ \S+: geopeft train linear-f1-s0$", text, re.M)
    assert len(headers) == 3, text[-3000:]  # the first run, the refused attempt, this one
    refused = text.split(headers[1])[1].split(headers[2])[0]
    assert f"another trainer (pid {holder.pid}) is training this run" in refused
    assert "val score" in text.split(headers[2])[1]


def test_bad_config_clear_error(done, tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"]["bands"] = ["B04", "B3"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake(done, "-n", config=bad)
    assert r.returncode != 0
    assert "data.bands: 'B3' is not in eurosat_rgb (it holds B04, B03, B02)" in r.stdout + r.stderr


def test_multilabel_study_end_to_end(done):
    """The embedded BigEarthNet world through pretrain, LoRA/linear, evaluation and paper outputs
    (in the CI study's folder: the paper test builds a paper of both)."""
    import csv

    tmp_path = done
    cfg = ROOT / "config" / ".test" / "bigearthnet.yaml"
    r = snakemake(tmp_path, config=cfg)
    assert r.returncode == 0, r.stderr[-5000:]
    res = tmp_path / "results" / "ci_bigearthnet"
    rows = list(csv.DictReader((res / "runs.csv").open()))
    assert len(rows) == 4 and {x["primary_metric"] for x in rows} == {"map_macro"}
    assert all(0 < float(x["test_map_macro"]) <= 1 and x["test_overall_accuracy"] == "" for x in rows)
    assert "macro mAP" in (res / "table.tex").read_text()
    header = (res / "runs" / "lora-f1-s0" / "confusion.csv").read_text().splitlines()[0]
    assert header == "class,tp,fp,fn,tn"
    db = sqlite3.connect(tmp_path / "results" / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"test_map_macro", "test_f1_micro", "val_score", "val_map_micro"} <= keys


def test_the_methods_study_through_the_workflow(done, tmp_path):
    """Issue 34: every method of the embedded methods study (config/studies/
    peft_methods_embedded.yaml, its strategies as written) through the whole workflow on the CI
    study's world (its data shared, nothing of it redone): trained, saved, loaded again by the
    evaluate job and by `Predictor` (the adapter merged too), aggregated; two methods sweep
    their rate (the others run at their first rate, to keep CI short) and the rate reported is
    the one chosen on validation; the cost ledger has a row per method; MLflow's adapter words."""
    import csv
    import json

    import numpy as np

    from geopeft.evaluate.predict import Predictor
    from geopeft.paper.selection import chosen_rates

    twin = yaml.safe_load((ROOT / "config" / "studies" / "peft_methods_embedded.yaml").read_text())
    cfg = yaml.safe_load(TINY.read_text())
    cfg["study"] = "ci_methods"
    cfg["strategies"] = twin["strategies"]
    for key, s in cfg["strategies"].items():
        if key not in ("full", "lora"):
            s["lr"] = s.pop("lr_sweep")[0]
    methods = twin["grid"]["strategy"]
    assert len(methods) == 15
    cfg["grid"] = {"strategy": methods, "label_fraction": [1.0], "seed": [0]}
    study = tmp_path / "methods.yaml"
    study.write_text(yaml.safe_dump(cfg))
    r = snakemake(done, config=study)
    assert r.returncode == 0, r.stderr[-5000:]
    counts = job_counts(r.stdout + r.stderr)
    assert counts["train"] == 17 and counts["evaluate"] == 17
    assert "prepare" not in counts and "synthesize" not in counts  # the CI study's data
    res = done / "results" / "ci_methods"
    rows = list(csv.DictReader((res / "runs.csv").open()))
    assert len(rows) == 17 and all(0 <= float(x["test_overall_accuracy"]) <= 1 for x in rows)
    # the sweeps: the rate reported is the best mean validation score's, whatever the test says
    typed = [{**x, "label_fraction": float(x["label_fraction"]), "sequence_length": None,
              "lr": float(x["lr"]), "val_score": float(x["val_score"]),
              "lr_sweep": [float(v) for v in x["lr_sweep"].split()]} for x in rows]
    chosen = chosen_rates(typed)
    for key in ("full", "lora"):
        swept = [x for x in typed if x["strategy"] == key]
        best = max(swept, key=lambda x: x["val_score"])
        assert chosen[("eurosat_rgb", key, 1.0, None)] == best["lr"]
        assert [x["selected"] for x in rows if x["strategy"] == key] == [
            str(x is best) for x in swept]
    assert "learning rates tried" in (res / "table.tex").read_text()
    ledger = list(csv.DictReader((res / "ledger.csv").open()))
    assert [x["strategy"] for x in ledger] == methods
    trainable = {x["strategy"]: int(x["trainable_params"]) for x in ledger}
    assert trainable["full"] > trainable["bitfit"] > trainable["linear"]
    # each method trains its own parameters; the CI ViT has one block, where VPT deep is shallow
    assert trainable["vpt_deep"] == trainable["vpt_shallow"]
    assert len(set(trainable.values())) == 14
    assert {x["sweep_runs"] for x in ledger if x["strategy"] in ("full", "lora")} == {"2"}
    # each saved run, loaded alone, predicts what its evaluate job scored (the test confusion)
    (raw,) = done.glob("data/raw/*/eurosat_rgb")
    (split,) = raw.rglob("eurosat-test.txt")
    files = {p.name: p for p in raw.rglob("*.jpg")}
    test = [files[n] for n in split.read_text().split()]
    for x in rows:
        run = res / "runs" / x["run"]
        metrics = json.loads((run / "metrics.json").read_text())
        truth = [metrics["classes"].index(f.parent.name) for f in test]
        for merge in (False, True) if x["method"] == "lora" else (False,):
            pred = Predictor(run / "model", merge=merge).predict_files(test)
            cm = np.zeros((len(metrics["classes"]),) * 2, int)
            for t, p in zip(truth, pred, strict=True):
                cm[t, metrics["classes"].index(p.labels[0])] += 1
            assert cm.tolist() == metrics["confusion_matrix"], (x["run"], merge)
    # the MLflow model serves the new methods too: rebuilt from the run's artifacts alone, it
    # predicts as the saved model
    from geopeft.data.dataset import load_split
    from geopeft.models.inference import predict
    from geopeft.models.saved import load_model
    from geopeft.tracking import download_model

    # the store by its absolute path: MLflow caches a store per URI string in this process, and
    # the relative one an earlier test opened points at the store that test deleted
    uri = f"sqlite:///{done / 'results' / 'mlflow.db'}"
    for key in ("vpt_deep", "adaptformer", "houlsby", "bitfit", "ia3", "oft"):
        run = res / "runs" / f"{key}-f1-s0"
        rec = json.loads((run / "model" / "run.json").read_text())
        model_dir, pretrain_dir = download_model(uri, rec["mlflow_run_id"], tmp_path / "dl" / key)
        x = load_split(done / rec["store"]["path"], "test").x[:16]
        assert np.array_equal(predict(load_model(model_dir, pretrain_dir=pretrain_dir), x),
                              predict(load_model(run / "model"), x)), key
    db = sqlite3.connect(done / "results" / "mlflow.db")
    adapters = {v for (v,) in db.execute("select p.value from params p join runs r on "
                                         "p.run_uuid = r.run_uuid where p.key = 'adapter' and "
                                         "r.name like '%-f1-s0'")}
    assert {"vpt deep, 4 tokens", "vpt shallow, 4 tokens",
            "adaptformer bottleneck 8, scale 0.1"} <= adapters
    assert any(a.startswith("ia3 on k,v,mlp.fc2") for a in adapters), adapters


def test_fusion_study_over_two_datasets(tmp_path):
    """Fusion-LoRA through the workflow: multi-label BigEarthNet and EuroSAT-MS in one study."""
    import csv

    r = snakemake(tmp_path, config=ROOT / "config" / ".test" / "fusion.yaml")
    assert r.returncode == 0, r.stderr[-5000:]
    res = tmp_path / "results" / "ci_fusion"
    rows = {x["run"]: x for x in csv.DictReader((res / "runs.csv").open())}
    assert list(rows) == ["bigearthnet_s2-rgb_lora-f1-s0", "bigearthnet_s2-fusion_lora-f1-s0",
                          "eurosat_ms-rgb_lora-f1-s0", "eurosat_ms-fusion_lora-f1-s0"]
    assert {x["dataset"]: x["primary_metric"] for x in rows.values()} == {
        "bigearthnet_s2": "map_macro", "eurosat_ms": "overall_accuracy"}
    for ds in ("bigearthnet_s2", "eurosat_ms"):
        assert (int(rows[f"{ds}-fusion_lora-f1-s0"]["trainable_params"])
                > int(rows[f"{ds}-rgb_lora-f1-s0"]["trainable_params"]))
    table = (res / "table.tex").read_text()
    assert "bigearthnet\\_s2} (macro mAP)" in table and "eurosat\\_ms} (overall accuracy)" in table
    assert (res / "figures" / "accuracy_vs_params.pdf").stat().st_size > 1000
    run = res / "runs" / "eurosat_ms-fusion_lora-f1-s0" / "model"
    assert (run / "adapter" / "adapter_config.json").is_file()
    rec = __import__("json").loads((run / "run.json").read_text())
    assert rec["model"]["fusion"]["glf"] and rec["spec"]["data"]["dataset"] == "eurosat_ms"
    pre = __import__("json").loads((res / "pretrain" / "backbone.json").read_text())
    assert pre["bands"] == ["B04", "B03", "B02"]  # the encoder was pretrained on RGB


def test_time_series_segmentation_study(done):
    """PASTIS-layout world -> temporal subsets + label subsets -> UPerNet+L-TAE (decoder-only,
    LoRA) and U-TAE -> whole-patch mIoU without void -> label fraction x length figures (in the
    CI study's folder: the paper test builds a paper of it)."""
    import csv
    import json

    tmp_path = done
    r = snakemake(tmp_path, config=ROOT / "config" / ".test" / "pastis.yaml")
    assert r.returncode == 0, r.stderr[-5000:]
    res = tmp_path / "results" / "ci_pastis"
    rows = {x["run"]: x for x in csv.DictReader((res / "runs.csv").open())}
    assert list(rows) == ["decoder_only-f0.5-t3-s0", "decoder_only-f0.5-t1-s0",
                          "decoder_only-f1-t3-s0", "decoder_only-f1-t1-s0", "utae-f1-t3-s0",
                          "lora-f1-t3-s0"]
    assert {x["primary_metric"] for x in rows.values()} == {"miou"}
    assert {x["sequence_length"] for x in rows.values()} == {"3", "1"}
    assert rows["utae-f1-t3-s0"]["model"] == "utae"
    assert int(rows["decoder_only-f0.5-t3-s0"]["train_samples"]) < int(
        rows["decoder_only-f1-t3-s0"]["train_samples"])
    m = json.loads((res / "runs" / "utae-f1-t3-s0" / "metrics.json").read_text())
    assert m["void_class"] == 19 and len(m["classes"]) == 19 and "Void label" not in m["classes"]
    assert len(m["per_class_iou"]) == 19 and 0 <= m["miou"] <= 1
    assert m["test_samples"] == 8  # fold 5 of 40 patches, whole patches
    rec = json.loads((res / "runs" / "utae-f1-t3-s0" / "model" / "run.json").read_text())
    assert rec["spec"]["backbone"] is None and rec["spec"]["row"]["temporal"]["ladder"] == [3, 1]
    assert (res / "runs" / "lora-f1-t3-s0" / "model" / "adapter" / "adapter_config.json").is_file()
    for name in ("miou_vs_fraction", "fraction_length_heatmap", "cost", "confusion"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 1000
    table = (res / "table.tex").read_text()
    assert "mIoU 50\\,\\%" in table and "decoder\\_only, T=3" in table and "synthetic" in table
    data = study_config.data_layout(study_config.resolve([str(ROOT / "config" / ".test" /
                                                             "pastis.yaml")], {}))
    sub = json.loads(next((tmp_path / data.prepared("pastis")).glob(
        "*.subsets/stratified-f0.5-s0.json")).read_text())
    assert len(sub["class_counts"]) == 19  # pixels per real class, void not counted
    db = sqlite3.connect(tmp_path / "results" / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"test_miou", "val_score", "val_oa", "test_iou_Fruits_ vegetables_ flowers"} <= keys



def _tex_or_skip():
    import shutil

    if shutil.which("latexmk") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have TeX for the paper (.ci/run installs it)")
        pytest.skip("no TeX (latexmk) on this machine")


def test_snakemake_paper_builds_a_section_per_study(done):
    """`snakemake paper` with paper.studies naming three CI studies (classification,
    multi-label, segmentation) in one folder: paper/main.pdf, a section per study with its
    setup, table and figures, each said to be synthetic; the PDF's text checked."""
    _tex_or_skip()
    studies = {"ci_tiny": TINY, "ci_bigearthnet": ROOT / "config" / ".test" / "bigearthnet.yaml",
               "ci_pastis": ROOT / "config" / ".test" / "pastis.yaml"}
    for name, cfg in studies.items():  # nothing to do: the tests above ran them, each study
        r = snakemake(done, config=cfg)  # with its own data folder
        assert r.returncode == 0, (name, r.stderr[-3000:])
    missing = snakemake(done, "paper", "--config", "paper={studies: [ci_tiny, nope]}")
    assert missing.returncode != 0
    assert "results/nope/runs.csv is missing; run that study first" in missing.stdout + missing.stderr
    r = snakemake(done, "paper", "--config", f"paper={{studies: [{', '.join(studies)}]}}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pdf = done / "paper" / "main.pdf"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    # (pdflatex draws \_ as a rule, which pdftotext reads as a space)
    flat = re.sub(r"\s+", " ", text)
    pages = int(re.search(r"Pages:\s+(\d+)", subprocess.run(
        ["pdfinfo", str(pdf)], capture_output=True, text=True).stdout).group(1))
    assert pages >= 3
    for i, name in enumerate(s.replace("_", " ") for s in studies):
        assert f"{i + 1} {name}" in flat, name  # the section heading
        assert re.search(rf"Table \d+: {name}: test", flat), name
        assert re.search(rf"Figure \d+: {name}: Training curves", flat), name
        assert re.search(rf"Figure \d+: {name}: Trainable parameters", flat), name
    assert flat.count("Synthetic data: these results come from") == 3
    assert "test overall accuracy" in flat and "macro mAP" in flat and "mIoU (void excluded)" in flat
    assert "Strategies: lora (lora r 4 alpha 8 dropout 0 on q,k,v;" in flat  # from the specs
    for score in ("F1", "AP", "IoU"):  # each study's per-class report
        assert re.search(rf"Table \d+: \S+ ?\S*: per-class test {score} \(%\)", flat), score
    assert "sequence lengths: 1, 3" in flat
