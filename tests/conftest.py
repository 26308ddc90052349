"""Shared fixtures: a tiny synthetic world, prepared stores and a small ViT spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from geopeft.data.prepare import prepare
from geopeft.data.synthetic import WorldSpec, generate_eurosat, generate_source

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}

# Seconds in one process on the 2-core CI machine (2026-12-07) of the slowest test modules. Under
# pytest-xdist (pyproject's addopts: --dist loadfile) a module's tests go together to one worker
# (their module fixtures, e.g. one run of a study that several tests check, run once); the
# slowest modules start first, so that both cores finish together. Modules not named here follow
# in file order.
MODULE_SECONDS = {"test_rehearsal.py": 563, "test_workflow.py": 428, "test_default_study.py": 367,
                  "test_bench.py": 310, "test_ddp.py": 223, "test_resume.py": 107,
                  "test_fetch_workflow.py": 86, "test_mlflow_server.py": 77,
                  "test_tracking.py": 72, "test_jobserver.py": 52, "test_train.py": 51,
                  "test_studies.py": 48, "test_stream.py": 48}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest modules first (:data:`MODULE_SECONDS`), each module's tests in file order."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


def backbone_cfg(weights: str = "none", **kw: object) -> dict:
    cfg = {"name": "vit_tiny_patch16_224", "kwargs": dict(TINY_VIT), "weights": weights,
           "sha256": None, "input_size": None, "normalize": "auto"}
    cfg.update(kw)
    return cfg


def full_spec(spec: dict) -> dict:
    """A test's partial job spec made whole, as geopeft.config.job_spec writes them: the keys a
    test does not care about get neutral values (a LoRA row's adapter gets the schema's
    defaults under what the test sets)."""
    from dataclasses import asdict, fields

    from geopeft.spec import LoraSpec, TrainArgs
    from geopeft.strategies import get as get_strategy

    row = dict(spec["row"])
    row.setdefault("name", "r")
    row.setdefault("strategy", row["method"])
    row.setdefault("dataset", (spec.get("data") or {}).get("dataset", "eurosat_rgb"))
    row.setdefault("label_fraction", 1.0)
    row.setdefault("seed", 0)
    # every training setting, as the schema fills them (TrainArgs holds the same defaults)
    defaults = {f.name: f.default for f in fields(TrainArgs)
                if f.name not in ("seed", "threads", "progress")}
    row["train"] = {**defaults, **row.get("train", {})}
    if get_strategy(row["method"]).uses_adapter:
        row["lora"] = asdict(LoraSpec(**(row.get("lora") or {})))
    data = {"dataset": row["dataset"], "bands": ["B04", "B03", "B02"], "source": "synthetic",
            **(spec.get("data") or {})}
    return {"study": "test", "threads": 1, **spec, "data": data, "row": row}


def job_spec(spec: dict):
    """The typed job spec of a test's partial spec (:func:`full_spec`)."""
    from geopeft.spec import JobSpec

    return JobSpec.from_dict(full_spec(spec))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 100-scene world (32x32) in EuroSAT-MS and -RGB layouts, plus a source set."""
    root = tmp_path_factory.mktemp("world")
    spec = WorldSpec(seed=11, n_samples=100, source_samples=50, size=32, cloud_fraction=0.2)
    generate_eurosat(spec, root / "eurosat_ms", root / "eurosat_rgb")
    generate_source(spec, root / "eurosat_ms_source", root / "eurosat_rgb_source")
    return {"root": root, "ms": root / "eurosat_ms", "rgb": root / "eurosat_rgb",
            "ms_source": root / "eurosat_ms_source", "rgb_source": root / "eurosat_rgb_source"}


@pytest.fixture(scope="session")
def ms_store(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "ms.zarr"
    prepare("eurosat_ms", world["ms"], ["B04", "B03", "B02", "B08", "B8A", "B11"], out)
    return out


@pytest.fixture(scope="session")
def rgb_store(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "rgb.zarr"
    prepare("eurosat_rgb", world["rgb"], ["B04", "B03", "B02"], out)
    return out


#: A small U-TAE for PASTIS runs of the tests.
SMALL_UTAE = {"model": "utae", "encoder_widths": [8, 16], "decoder_widths": [8, 16],
              "ltae": {"d_model": 16, "heads": 4}}


def save_linear_run(store: Path, model_dir: Path, dataset: str = "eurosat_ms",
                    **backbone: object) -> Path:
    """A linear-probe run of ``store`` (the tiny random ViT; ``backbone``: its settings that
    differ) saved in ``model_dir`` as training saves one (spec, store, history), as a user's
    ``geopeft predict`` finds it."""
    from dataclasses import asdict

    import torch

    from geopeft.data.dataset import store_info
    from geopeft.models.classifier import build_classifier
    from geopeft.models.saved import save_model
    from geopeft.strategies import apply_strategy

    info = store_info(store)
    torch.manual_seed(0)
    m, minfo = build_classifier(backbone_cfg(**backbone), info, len(info.classes))
    m = apply_strategy(m, "linear")
    spec = full_spec({"backbone": backbone_cfg(**backbone),
                      "data": {"dataset": dataset, "bands": list(info.bands)},
                      "row": {"method": "linear", "name": model_dir.parent.name,
                              "dataset": dataset}})
    save_model(m, model_dir, {
        "spec": spec, "model": minfo, "mlflow_run_id": None, "trainable_params": 1,
        "total_params": 2, "history": [{"epoch": 1, "val_score": 0.5}],
        "store": {**asdict(info), "path": str(info.path)}})
    return model_dir


def save_utae_run(pastis: Path, tmp: Path):
    """A U-TAE (random weights, moved so that the map depends on the input) saved as a T = 6 run
    of the PASTIS world ``pastis``; returns (model folder, model, store)."""
    from dataclasses import asdict

    import torch

    from geopeft.data.dataset import store_info
    from geopeft.data.sources.pastis import BANDS as PASTIS_BANDS
    from geopeft.models.build import build_model
    from geopeft.models.saved import save_model

    store = tmp / "p.zarr"
    prepare("pastis", pastis, list(PASTIS_BANDS), store)
    info = store_info(store)
    temporal = {"length": 6, "ladder": [35, 15, 6, 1], "pad": "mask", "reference": "2018-09-01"}
    partial = {"row": {"method": "scratch", "segmentation": SMALL_UTAE, "sequence_length": 6,
                       "temporal": temporal, "dataset": "pastis", "name": "utae-t6"},
               "backbone": {"name": "embedded", "weights": "none", "kwargs": {}},
               "data": {"dataset": "pastis", "bands": list(PASTIS_BANDS)}}
    torch.manual_seed(0)
    model, minfo = build_model(job_spec(partial), info)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    out = tmp / "model"
    save_model(model, out, {"spec": full_spec(partial), "model": minfo, "mlflow_run_id": None,
                            "store": {**asdict(info), "path": str(info.path)}})
    return out, model, store


def run_study_header(study: Path, work: Path) -> dict[str, str]:
    """Run the ``uv run snakemake ...`` command of a study file's header, as written (``uv
    run``: this environment), in ``work``: a fresh working copy whose paths are the
    repository's (``tests/data``: the datasets of your own of the examples). Returns the
    environment the command ran in (without a workflow's dataset declarations), for the
    commands a test runs after it."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = re.search(r"^#\s+uv run (snakemake .*)$", study.read_text(), re.M).group(1)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (work / name).symlink_to(root / name)
    (work / "tests").mkdir()
    (work / "tests" / "data").symlink_to(root / "tests" / "data")  # the examples' raw_dir
    env = {k: v for k, v in os.environ.items() if k != "GEOPEFT_DATASETS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    r = subprocess.run(shlex.split(cmd), cwd=work, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return env
