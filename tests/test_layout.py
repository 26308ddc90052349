"""geopeft.layout names every file and folder of results/ and data/ once: no other module of
src/geopeft spells them, and the rules' outputs and logs are the layout's paths."""

from __future__ import annotations

import ast
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

from geopeft import config as study_config
from geopeft import layout
from geopeft.io import canonical_json
from geopeft.layout import (
    FIGURE_FORMATS,
    PAPER_PDF,
    DataLayout,
    FixtureLayout,
    ModelLayout,
    PretrainLayout,
    StudyLayout,
    TrackingLayout,
    subset_name,
)
from geopeft.paper.runs import study_figures

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "geopeft"
TINY = ROOT / "config" / ".test" / "config.yaml"

#: File names: spelled nowhere else, not even inside a longer string (a message, a glob).
FILES = [layout.RUN_RECORD, layout.TRAINABLE, layout.PRETRAIN_RECORD, layout.PRETRAIN_WEIGHTS,
         layout.METRICS, layout.CONFUSION, layout.RUNS_CSV, layout.RUNS_HTML, layout.TABLE,
         layout.PER_CLASS_TEX, layout.PER_CLASS_CSV, layout.EXPERIMENT, layout.MLFLOW_DB,
         layout.MLARTIFACTS, layout.FIXTURES, PAPER_PDF, "manifest.json", "server.json"]
FILE_RE = re.compile("|".join(rf"(?<![\w.-]){re.escape(f)}(?![\w-])" for f in FILES))
#: Folder names: common words, so caught only as path segments (``x / "runs"``, ``"runs/..."``;
#: the fixture folder's, also the fixture server's URL paths, only the first way).
FOLDERS = {layout.RUNS, layout.PRETRAIN, layout.MODEL, layout.STATE, layout.ADAPTER,
           layout.FIGURES, layout.LOGS, layout.RAW, layout.PREPARED, layout.DOWNLOADS,
           layout.REHEARSAL_DATA, layout.PAPER_BUILD}
FIXTURE_FOLDERS = {"files", "torch"}
_FOLDERS_RE = "|".join(map(re.escape, sorted(FOLDERS)))
SEGMENT_RE = re.compile(rf"(^|/)({_FOLDERS_RE})/|/({_FOLDERS_RE})$")
#: MLflow artifact paths, caught as arguments of the calls that log or download them.
ARTIFACTS = {layout.MODEL_ARTIFACT, layout.PRETRAIN_ARTIFACT}
ARTIFACT_CALLS = {"log_artifact", "log_artifacts", "download_artifacts", "log_model"}


def _docstrings(tree: ast.AST) -> set[int]:
    """Strings standing alone as statements: docstrings of modules, classes, functions and
    attributes."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def spelled_names(source: str) -> list[tuple[int, str]]:
    """(line, string) of every layout name a module spells outside its docstrings."""
    tree = ast.parse(source)
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            s = node.value
            if FILE_RE.search(s) or (not re.search(r"\s", s) and SEGMENT_RE.search(s)):
                found.append((node.lineno, s))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [(n.lineno, n.value) for n in (node.left, node.right)
                      if isinstance(n, ast.Constant) and n.value in FOLDERS | FIXTURE_FOLDERS]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            args = [*node.args, *(k.value for k in node.keywords)]
            if name == "joinpath":
                found += [(a.lineno, a.value) for a in args
                          if isinstance(a, ast.Constant) and a.value in FOLDERS | FIXTURE_FOLDERS]
            if name in ARTIFACT_CALLS:
                found += [(a.lineno, a.value) for a in args
                          if isinstance(a, ast.Constant) and a.value in ARTIFACTS]
    return found


def test_the_check_catches_spelled_names():
    src = ('"""Writes run.json."""\n'
           'a = root / "runs" / name / "metrics.json"\n'
           'b = f"sqlite:///{d}/mlflow.db"\n'
           'c = p.glob("runs/*/model/x")\n'
           'd = root / "state"\n'
           'e = log.log_artifact(out, "model")\n'
           'f = {"model": 1, "state": 2, "x": "mlflow_run.json", "y": "results/<study>/runs/ x"}\n')
    assert sorted(line for line, _ in spelled_names(src)) == [2, 2, 3, 4, 5, 6]


def test_only_layout_spells_the_names_of_results_and_data():
    bad = [f"{p.relative_to(SRC)}:{line}: {s!r}" for p in sorted(SRC.rglob("*.py"))
           if p != SRC / "layout.py" for line, s in spelled_names(p.read_text())]
    assert not bad, "spell these through geopeft.layout:\n" + "\n".join(bad)


def test_layout_imports_nothing_heavy():
    code = ("import sys, geopeft.layout; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'numpy', 'pandas', 'mlflow', 'zarr', 'snakemake'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_string_roots_keep_the_rules_strings_and_path_roots_give_paths():
    s = StudyLayout.of("./out/", "ci")
    assert s.run("{run}").metrics == "./out//ci/runs/{run}/metrics.json"  # as written, not normalised
    assert s.log("train", "{run}") == "./out//ci/logs/train/{run}.log"
    p = StudyLayout.of(Path("results"), "ci")
    assert p.run("a").record == Path("results/ci/runs/a/model/run.json")
    assert ModelLayout(p.run("a").model).record == p.run("a").record
    assert ModelLayout(Path("m")).adapter == Path("m/adapter")
    assert PretrainLayout(p.pretrain).record == Path("results/ci/pretrain/backbone.json")
    assert p.train_history("a") == Path("results/ci/logs/train/a.history.log")
    assert TrackingLayout("results").uri == TrackingLayout(Path("results")).uri == \
        "sqlite:///results/mlflow.db"
    d = DataLayout("data", "synthetic")
    assert d.store("eurosat_ms", "B04") == "data/prepared/synthetic/eurosat_ms/B04.zarr"
    assert d.subset("x", "B04", layout.SUBSET_NAME) == \
        "data/prepared/synthetic/x/B04.subsets/{method}-f{fraction}-s{seed}.json"
    assert subset_name("stratified", 0.5, 0) == "stratified-f0.5-s0.json"
    assert layout.rehearsal_data(Path("data")) == Path("data/rehearsal")
    assert FixtureLayout(Path(layout.FIXTURES)).manifest == Path(".rehearsal/manifest.json")


def _expected(cfg: dict) -> set[str]:
    """Every output and log of ``snakemake all paper`` on the tiny synthetic study, from the
    layout."""
    study = StudyLayout.of(cfg["results_dir"], cfg["study"])
    data = study_config.data_layout(cfg)
    rows = study_config.study_rows(cfg)
    bands = study_config.bands_id(cfg["data"]["bands"])
    out = {study.experiment, study.pretrain, study.runs_csv, study.runs_html, study.table,
           study.per_class_tex, study.per_class_csv, study.ledger_csv, study.protocol,
           PAPER_PDF}
    out |= {study.figure(n, e) for n in study_figures(r["dataset"] for r in rows)
            for e in FIGURE_FORMATS}
    out |= {study.log(r) for r in ("mlflow_init", "pretrain", "protocol", "aggregate", "figures",
                                   "table", "paper")}
    for row in rows:
        run = study.run(row["name"])
        out |= {run.model, run.metrics, run.confusion, study.log("train", row["name"]),
                study.log("evaluate", row["name"])}
        if row["label_fraction"] < 1:
            name = subset_name(cfg["subsets"]["method"], row["label_fraction"], row["seed"])
            out |= {data.subset(row["dataset"], bands, name),
                    data.prepared_log("subset", f"{row['dataset']}-{bands}-{name.removesuffix('.json')}")}
    out |= {data.raw(ds) for ds in ("eurosat_ms", "eurosat_rgb", "eurosat_ms_source",
                                    "eurosat_rgb_source")} | {data.raw_log("synthesize")}
    pbands = study_config.bands_id(cfg["pretrain"]["bands"] or cfg["data"]["bands"])
    for ds, b in {(r["dataset"], bands) for r in rows} | {(study_config.pretrain_source(cfg), pbands)}:
        out |= {data.store(ds, b), data.prepared_log("prepare", f"{ds}-{b}")}
    from geopeft.spec import JobSpec

    for row in rows:  # the features of a frozen encoder: one job per key (linear probes)
        spec = JobSpec.from_dict(study_config.job_spec(cfg, row))
        if spec.features_reason() is None:
            key = spec.features_key()
            out |= {data.features(row["dataset"], bands, key),
                    data.prepared_log("features", f"{row['dataset']}-{bands}-{key}")}
    return out


def test_the_rules_outputs_and_logs_are_the_layouts_paths(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                        "-d", str(tmp_path), "--configfile", str(TINY), "--cores", "1", "-n",
                        "all", "paper"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    listed = {p for m in re.finditer(r"^    (?:output|log): (.*)$", r.stdout, re.M)
              for p in m[1].split(", ")}
    cfg = study_config.resolve([str(TINY)], {})
    assert listed == _expected(cfg)


def _data_outputs(configfile: Path, tmp_path: Path) -> set[str]:
    """Every output and log under data/ of a study's dry run."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"),
                        "-d", str(tmp_path), "--configfile", str(configfile), "--cores", "1",
                        "-n"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {p for m in re.finditer(r"^    (?:output|log): (.*)$", r.stdout, re.M)
            for p in m[1].split(", ") if p.startswith("data/")}


def test_studies_whose_data_differ_share_no_data_folder(tmp_path):
    """Issue 37, item 9: the embedded time-series study wrote the default study's
    data/raw/synthetic/eurosat_* folders with another world (200 samples at 32 px vs 1,000 at
    64 px), so each study reran the other's jobs forever. The data tree is tagged by the settings
    that shape the data: the two dry runs in one folder now share no output or log under data/
    (before: the synthetic world, the source-set store and their logs)."""
    default = _data_outputs(ROOT / "config" / "config.yaml", tmp_path)
    embedded = _data_outputs(ROOT / "config" / "studies" / "shaping_ft_embedded.yaml", tmp_path)
    assert "data/raw/synthetic/eurosat_ms" in default  # the default study keeps its names
    assert default and embedded and not default & embedded


def test_the_data_tree_is_tagged_by_the_settings_that_shape_the_data():
    """Equal data settings share a folder (one world, one store for every study that uses it);
    a change of the synthetic world, of data.raw_dir or data.remotes moves the raw and prepared
    folders, a change of data.options only the prepared ones; every study file whose data
    settings differ from another's has its own folders."""
    base = study_config.resolve([str(ROOT / "config" / "config.yaml")], {})
    d0 = study_config.data_layout(base)
    assert (d0.raw_root, d0.prepared_root) == ("data/raw/synthetic", "data/prepared/synthetic")

    def variant(**data) -> DataLayout:
        cfg = copy.deepcopy(base)
        for key, value in data.items():
            section, _, sub = key.partition("__")
            if sub:
                cfg["data"][section][sub] = value
            else:
                cfg["data"][section] = value
        return study_config.data_layout(cfg)

    assert variant(synthetic__seed=0) == d0  # the default value written out: the same world
    seed = variant(synthetic__seed=7)
    assert seed.raw_root != d0.raw_root and seed.prepared_root != d0.prepared_root
    assert seed == variant(synthetic__seed=7) and seed != variant(synthetic__seed=8)
    size = variant(options__size=32)
    assert size.raw_root == d0.raw_root and size.prepared_root != d0.prepared_root
    local = dict(source="local", dataset="eurosat_ms")
    assert variant(**local, raw_dir="data/raw/local/eurosat_ms").raw_root == "data/raw/local"
    mine = variant(**local, raw_dir="/archive/eurosat_ms")
    assert mine.raw_root.startswith("data/raw/local-w") and mine.store("eurosat_ms", "B04") != \
        variant(**local, raw_dir="/elsewhere/eurosat_ms").store("eurosat_ms", "B04")
    assert variant(source="download").raw_root == "data/raw/download"
    assert variant(source="download", remotes=[{"name": "x.zip", "urls": ["http://a/x.zip"]}]
                   ).raw_root.startswith("data/raw/download-w")
    # the app finds a run's examples from its store's path
    store = Path(seed.store("eurosat_ms", "B04"))
    assert DataLayout.raw_root_of_store(store) == Path(seed.raw_root)
    assert DataLayout.raw_root_of_store(Path(size.store("eurosat_ms", "B04"))) == Path(d0.raw_root)
    # every study file on the embedded world: other world or options, other folders
    seen: dict[tuple, str] = {}
    for f in [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "studies").glob("*.yaml"))]:
        cfg = study_config.resolve([str(f)], {})
        if cfg["data"]["source"] != "synthetic":
            continue
        d = study_config.data_layout(cfg)
        shaping = canonical_json([cfg["data"]["synthetic"], cfg["data"]["options"]])
        assert seen.setdefault((d.raw_root, d.prepared_root), shaping) == shaping, f.name
    assert len(seen) == 4  # the default study, the embedded Fusion-LoRA, time-series, methods ones
