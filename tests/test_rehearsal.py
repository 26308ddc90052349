"""Rehearsal of the real studies: the transform (only sizes and sources change), the fixtures'
formats, and (slow) every documented `geopeft rehearse` command run as written, end to end
through the real download and weight-loading paths against the fixture server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geopeft import config as gcfg
from geopeft.models.summary import describe_spec

ROOT = Path(__file__).resolve().parents[1]
REAL = {"eurosat_lora": ROOT / "config/studies/eurosat_lora.yaml",
        "fusion_lora": ROOT / "config/studies/fusion_lora.yaml",
        "shaping_ft": ROOT / "config/studies/shaping_ft.yaml"}


def _fake_fixtures(folder: Path) -> dict:
    """A manifest naming every file and weight of the real studies (no content needed here)."""
    from geopeft.rehearsal import study_needs

    manifest: dict = {"version": 1, "datasets": {}, "weights": {}}
    for path in REAL.values():
        datasets, weights = study_needs(gcfg.resolve([path]))
        for ds in datasets:
            from geopeft.data.sources import get_source

            manifest["datasets"][ds] = [{"name": r.name, "path": f"files/{ds}/{r.name}",
                                         "md5": "0" * 32, "size": 10} for r in get_source(ds).remotes]
        for w in weights:
            manifest["weights"][w] = {"path": f"files/weights/{abs(hash(w))}.bin", "sha256": "a" * 64}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9"}))
    return manifest


@pytest.mark.parametrize("study", list(REAL))
def test_a_rehearsal_changes_only_sizes_and_sources(study, tmp_path):
    folder = tmp_path / "fx"
    manifest = _fake_fixtures(folder)
    real = gcfg.resolve([REAL[study]])
    reh = gcfg.resolve([REAL[study]], {"rehearsal": str(folder)})
    assert reh["study"] == f"{study}_rehearsal" and reh["data"]["root"] == "data/rehearsal"
    rows = gcfg.study_rows(reh)
    specs = [gcfg.job_spec(reh, r) for r in rows]
    assert all(s["rehearsal"] is True for s in specs)
    # the same architectures, adapters and fusion per strategy, and the same datasets
    real_rows = [describe_spec(s) for s in gcfg.job_specs(real)]
    got = [describe_spec(s) for s in gcfg.job_specs(reh)]

    def kind(r):
        return json.dumps([r["backbone"], r["weights"] if r["backbone"] else None, r["lora"],
                           r["fusion"], r["segmentation"], r["method"]], sort_keys=True)

    real_kind = {r["strategy"]: kind(r) for r in real_rows}
    assert sorted(r["strategy"] for r in got) == sorted(real_kind)  # every strategy, once
    for r in got:
        if r["backbone"] and r["weights"].startswith("url:"):
            r["weights"] = next(x["weights"] for x in real_rows if x["strategy"] == r["strategy"])
        assert kind(r) == real_kind[r["strategy"]], r["strategy"]
    # smaller: one seed, 1 epoch, batches of at most 8; both ends of every other axis (sequence
    # lengths: the shortest and the longest of at most REHEARSAL_MAX_DATES dates)
    assert {r["seed"] for r in got} == {min(r["seed"] for r in real_rows)}
    assert {r["epochs"] for r in got} == {1} and max(r["batch_size"] for r in got) <= 8
    for axis in ("dataset", "label_fraction", "sequence_length"):
        values = sorted({r[axis] for r in real_rows if r[axis] is not None})
        if axis == "sequence_length" and values:
            values = [v for v in values if v <= gcfg.REHEARSAL_MAX_DATES] or values[:1]
            assert max(values) < max(r[axis] for r in real_rows if r[axis] is not None)
        if values:
            assert {r[axis] for r in got} == {values[0], values[-1]}, axis
    assert reh["resources"]["gpus"] == 0 and reh["threads"] == 1
    on_gpu = gcfg.resolve([REAL[study]], {"rehearsal": str(folder), "rehearsal_gpus": 1})
    assert on_gpu["resources"]["gpus"] == 1 and on_gpu["threads"] == real["threads"]
    def but_threads(c):  # the same jobs, only the CPU threads of each differ
        return [{k: v for k, v in s.raw.items() if k != "threads"} for s in gcfg.job_specs(c)]

    assert but_threads(on_gpu) == but_threads(reh)
    # sources: every file from the fixture server, checked against the manifest's checksum
    for r in reh["data"]["remotes"]:
        fx = next(f for f in manifest["datasets"][r["dataset"]] if f["name"] == r["name"])
        assert r["urls"] == [f"http://127.0.0.1:9/{fx['path']}"] and r["md5"] == fx["md5"]
    for s in specs:
        bb = s["backbone"]
        if bb is None or s["row"]["method"] == "scratch":
            continue
        real_w = next(gcfg.row_backbone(real, r) for r in gcfg.study_rows(real)
                      if r["strategy"] == s["row"]["strategy"])["weights"]
        pin = manifest["weights"][real_w]
        assert bb["sha256"] == pin["sha256"]
        if real_w.startswith("timm:"):  # the real timm path, from the fixture file
            assert bb["weights"] == real_w and bb["file"] == str(folder / pin["path"])
        else:  # the real url path: downloaded from the fixture server
            assert bb["weights"] == f"url:http://127.0.0.1:9/{pin['path']}"


def test_a_rehearsal_without_fixtures_says_what_to_start(tmp_path):
    with pytest.raises(gcfg.ConfigError, match=r"rehearsal: .*manifest\.json not found: start the "
                                               r"fixture server first \(uv run geopeft "
                                               r"rehearsal-server"):
        gcfg.resolve([REAL["eurosat_lora"]], {"rehearsal": str(tmp_path / "none")})
    with pytest.raises(gcfg.ConfigError, match=r"rehearsal: data\.source is 'synthetic'"):
        _fake_fixtures(tmp_path / "fx")
        gcfg.resolve([ROOT / "config/config.yaml"], {"rehearsal": str(tmp_path / "fx")})


def test_rehearse_takes_its_options_anywhere_and_passes_what_follows_the_dashes(monkeypatch):
    """``geopeft rehearse STUDY --dir D -- -n``: --dir is the rehearsal's (argparse's
    remainder once swallowed it, and Snakemake read it as its own --directory); only what
    follows ``--`` goes to Snakemake; other commands take nothing there."""
    from geopeft import cli

    seen = []
    monkeypatch.setattr(cli.study, "cmd_rehearse", seen.append)  # where the parser finds it
    monkeypatch.setattr("geopeft.jobserver.run_remote", lambda *a: None)
    assert cli.main(["rehearse", "config/studies/eurosat_lora.yaml", "--dir", "/tmp/fx",
                     "--cores", "3", "--", "-n", "--dir", "x"]) == 0
    args = seen[0]
    assert (args.study, args.dir, args.cores) == ("config/studies/eurosat_lora.yaml", "/tmp/fx",
                                                  "3")
    assert args.snakemake_args == ["-n", "--dir", "x"] and args.gpus == 0
    cli.main(["rehearse", "config/studies/eurosat_lora.yaml"])
    assert seen[1].snakemake_args == [] and seen[1].dir == ".rehearsal"
    with pytest.raises(SystemExit):
        cli.main(["backbones", "--", "-n"])


def test_snakemake_switch_strings_are_booleans(tmp_path):
    cfg = gcfg.resolve([REAL["eurosat_lora"]], {"rehearsal": "false"})
    assert cfg["rehearsal"] is False and cfg["study"] == "eurosat_lora"


@pytest.mark.parametrize(("name", "wrapper"), [("ssl4eo_s12_vits16_dino", None),
                                               ("ssl4eo_s12_vits16_mae", "model")])
def test_url_weight_fixtures_are_in_the_published_format(tmp_path, name, wrapper):
    import timm

    from geopeft.models.zoo import REGISTRY
    from geopeft.rehearsal import _weights_file

    e = REGISTRY[name]
    path = _weights_file(e.weights, tmp_path)
    assert path.name.startswith("rehearsal-") and path.suffix == ".pth"
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj[wrapper] if wrapper else obj
    assert (wrapper is None) == ("patch_embed.proj.weight" in obj)
    ref = timm.create_model("vit_small_patch16_224", num_classes=0, in_chans=13).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ref.items()}


# ---------------------------------------------------------------- dataset fixtures, by source
def _code_words(path: Path) -> str:
    """The code of a module, lower-cased, without its docstrings and comments."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree).lower()


def test_the_rehearsal_names_no_dataset():
    """The rehearsal writes every dataset's fixture through its source (``Source.fixture_samples``,
    ``Source.write_fixtures``) and every weight's through its encoder family
    (``EncoderFamily.fixture_checkpoint``): its code, docstrings and comments aside, names none
    of them."""
    from geopeft.data.sources import REGISTRY
    from geopeft.models.families import names

    code = _code_words(ROOT / "src" / "geopeft" / "rehearsal.py")
    words = {w for name in REGISTRY for w in (name, name.split("_")[0])}
    words |= {f for f in names() if f != "vit"}  # "vit" is in too many words
    assert "make_fixtures" in code and "def _weights_file" in code  # the code is all there
    named = sorted(w for w in words if w in code)
    assert not named, f"src/geopeft/rehearsal.py names datasets {named} outside its docstrings"


def test_every_fixture_dataset_declares_a_loadable_writer():
    import importlib

    from geopeft.data.sources import REGISTRY, DataError
    from geopeft.rehearsal import _dataset_files, fixture_datasets

    have = fixture_datasets()
    assert {"eurosat_ms", "eurosat_rgb", "bigearthnet_s2", "pastis"} <= set(have)
    for name in have:
        module, func = REGISTRY[name].fixtures.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    no = next(n for n in sorted(REGISTRY) if n not in have)
    with pytest.raises(gcfg.ConfigError, match=rf"no fixtures for dataset {no!r} \(have .*pastis"):
        _dataset_files(no, Path("/nonexistent/work"), Path("/nonexistent/out"))
    with pytest.raises(DataError, match=rf"{no}: no rehearsal fixture writer"):
        REGISTRY[no].write_fixtures(Path("/nonexistent/out"), Path("/nonexistent/work"))


def test_a_dataset_registered_at_run_time_gets_its_fixture_without_touching_the_rehearsal(tmp_path):
    """A new dataset is its source (with its fixture writer) and one registry entry: the rehearsal
    writes its files and manifest entries, in the layout its source reads back."""
    import hashlib
    import shutil
    import zipfile

    from geopeft.data.download import Remote
    from geopeft.data.fixtures import zip_tree
    from geopeft.data.sources import REGISTRY
    from geopeft.data.sources.eurosat import _RGB, EUROSAT_CLASSES, SPLIT_REMOTES, EuroSAT
    from geopeft.data.synthetic import WorldSpec, generate_eurosat
    from geopeft.rehearsal import fixture_datasets, make_fixtures

    class TinyRGB(EuroSAT):
        def write_fixtures(self, out: Path, work: Path) -> None:
            generate_eurosat(WorldSpec(seed=3, n_samples=self.fixture_samples), None, work)
            zip_tree(work / self.layout, self.layout, out / "tiny.zip")
            for part in ("train", "val", "test"):
                shutil.copy(work / f"eurosat-{part}.txt", out / f"eurosat-{part}.txt")

    tiny = TinyRGB("tiny_rgb", classes=EUROSAT_CLASSES, remotes=(  # type: ignore[arg-type]
        Remote("tiny.zip", ("https://example.invalid/tiny.zip",)), *SPLIT_REMOTES), **_RGB)
    tiny.fixture_samples = 40  # its fixture's size: what makes it a fixture dataset
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(REGISTRY, "tiny_rgb", tiny)
        assert "tiny_rgb" in fixture_datasets()
        manifest = make_fixtures(tmp_path / "fx", ["tiny_rgb"], [])
        entries = manifest["datasets"]["tiny_rgb"]
        assert [e["name"] for e in entries] == [r.name for r in tiny.remotes]
        for e in entries:
            f = tmp_path / "fx" / e["path"]
            assert e["path"] == f"files/tiny_rgb/{e['name']}" and f.stat().st_size == e["size"]
            assert hashlib.md5(f.read_bytes()).hexdigest() == e["md5"]
        assert json.loads((tmp_path / "fx" / "manifest.json").read_text()) == manifest
        raw = tmp_path / "raw"  # as the download step unpacks it, its source reads it
        with zipfile.ZipFile(tmp_path / "fx" / "files" / "tiny_rgb" / "tiny.zip") as zf:
            zf.extractall(raw)
        for part in ("train", "val", "test"):
            shutil.copy(tmp_path / "fx" / "files" / "tiny_rgb" / f"eurosat-{part}.txt", raw)
        items = tiny.scan(raw, {})
        assert len(items) == 40 and {i.split for i in items} == {"train", "val", "test"}
    assert "tiny_rgb" not in REGISTRY and "tiny_rgb" not in fixture_datasets()


# ---------------------------------------------------------------- end to end, as documented
def documented_rehearsals() -> list[tuple[str, str]]:
    found = {}
    for f in [ROOT / "README.md", *sorted((ROOT / "config" / "studies").glob("*.yaml"))]:
        for m in re.finditer(r"(?:uv run )?geopeft rehearse (config/studies/\w+\.yaml)", f.read_text()):
            found.setdefault(m.group(1), (str(f.relative_to(ROOT)), m.group(0)))
    return sorted(found.values(), key=lambda x: x[1])


DOCUMENTED = documented_rehearsals()


def test_every_real_study_documents_its_rehearsal():
    assert {Path(shlex.split(c)[-1]).stem for _, c in DOCUMENTED} == set(REAL)


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    """One fixture folder for all rehearsals (each working copy links it as .rehearsal)."""
    return tmp_path_factory.mktemp("rehearsal_fixtures")


EXPECT = {"eurosat_lora": 2, "fusion_lora": 5, "shaping_ft": 6}


@pytest.mark.slow
@pytest.mark.parametrize(("source", "cmd"), DOCUMENTED, ids=[c for _, c in DOCUMENTED])
def test_documented_rehearsal_runs_the_real_study_end_to_end(source, cmd, tmp_path, fixtures):
    import pandas as pd
    from PIL import Image

    wd = tmp_path / "wd"
    wd.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (wd / name).symlink_to(ROOT / name)
    (wd / ".rehearsal").symlink_to(fixtures)
    words = shlex.split(cmd)
    words = words[2:] if words[:2] == ["uv", "run"] else words
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    r = subprocess.run(words, cwd=wd, env=env, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - t0
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    study = Path(words[-1]).stem
    res = wd / "results" / f"{study}_rehearsal"
    df = pd.read_csv(res / "runs.csv")
    assert len(df) == EXPECT[study] and df["rehearsal"].all() and not df["synthetic"].any()
    assert "REHEARSAL: fixture data and random weights" in (res / "table.tex").read_text()
    pngs = sorted((res / "figures").glob("*.png"))
    assert pngs and all("REHEARSAL" in Image.open(p).text.get("Description", "") for p in pngs)
    # data came through the real download rule from the fixture server, verified
    downloads = sorted(p.name for p in (wd / "data/rehearsal/downloads").rglob("*") if p.is_file())
    assert downloads and not [p for p in downloads if p.endswith(".part")]
    # the real models, with weights loaded through the real timm:/url: paths
    cfg = gcfg.resolve([ROOT / "config/studies" / f"{study}.yaml"])
    for _, row in df.iterrows():
        rec = json.loads((res / "runs" / row["run"] / "model" / "run.json").read_text())
        spec_bb = rec["spec"]["backbone"]
        if spec_bb is not None and rec["spec"]["row"]["method"] != "scratch":
            real = gcfg.row_backbone(cfg, next(x for x in gcfg.study_rows(cfg)
                                               if x["strategy"] == row["strategy"]))["weights"]
            if real.startswith("timm:"):
                assert rec["model"]["weights"] == f"{real} (file model.safetensors)"
            else:
                assert rec["model"]["weights"].startswith("url:rehearsal-")
    if study == "eurosat_lora":
        assert set(df["total_params"]) >= {85_806_346}  # ViT-B/16 + a 10-class head
    con = sqlite3.connect(wd / "results" / "mlflow.db")
    tags = con.execute(
        "select t.value from tags t join runs r on t.run_uuid = r.run_uuid join experiments e on "
        "r.experiment_id = e.experiment_id where t.key = 'rehearsal' and e.name = ?",
        (f"{study}_rehearsal",)).fetchall()
    assert len(tags) == len(df) and {t[0] for t in tags} == {"True"}
    print(f"\n{cmd}: {took:.0f} s, {len(df)} runs")


def test_the_fixture_server_answers_a_range_past_the_end_with_416(tmp_path):
    import urllib.error
    import urllib.request

    from geopeft.rehearsal import FixtureServer

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.bin").write_bytes(b"0123456789")

    def get(srv: FixtureServer, rng: str) -> tuple[int, str | None, bytes]:
        req = urllib.request.Request(f"{srv.url}/files/a.bin", headers={"Range": rng})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Range"), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Range"), err.read()

    with FixtureServer(tmp_path) as srv:
        assert get(srv, "bytes=4-") == (206, "bytes 4-9/10", b"456789")
        assert get(srv, "bytes=10-") == (416, "bytes */10", b"")  # start at the end
        assert get(srv, "bytes=99-") == (416, "bytes */10", b"")  # start past it
