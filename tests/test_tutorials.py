"""The tutorials under ``docs/tutorials/``, run as written: each ``bash`` block's commands in
order (``uv run``: this environment) in a working copy of the repository, each ``yaml`` block
whose first line is ``# <file>`` saved under that name, as a reader would; then what the text
says of the outcome is checked."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text: (language, body), in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", text, re.M | re.S)


def run_tutorial(page: Path, work: Path) -> dict[str, str]:
    """Run ``page``'s blocks in ``work``; the standard output of each command, by command."""
    for name in ("Snakefile", "workflow", "config", "profiles", "scripts"):
        (work / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != "GEOPEFT_DATASETS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out: dict[str, str] = {}
    for lang, body in blocks(page.read_text()):
        if lang == "yaml":
            first = body.splitlines()[0]
            assert first.startswith("# "), f"{page}: a yaml block names its file first"
            (work / first[2:].strip()).write_text(body)
        elif lang == "bash":
            for line in body.strip().splitlines():
                assert line.startswith("uv run "), f"{page}: {line}"
                cmd = line.removeprefix("uv run ")
                r = subprocess.run(shlex.split(cmd), cwd=work, env=env, capture_output=True,
                                   text=True, timeout=900)
                assert r.returncode == 0, f"{line}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
                out[cmd] = r.stdout
    return out


@pytest.mark.slow
def test_your_own_data_tutorial_runs_as_written(tmp_path, monkeypatch):
    page = TUTORIALS / "your-own-data.md"
    text = page.read_text()
    work = tmp_path / "work"
    work.mkdir()
    out = run_tutorial(page, work)
    # 1. the table's first lines are the ones the page shows
    (shown,) = [body for lang, body in blocks(text) if lang == "text"]
    assert (work / "my_chips" / "labels.csv").read_text().startswith(shown)
    assert len(list((work / "my_chips" / "chips").glob("chip_*.tif"))) == 48
    # 2. validate lists the 3 runs; plan counts the spatial split's chips
    (validate,) = [v for k, v in out.items() if k.startswith("geopeft validate")]
    assert "with 3 runs" in validate
    for run in ("full-f1-s0", "lora-f1-s0", "linear-f1-s0"):
        assert run in validate
    (plan,) = [v for k, v in out.items() if k.startswith("geopeft plan")]
    assert re.search(r"Data my_chips: train \d+ / val \d+ / test \d+ samples: "
                     r"my_chips/labels.csv \(spatial split\)", plan), plan
    # 3-4. the runs and their results, as printed
    runs = list(csv.DictReader((work / "results" / "my_study" / "runs.csv").open()))
    assert sorted(r["run"] for r in runs) == ["full-f1-s0", "linear-f1-s0", "lora-f1-s0"]
    (printed,) = [v for k, v in out.items() if k.startswith("python -c")]
    for r in runs:
        assert r["run"] in printed and r["trainable_params"] in printed
    assert (work / "results" / "my_study" / "runs.html").is_file()
    assert list((work / "results" / "my_study" / "figures").glob("*.png"))
    # 5. the map: the scene's CRS, one class per 16 px tile on a 2 x 8 grid, 6 tiles nodata
    with rasterio.open(work / "scene.tif") as s, rasterio.open(work / "map.tif") as m:
        assert m.crs == s.crs and (m.height, m.width) == (2, 8) == (s.height // 16, s.width // 16)
        cells = m.read(1)
        assert int((cells == 255).sum()) == 6 and m.nodata == 255
        assert set(np.unique(cells[cells != 255])) <= {0, 1, 2}
        assert [m.tags(1)[str(i)] for i in range(3)] == ["cropland", "forest", "water"]
    # the error the page quotes, for a chip the table lists and the folder lacks
    from geopeft.data.sources import DataError, register_generic

    rows = (work / "my_chips" / "labels.csv").read_text().splitlines()
    rows[3] = "chips/gone.tif" + rows[3][rows[3].index(","):]
    (work / "my_chips" / "labels.csv").write_text("\n".join(rows) + "\n")
    quoted = re.search(r"e\.g\. `(my_chips/labels\.csv, row 3: [^`]+)`", text.replace("\n", " "))
    assert quoted, "the page lost its example error"
    monkeypatch.chdir(work)
    import yaml

    decl = yaml.safe_load((work / "my_study.yaml").read_text())["data"]["generic"]
    decl.setdefault("path_column", "path")
    decl.setdefault("label_column", "label")
    decl["split"] = {"method": "spatial", "block": 320.0, "fractions": [0.6, 0.2, 0.2],
                     "seed": 0}
    decl.setdefault("value_scale", 1e-4)
    with pytest.raises(DataError) as err:
        register_generic("my_chips_broken", decl).scan(Path("my_chips"), {})
    assert str(err.value) == quoted.group(1)
