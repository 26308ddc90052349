"""Real-source path of the workflow against a local HTTP server on 127.0.0.1: download (with
injected faults), verify, extract, assemble and prepare, exactly as for the embedded world."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
import xarray as xr
import yaml
import zstandard
from fileserver import FaultServer

from geopeft.data.synthetic import WorldSpec, generate_eurosat
from geopeft.data.synthetic_bigearthnet import generate_bigearthnet

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _zip_dir(folder: Path, arcroot: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcroot}/{p.relative_to(folder)}")
    return buf.getvalue()


def _tar_zst_dir(folder: Path, arcroot: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        tf.add(folder, arcname=arcroot)
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def _remote(server, name, body):
    return {"name": name, "urls": [f"{server.url}/{name}"], "md5": hashlib.md5(body).hexdigest(),
            "size": len(body)}


def _run(wd: Path, cfg: dict, target: str):
    path = wd / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                           str(wd), "--configfile", str(path), "--cores", "2", target],
                          env=env, capture_output=True, text=True, timeout=600)


def _layout(cfg):
    """The data tree of a test study, as the rules name it."""
    from geopeft import config as study_config

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(cfg, fh)
        fh.flush()
        return study_config.data_layout(study_config.resolve([fh.name], {}))


def _base_cfg(dataset, bands):
    cfg = yaml.safe_load((ROOT / "config" / ".test" / "config.yaml").read_text())
    cfg["data"] = {"dataset": dataset, "source": "download", "bands": bands}
    cfg["backbone"]["weights"] = "none"
    return cfg


def test_eurosat_download_extract_prepare(tmp_path):
    world = tmp_path / "world"
    # 64 px: the real EuroSAT's size, which every downloaded file is checked against
    generate_eurosat(WorldSpec(seed=2, n_samples=60, size=64), None, world)
    files = {"EuroSAT_RGB.zip": _zip_dir(world / "EuroSAT_RGB", "EuroSAT_RGB")}
    for part in ("train", "val", "test"):
        files[f"eurosat-{part}.txt"] = (world / f"eurosat-{part}.txt").read_bytes()
    with FaultServer(files) as server:
        server.faults["EuroSAT_RGB.zip"] = ["503", "cut"]
        cfg = _base_cfg("eurosat_rgb", ["B04", "B03", "B02"])
        cfg["data"]["remotes"] = [_remote(server, n, b) for n, b in files.items()]
        wd = tmp_path / "wd"
        wd.mkdir()
        # its own remotes: the raw and prepared folders are tagged (geopeft.config.data_layout)
        target = _layout(cfg).store("eurosat_rgb", "B04-B03-B02")
        assert "-w" in target
        r = _run(wd, cfg, target)
        assert r.returncode == 0, r.stderr[-4000:]
    ds = xr.open_zarr(wd / target, zarr_format=3, consolidated=False)
    assert ds.image.shape == (60, 3, 64, 64)
    assert (wd / "data" / "downloads" / "eurosat_rgb" / "EuroSAT_RGB.zip").is_file()
    assert not list((wd / "data" / "downloads").rglob("*.part"))
    # the same data prepared from the embedded generator gives the same fingerprint
    from geopeft.data.prepare import prepare

    ref = prepare("eurosat_rgb", world, ["B04", "B03", "B02"], tmp_path / "ref.zarr")
    assert ds.attrs["fingerprint"] == ref["fingerprint"]


def test_bigearthnet_tar_zst_with_checksum_mismatch_then_fixed(tmp_path):
    raw = tmp_path / "ben"
    generate_bigearthnet(raw, n_patches=12, seed=5, cloudy_share=0.2)
    files = {"BigEarthNet-S2.tar.zst": _tar_zst_dir(raw / "BigEarthNet-S2", "BigEarthNet-S2")}
    for n in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        files[n] = (raw / n).read_bytes()
    with FaultServer(files) as server:
        cfg = _base_cfg("bigearthnet_s2", ["B02", "B03", "B04", "B08", "B11", "B12"])
        cfg["backbone"]["input_size"] = 32  # 120x120 patches, tiny 32x32 ViT
        cfg["data"]["remotes"] = [_remote(server, n, b) for n, b in files.items()]
        wd = tmp_path / "wd"
        wd.mkdir()
        server.faults["metadata.parquet"] = ["corrupt"] * 10
        r = _run(wd, cfg, "all")
        assert r.returncode != 0
        log = (wd / "data" / "logs" / "download" / "bigearthnet_s2-metadata.parquet.log").read_text()
        assert "does not match the expected" in log
        assert not (wd / "data" / "downloads" / "bigearthnet_s2" / "metadata.parquet").exists()
        server.faults["metadata.parquet"] = []
        r = _run(wd, cfg, "all")  # fetched, prepared, trained (multi-label) and evaluated
        assert r.returncode == 0, r.stderr[-4000:]
    assert (wd / "results" / "ci_tiny" / "runs.csv").is_file()
    store = wd / _layout(cfg).store("bigearthnet_s2", "B02-B03-B04-B08-B11-B12")
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False)
    assert ds.label.shape[1] == 19 and ds.image.shape[1:] == (6, 120, 120)


def test_local_data_is_not_downloaded(tmp_path):
    world = tmp_path / "mine"
    generate_eurosat(WorldSpec(seed=2, n_samples=40, size=16), None, world)
    cfg = _base_cfg("eurosat_rgb", ["B04", "B03", "B02"])
    cfg["data"].update(source="local", raw_dir=str(world))
    wd = tmp_path / "wd"
    wd.mkdir()
    target = _layout(cfg).store("eurosat_rgb", "B04-B03-B02")  # data/prepared/local-w<tag>/...
    r = _run(wd, cfg, target)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (wd / "data" / "downloads").exists() and not (wd / "data" / "raw").exists()
    store = xr.open_zarr(wd / target, zarr_format=3,
                         consolidated=False)
    assert store.attrs["raw_dir"] == str(world) and store.image.shape[0] == 40
