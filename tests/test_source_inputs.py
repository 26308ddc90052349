"""What the command line and the app ask of a dataset source: a sample's dates from the dataset's
metadata (``geopeft predict --metadata``: :meth:`Source.input_dates`), a test sample as a user
would upload it (the app's examples: :meth:`Source.example_input`) and ``geopeft predict``'s help
(made from the sources' and the tasks' registries). Neither knows a dataset by name: a new dataset
is its source module plus one registry entry."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from geopeft.app import RunEntry, examples
from geopeft.cli.results import _series_dates, predict_description
from geopeft.data.sources import REGISTRY, DataError, Item, Source, get_source
from geopeft.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src" / "geopeft"
#: The modules that must ask sources, never know them: the app and the command line.
ASKING = [SRC / "app.py", *sorted((SRC / "cli").glob("*.py"))]
#: The per-dataset modules of geopeft.data.sources (base and the registry are shared).
DATASET_MODULES = sorted(p.stem for p in (SRC / "data" / "sources").glob("*.py")
                         if p.stem not in ("__init__", "base"))


def layout_names() -> set[str]:
    """The file-layout names the per-dataset modules spell (their strings in upper case with an
    underscore: ``DATA_S2``, ``S2_``, ...): a module that builds such a path knows the dataset."""
    out: set[str] = set()
    for m in DATASET_MODULES:
        tree = ast.parse((SRC / "data" / "sources" / f"{m}.py").read_text())
        out |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                and isinstance(n.value, str) and re.fullmatch(r"[A-Z0-9]*_[A-Z0-9_]*", n.value)
                and re.search("[A-Z]", n.value)}
    return out


def leaks(source: str, datasets: list[str], modules: list[str],
          layout: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Where ``source`` (a module's text) imports a per-dataset source module, names a dataset
    (a string outside docstrings, or an identifier; comments are not in the tree) or spells one
    of the datasets' file-layout names ``layout``."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, datasets))
                      + r")(?![A-Za-z0-9_])" if datasets else r"(?!)", re.IGNORECASE)
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names
                      if a.name.startswith("geopeft.data.sources.")
                      and a.name.split(".")[3] in modules]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "geopeft.data.sources"):
            mod = node.module or ""
            if mod != "geopeft.data.sources" and mod.split(".")[3] in modules:
                found.append(f"{line}: from {mod} import ...")
            found += [f"{line}: from {mod} import {a.name}" for a in node.names
                      if mod == "geopeft.data.sources" and a.name in modules]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and word.search(node.value)):
            found.append(f"{line}: {node.value!r}")
        elif isinstance(node, ast.Constant) and node.value in layout:
            found.append(f"{line}: layout name {node.value!r}")
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name.lower() in datasets or name in modules:
                found.append(f"{line}: identifier {name}")
    return found


def test_the_app_and_the_command_line_know_no_dataset():
    found = [f"{p.relative_to(SRC)}:{hit}" for p in ASKING
             for hit in leaks(p.read_text(), list(REGISTRY), DATASET_MODULES, layout_names())]
    assert not found, found


def test_the_check_catches_an_import_and_a_name():
    old = '''
from geopeft.data.sources.pastis import read_geojson
from geopeft.data.sources import bigearthnet
def f():
    """A PASTIS docstring is fine."""
    # so is a comment on pastis
    return read_geojson, "a PASTIS S2_<ID>.npy", pastis.x
'''
    hits = leaks(old, list(REGISTRY), DATASET_MODULES)
    assert sorted(h.split(":", 1)[0] for h in hits) == ["2", "3", "7", "7"], hits
    assert any("'a PASTIS S2_<ID>.npy'" in h for h in hits)
    # the app's examples once built PASTIS's path themselves
    path = 'def f(item):\n    return item.path / "DATA_S2" / f"S2_{item.name}.npy"\n'
    assert "DATA_S2" in layout_names() and "S2_" in layout_names()
    assert [h.split(": ", 1)[1] for h in leaks(path, [], [], layout_names())] == [
        "layout name 'DATA_S2'", "layout name 'S2_'"]


class _Tiles(Source):
    """A dataset added at run time: each sample a folder, uploaded as its ``image.npy``, with
    dates listed in a ``dates.txt`` (``<name> <date> <date> ...`` per line)."""

    name = "tiles_test"
    classes = ("a", "b")
    dims = ("time", "band", "y", "x")
    input_needs_dates = True
    input_metadata = "a tiles dates.txt"

    def scan(self, raw, options):
        return [Item(f"t{i}", "test", raw / f"t{i}", i % 2, {"when": [20200101 + i]})
                for i in range(3)]

    def example_input(self, item, cache):
        return item.path / "image.npy", list(item.extra["when"])

    def input_dates(self, metadata, samples):
        table = {ln.split()[0]: [int(d) for d in ln.split()[1:]]
                 for ln in Path(metadata).read_text().splitlines()}
        try:
            return [table[Path(f).parent.name] for f in samples]
        except KeyError as err:
            raise DataError(f"{metadata}: no {err}") from None


@pytest.fixture
def tiles(monkeypatch):
    source = _Tiles()
    monkeypatch.setitem(REGISTRY, source.name, source)
    return source


def test_a_source_added_at_run_time_gives_the_apps_examples(tiles, tmp_path):
    runs = [RunEntry("r", "run r", tmp_path, tiles.name, 0.5, False)]
    rows, notes = examples(runs, tmp_path / "raw", tmp_path / "cache", n=2)
    raw = tmp_path / "raw" / tiles.name
    assert notes == [] and rows == [["run r", str(raw / "t0" / "image.npy"), "20200101"],
                                    ["run r", str(raw / "t1" / "image.npy"), "20200102"]]


def test_a_source_added_at_run_time_gives_predicts_dates(tiles, tmp_path):
    meta = tmp_path / "dates.txt"
    meta.write_text("t0 20200101 20200301\nt1 20200102\n")
    files = [str(tmp_path / "t1" / "image.npy"), str(tmp_path / "t0" / "image.npy")]
    args = argparse.Namespace(dates=None, metadata=str(meta), files=files)
    assert _series_dates(args, get_source(tiles.name)) == [[20200102], [20200101, 20200301]]
    args.files = [str(tmp_path / "t9" / "image.npy")]
    with pytest.raises(DataError, match="dates.txt: no 't9'"):
        _series_dates(args, tiles)
    args.metadata, args.files = None, files
    assert _series_dates(args, tiles) == [None, None]


def test_a_source_without_a_metadata_file_says_so(tmp_path):
    args = argparse.Namespace(dates=None, metadata=str(tmp_path / "m.json"), files=["x.tif"])
    with pytest.raises(DataError, match=r"m\.json: eurosat_ms has no metadata file of "
                                        r"acquisition dates"):
        _series_dates(args, get_source("eurosat_ms"))
    item = Item("x", "test", tmp_path / "x.tif", 0)
    assert get_source("eurosat_ms").example_input(item, tmp_path) == (item.path, None)


def test_the_pastis_source_reads_its_metadata_and_examples(tmp_path):
    from geopeft.data.synthetic_pastis import generate_pastis

    generate_pastis(tmp_path / "raw", n_patches=10, size=8)
    src = get_source("pastis")
    items = src.scan(tmp_path / "raw", {})
    path, dates = src.example_input(items[0], tmp_path)
    assert path.is_file() and path.name == f"S2_{items[0].name}.npy"
    assert dates == items[0].extra["dates"] and len(dates) == np.load(path).shape[0]
    meta = next((tmp_path / "raw").rglob("metadata.geojson"))
    assert src.input_dates(meta, [path]) == [dates]
    with pytest.raises(DataError, match=r"S2_999\.npy: patch 999 is not in"):
        src.input_dates(meta, [tmp_path / "S2_999.npy"])


def test_predicts_help_is_made_from_the_registries(monkeypatch, tiles):
    text = predict_description()
    for s in REGISTRY.values():
        if s.study_dataset and s.input_format != Source.input_format:
            assert s.input_format.replace("`", "") in text
    for t in TASKS.values():
        assert f"{t.name}: {', '.join(t.csv_header('top-k'))}" in text
    assert "probability >= 0.5" in text and "a tiles dates.txt" in text
    monkeypatch.setattr(TASKS["multilabel"], "threshold", 0.4)
    assert "probability >= 0.4" in predict_description()
