"""Atomic files and folders, JSON, and the zarr store writer."""

from __future__ import annotations

import numpy as np
import pytest

from geopeft.data.prepare import open_store
from geopeft.data.store import StoreWriter
from geopeft.io import atomic_dir, atomic_file, canonical_json, read_json, write_json


def test_atomic_dir_replaces_whole_or_leaves_the_old(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "one"  # the old folder, whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_atomic_file_and_json(tmp_path):
    f = tmp_path / "x.json"
    with pytest.raises(ValueError), atomic_file(f) as fh:
        fh.write("{")
        raise ValueError
    assert not f.exists() and list(tmp_path.iterdir()) == []
    write_json(f, {"b": np.float32(1.5), "a": np.arange(2), "p": tmp_path})
    assert read_json(f) == {"b": 1.5, "a": [0, 1], "p": str(tmp_path)}
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1})


def test_store_writer_stats_from_train_only_and_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 1000, (6, 2, 3, 3)).astype(np.uint16)
    labels = np.array([0, 1, 0, 1, 0, 1], np.int16)
    splits = np.array(["train", "train", "val", "test", "train", "val"])

    def write(path, imgs):
        w = StoreWriter(path, 6, ["B04", "B08"], (2, 3, 3), ("band", "y", "x"), "uint16", chunk=4)
        w.write(0, imgs[:4], labels[:4], splits[:4])
        w.write(4, imgs[4:], labels[4:], splits[4:])
        return w.close(np.array([f"s{i}" for i in range(6)]), splits, {"dataset": "t"})

    attrs = write(tmp_path / "a.zarr", images)
    train = images[splits == "train"].astype(np.float64)
    assert np.allclose(attrs["norm_mean"], train.mean(axis=(0, 2, 3)))
    assert np.allclose(attrs["norm_std"], train.std(axis=(0, 2, 3)))
    assert attrs["counts"] == {"train": 3, "val": 2, "test": 1} and attrs["norm_split"] == "train"
    ds = open_store(tmp_path / "a.zarr")
    assert np.array_equal(ds["image"].values, images) and ds["band"].values.tolist() == ["B04", "B08"]
    assert write(tmp_path / "b.zarr", images)["fingerprint"] == attrs["fingerprint"]
    changed = images.copy()
    changed[5, 0, 0, 0] += 1  # a val pixel: statistics stay, the fingerprint does not
    other = write(tmp_path / "c.zarr", changed)
    assert other["fingerprint"] != attrs["fingerprint"] and other["norm_mean"] == attrs["norm_mean"]


def test_store_writer_refuses_a_store_without_training_samples(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", 1, ["B04"], (1, 2, 2), ("band", "y", "x"), "uint16")
    w.write(0, np.zeros((1, 1, 2, 2), np.uint16), np.zeros(1, np.int16), np.array(["val"]))
    with pytest.raises(ValueError, match="the train split is empty"):
        w.close(np.array(["a"]), np.array(["val"]), {})


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755),
                                                              (0o002, 0o664, 0o775),
                                                              (0o077, 0o600, 0o700)])
def test_results_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Results on shared storage: a colleague of the group reads them as any file made with this
    umask (not the 0600/0700 of the temporary files they are written through)."""
    import os

    import torch
    from safetensors.torch import save_file

    from geopeft.io import follow_umask

    old = os.umask(umask)
    try:
        write_json(tmp_path / "run.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as d:
            (d / "x").write_text("x")
            save_file({"w": torch.zeros(2)}, str(d / "w.safetensors"))  # written 0600
            (d / "adapter").mkdir()
            save_file({"w": torch.zeros(2)}, str(d / "adapter" / "a.safetensors"))
            (d / "kept").write_text("k")
            os.chmod(d / "kept", 0o640)  # a mode a writer chose: left as it is
            follow_umask(d)
    finally:
        os.umask(old)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    for f in ("w.safetensors", "adapter/a.safetensors"):
        assert (tmp_path / "model" / f).stat().st_mode & 0o777 == file_mode, f
    assert (tmp_path / "model" / "kept").stat().st_mode & 0o777 == 0o640
