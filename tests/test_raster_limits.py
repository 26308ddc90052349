"""Rasters are sized from their headers before a pixel is read (issue 37, item 4): a small sparse
file declaring a huge raster is refused, naming the file, its declared shape and the limit
(``limits.max_raster_values``), by prepare's readers, ``geopeft predict`` and the app, and a chip
of another side than the model's is refused before it is read, all at no cost in memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import save_linear_run
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import Window

from geopeft.app import App
from geopeft.cli import main
from geopeft.data.prepare import prepare
from geopeft.data.sources import DataError
from geopeft.limits import DEFAULT

#: Most memory any of these refusals may trace; reading the files would take 1.5 GiB or more.
SMALL = 32 << 20


def sparse_tif(path: Path, side: int, count: int = 13) -> Path:
    """A GeoTIFF declaring ``side`` x ``side`` x ``count`` uint16 of which one block is written:
    a few KB on disk."""
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=count,
                       dtype="uint16", tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", sparse_ok=True, crs="EPSG:32631",
                       transform=from_origin(0, 0, 10, 10)) as f:
        f.write(np.ones((count, 512, 512), np.uint16), window=Window(0, 0, 512, 512))
    return path


def peak(fn, *args, **kw):
    """``fn(*args, **kw)`` (its result or the exception it raises) and the peak memory traced
    meanwhile (numpy's arrays and Python's objects)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kw)
    except Exception as err:  # the refusal under test
        out = err
    finally:
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return out, top


def test_readers_size_a_file_from_its_header_before_reading_it(tmp_path):
    """In a fresh process: the EuroSAT-MS reader (prepare's and predict's), the PASTIS readers
    and the RGB reader refuse a few-KB file declaring a huge raster, one line each, and the
    process's peak memory (ru_maxrss) does not grow."""
    script = textwrap.dedent("""
        import json, resource, sys
        from datetime import date, timedelta
        from pathlib import Path
        import numpy as np
        from geopeft.data.sources import Item, get_source

        tmp = Path(sys.argv[1])
        ms, pastis, rgb = (get_source(n) for n in ("eurosat_ms", "pastis", "eurosat_rgb"))
        (tmp / "p" / "DATA_S2").mkdir(parents=True)
        (tmp / "p" / "ANNOTATIONS").mkdir()
        # 2,000 dates of 10 x 128 x 128: 655 MB declared, sparse on disk
        np.lib.format.open_memmap(tmp / "p" / "DATA_S2" / "S2_1.npy", "w+", np.int16,
                                  (2000, 10, 128, 128)).flush()
        np.save(tmp / "p" / "ANNOTATIONS" / "TARGET_1.npy", np.zeros((3, 128, 128), np.uint8))
        dates = [int((date(2015, 1, 1) + timedelta(i)).strftime("%Y%m%d")) for i in range(2000)]
        calls = {
            "ms.read": lambda: ms.read(Item("a", "train", tmp / "big.tif", 0, {"size": 64}),
                                       ["B04"], {}),
            "ms.read_input": lambda: ms.read_input(tmp / "big.tif", ["B04"], {}),
            "pastis.read": lambda: pastis.read(
                Item("1", "train", tmp / "p", None, {"dates": dates, "size": 128}),
                ["B04"], {"t_max": 2000}),
            "pastis.read_input": lambda: pastis.read_input(
                tmp / "p" / "DATA_S2" / "S2_1.npy", ["B04"], {}, dates),
            "rgb.read_input": lambda: rgb.read_input(tmp / "big.png", ["B04"], {}, size=(64, 64)),
        }
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        said = {}
        for name, call in calls.items():
            try:
                call()
                said[name] = "read"
            except Exception as err:  # the refusal; any other says what went wrong
                said[name] = str(err)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"said": said, "grew_kb": grew}))
    """)
    sparse_tif(tmp_path / "big.tif", 8000)
    Image.new("RGB", (6000, 6000)).save(tmp_path / "big.png")  # 108 M values in 100 KB
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    said = out["said"]
    assert out["grew_kb"] < SMALL >> 10, out  # reading them: 1.7 GB, 655 MB, 216 MB
    big, npy = tmp_path / "big.tif", tmp_path / "p" / "DATA_S2" / "S2_1.npy"
    for name in ("ms.read", "ms.read_input"):
        assert said[name] == (f"{big}: declares 8000x8000 px x 13 bands of uint16 (832,000,000 "
                              f"values, 1.5 GiB), over the limit of 268,435,456 values "
                              f"(limits.max_raster_values); nothing was read"), said[name]
    for name in ("pastis.read", "pastis.read_input"):
        assert said[name].startswith(f"{npy}: declares shape (2000, 10, 128, 128) of int16 "
                                     f"(327,680,000 values"), said[name]
    # under the limit, but not the model's side: refused from the header, undecoded
    assert said["rgb.read_input"] == (f"{tmp_path / 'big.png'}: size 6000x6000, the model takes "
                                      f"64x64 (eurosat_rgb)")


@pytest.fixture(scope="module")
def ms_run(ms_store, tmp_path_factory):
    """A results folder with one linear-probe run of EuroSAT-MS (32 x 32 chips)."""
    root = tmp_path_factory.mktemp("results") / "study"
    save_linear_run(ms_store, root / "runs" / "ms" / "model")
    return root


def test_prepare_refuses_a_huge_raster_unread_and_takes_the_study_limit(world, tmp_path, capsys):
    raw = tmp_path / "ms"
    shutil.copytree(world["ms"], raw)
    victim = sorted(raw.rglob("*.tif"))[5]
    sparse_tif(victim, 8000)
    err, top = peak(prepare, "eurosat_ms", raw, ["B04"], tmp_path / "o.zarr")
    assert isinstance(err, DataError), err
    assert str(err).startswith(f"{victim}: declares 8000x8000 px x 13 bands of uint16")
    assert f"over the limit of {DEFAULT.max_raster_values:,} values" in str(err)
    assert top < SMALL and not (tmp_path / "o.zarr").exists()
    # skip_corrupt skips it, unread, with the reason
    attrs = prepare("eurosat_ms", raw, ["B04"], tmp_path / "s.zarr",
                    options={"skip_corrupt": True})
    assert [name for name, _ in attrs["skipped_samples"]] == [victim.stem]
    # the study's limit reaches the command: a 32 x 32 x 13 chip is over 1,000 values
    shutil.copy(sorted(world["ms"].rglob("*.tif"))[5], victim)
    args = ["prepare", "--dataset", "eurosat_ms", "--raw", str(raw), "--bands", "B04",
            "--out", str(tmp_path / "c.zarr"), "--max-raster-values", "1000"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"geopeft prepare: error: {raw}")
    assert line.endswith("32x32 px x 13 bands of uint16 (13,312 values, 0.0 GiB), over the limit "
                         "of 1,000 values (limits.max_raster_values); nothing was read")
    assert not (tmp_path / "c.zarr").exists()


def test_predict_refuses_a_huge_raster_and_a_wrong_chip_unread(ms_run, world, tmp_path, capsys):
    model = ms_run / "runs" / "ms" / "model"
    big = sparse_tif(tmp_path / "big.tif", 8000)
    status, top = peak(main, ["predict", "--model", str(model), str(big)])
    assert status == 2 and top < SMALL
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"geopeft predict: error: {big}: declares 8000x8000 px x 13 bands of uint16 "
                    f"(832,000,000 values, 1.5 GiB), over the limit of 268,435,456 values "
                    f"(limits.max_raster_values); nothing was read")
    # under the limit (104 MB to read), not the model's 32 x 32: refused from its header
    chip = sparse_tif(tmp_path / "chip.tif", 2000)
    status, top = peak(main, ["predict", "--model", str(model), str(chip)])
    assert status == 2 and top < SMALL
    assert capsys.readouterr().err.strip() == (f"geopeft predict: error: {chip}: size 2000x2000, "
                                               f"the model takes 32x32 (eurosat_ms)")
    good = sorted(world["ms"].rglob("*.tif"))[0]
    assert main(["predict", "--model", str(model), str(good)]) == 0


def test_the_app_refuses_a_huge_upload_unread_and_keeps_serving(ms_run, world, tmp_path):
    app = App(ms_run, raw=world["root"])
    label = app.default.label
    big = sparse_tif(tmp_path / "big.tif", 8000)
    app.predict(label, str(sorted(world["ms"].rglob("*.tif"))[0]), "", 3)  # the model loaded
    (preview, classes, seg, message), top = peak(app.predict, label, str(big), "", 3)
    assert (preview, classes, seg) == (None, None, None) and top < SMALL
    # a GeoTIFF larger than the chips is a scene to map: this one is over the app's limit
    assert message == (r"**Cannot use big.tif**: a scene of 8000x8000 px, over the app's limit "
                       r"of 4,194,304 px; map it with geopeft predict --model &lt;run&gt;/model "
                       r"big.tif --out map.tif")
    small = tmp_path / "chip.tif"
    with rasterio.open(small, "w", driver="GTiff", width=20, height=20, count=13,
                       dtype="uint16") as f:
        f.write(np.ones((13, 20, 20), np.uint16))
    (_, _, _, message), top = peak(app.predict, label, str(small), "", 3)
    assert message.endswith("size 20x20, the model takes 32x32 (eurosat\\_ms)")
    assert top < SMALL
    good = sorted(world["ms"].rglob("*.tif"))[1]
    assert app.predict(label, str(good), "", 3)[3].endswith(".")


def test_the_prepare_rule_passes_the_study_limit(tmp_path):
    """The study's limits section reaches every prepare job (a dry run of the CI study with
    limits.max_raster_values set)."""
    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "limits.yaml"
    study.write_text("limits:\n  max_raster_values: 5000\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d",
                        str(tmp_path / "wd"), "--configfile", str(root / "config" / ".test" /
                                                                  "config.yaml"), str(study),
                        "--cores", "1", "-n", "-p"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prepares = [line for line in r.stdout.splitlines() if "geopeft prepare " in line]
    assert prepares and all(" --max-raster-values 5000 " in line for line in prepares), prepares
