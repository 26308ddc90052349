"""The inference app's logic without a browser (the browser test runs the README's command on the
default study: tests/test_default_study.py): which run it starts at, what it answers for a good
and a bad file, and its examples from the test split."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import backbone_cfg, full_spec

from geopeft.app import App, best_on_val, examples, find_runs, true_colour
from geopeft.data.dataset import store_info
from geopeft.errors import GeopeftError
from geopeft.evaluate.predict import Predictor
from geopeft.models.classifier import build_classifier
from geopeft.models.saved import save_model
from geopeft.strategies import apply_strategy


@pytest.fixture(scope="module")
def results(rgb_store, tmp_path_factory):
    """A results folder of three linear-probe runs: val scores 0.7, 0.9, 0.8 and test scores
    0.95, 0.5, 0.6 (the best on test is not the best on validation)."""
    info = store_info(rgb_store)
    root = tmp_path_factory.mktemp("results") / "study"
    for seed, (val, test) in enumerate([(0.7, 0.95), (0.9, 0.5), (0.8, 0.6)]):
        torch.manual_seed(seed)
        m, minfo = build_classifier(backbone_cfg(), info, len(info.classes))
        m = apply_strategy(m, "linear")
        with torch.no_grad():
            m.backbone.head.bias.copy_(torch.linspace(-1, 1, len(info.classes)) * (seed + 1))
        name = f"linear-f1-s{seed}"
        spec = full_spec({"backbone": backbone_cfg(), "data": {"dataset": "eurosat_rgb"},
                          "row": {"method": "linear", "name": name, "seed": seed}})
        save_model(m, root / "runs" / name / "model", {
            "spec": spec, "model": minfo, "mlflow_run_id": None, "trainable_params": 10,
            "total_params": 100, "history": [{"epoch": 1, "val_score": val}],
            "store": {**asdict(info), "path": str(info.path)}})
        (root / "runs" / name / "metrics.json").write_text(json.dumps(
            {"primary_metric": "overall_accuracy", "primary": test}))
    return root


def test_the_app_starts_at_the_best_run_on_validation(results):
    runs = find_runs(results)
    assert [r.name for r in runs] == ["linear-f1-s0", "linear-f1-s1", "linear-f1-s2"]
    assert best_on_val(runs).name == "linear-f1-s1"  # val 0.9, though its test score is lowest
    assert "val 90.0 %, test overall accuracy 50.0 %" in best_on_val(runs).label
    with pytest.raises(GeopeftError, match="no trained run"):
        find_runs(results / "runs")


def test_the_app_answers_as_predict_and_names_a_bad_file(results, world, tmp_path):
    app = App(results, raw=world["root"])
    label = app.default.label
    files = sorted(Path(world["rgb"]).rglob("*.jpg"))[:3]
    for f in files:
        preview, classes, seg, message = app.predict(label, str(f), "", 3)
        (expected,) = Predictor(app.default.model_dir).predict_files([f])
        assert list(classes) == [c for c, _ in expected.top(3)]
        assert classes[expected.labels[0]] == pytest.approx(expected.top(1)[0][1])
        assert seg is None and message.endswith(f": {expected.labels[0]}.")
        assert preview.dtype == np.uint8 and preview.shape[2] == 3 and preview.shape[0] >= 256
    bad = tmp_path / "scene_1.tif"
    bad.write_bytes(b"not an image")
    preview, classes, seg, message = app.predict(label, str(bad), "", 3)
    assert (preview, classes, seg) == (None, None, None)
    assert message.startswith(r"**Cannot use scene\_1.tif**: cannot be read as a JPEG or PNG")
    assert str(tmp_path) not in message  # the upload's temporary folder is not shown
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(big)
    assert "size 40x40, the model takes 32x32" in app.predict(label, str(big), "", 3)[3]
    # an unexpected failure is said in the page too
    real = app.predictor(label).predict_arrays
    app.predictor(label).predict_arrays = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    message = app.predict(label, str(files[0]), "", 3)[3]
    assert message.startswith(f"**Cannot use {files[0].name.replace('_', chr(92) + '_')}**: "
                              "RuntimeError: boom")
    app.predictor(label).predict_arrays = real
    # it keeps answering after the errors
    assert app.predict(label, str(files[0]), "", 3)[3].endswith(".")
    assert "Synthetic data" in app.describe(label) and "JPEG or PNG" in app.describe(label)


def test_examples_come_from_the_test_split_one_per_class_first(results, world, tmp_path):
    runs = find_runs(results)
    rows, notes = examples(runs, world["root"], tmp_path, n=4)
    assert notes == [] and len(rows) == 4
    test = set((Path(world["rgb"]) / "eurosat-test.txt").read_text().split())
    assert all(Path(f).name in test for _, f, _ in rows)
    assert len({Path(f).parent.name for _, f, _ in rows}) == 4  # four classes
    assert {r for r, _, _ in rows} == {best_on_val(runs).label}
    rows, notes = examples(runs, tmp_path / "nowhere", tmp_path)
    assert rows == [] and "No examples of eurosat_rgb" in notes[0]


def test_true_colour_takes_b04_b03_b02_of_any_band_order():
    x = np.zeros((4, 2, 2), np.uint16)
    x[1], x[2], x[3] = 1000, 2000, 3000  # B02, B03, B04 in a B08-first store
    x[1, 0, 0] = 0
    img = true_colour(x, ["B08", "B02", "B03", "B04"], 1e-4)
    assert img.shape == (2, 2, 3) and img[1, 1, 0] > img[1, 1, 1] > img[1, 1, 2]


def test_the_app_module_is_where_the_cli_points(results):
    from geopeft.cli import build_parser

    args = build_parser().parse_args(["app", str(results)])
    assert args.host == "127.0.0.1" and args.port is None and args.func.__name__ == "cmd_app"


def test_the_app_maps_a_geotiff_scene_larger_than_its_chips(results, world, tmp_path,
                                                            monkeypatch):
    """A GeoTIFF larger than the run's chips is mapped as ``geopeft predict --out`` maps it: the
    map over a subsampled preview, each class's share of the map's cells, and the GeoTIFF to
    download; each cell the class the run gives its chip. Over the app's limit, the message
    says so and names the command without one."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    import geopeft.app as app_mod

    app = App(results, raw=world["root"], maps=tmp_path / "maps")
    label = app.default.label
    chips = sorted(Path(world["rgb"]).rglob("*.jpg"))[:6]
    images = [np.asarray(Image.open(c)).transpose(2, 0, 1) for c in chips]
    data = np.concatenate([np.concatenate(images[:3], 2), np.concatenate(images[3:], 2)], 1)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=64, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(0, 0, 10, 10)) as f:
        f.write(data)
        for i, band in enumerate(("B04", "B03", "B02"), start=1):
            f.set_band_description(i, band)
    a = app.answer(label, str(scene), "", 10)
    assert a.map_file == tmp_path / "maps" / "scene.map.tif" and a.map_file.is_file()
    assert ("scene.tif: a 64x96 px scene, mapped one class per 32x32 px tile (2x3 cells): 6 "
            "tiles run, 0 without data.") in a.message
    with rasterio.open(a.map_file) as f:
        cells = f.read(1)
        assert f.crs.to_epsg() == 32631
    predictor = Predictor(app.default.model_dir)
    for k, p in enumerate(predictor.predict_files(chips)):
        top = np.sort(p.scores)[-2:]
        if top[1] - top[0] > 1e-4:
            assert predictor.classes[cells[k // 3, k % 3]] == p.labels[0], chips[k]
    counts = np.bincount(cells.ravel(), minlength=len(predictor.classes))
    assert a.classes == {predictor.classes[i]: pytest.approx(n / 6) for i, n in
                         enumerate(counts) if n}
    preview, masks = a.map
    assert preview.shape == (64, 96, 3) and preview.dtype == np.uint8
    assert np.array_equal(sum(m for m, _ in masks), np.ones((64, 96)))
    assert app.predict(label, str(scene), "", 10)[3] == a.message
    monkeypatch.setattr(app_mod, "SCENE_PIXELS", 1000)
    msg = app.predict(label, str(scene), "", 3)[3]
    assert msg.startswith(r"**Cannot use scene.tif**: a scene of 64x96 px, over the app's limit "
                          r"of 1,000 px; map it with geopeft predict")
