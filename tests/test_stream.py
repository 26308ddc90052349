"""Splits left in the store and read chunk by chunk (geopeft.data.stream): the same samples as a
whole load, an epoch order that reads each chunk about once, training and resuming from them,
and one decision by size."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from conftest import backbone_cfg

from geopeft.data import prepare as prep
from geopeft.data.dataset import load_split, load_splits, store_info
from geopeft.data.sources import DataError
from geopeft.data.stream import StoreImages, chunk_order, stream_decision
from geopeft.models.classifier import build_classifier
from geopeft.models.strategies import apply_strategy
from geopeft.spec import LoraSpec, Temporal, TrainArgs
from geopeft.train.loop import fit
from geopeft.train.resume import Checkpointer, Preempted


@pytest.fixture(scope="module")
def chunked_store(world, tmp_path_factory):
    """The test world's MS store written in chunks of 8 samples (13 chunks)."""
    out = tmp_path_factory.mktemp("chunked") / "ms.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep, "CHUNK", 8)
        prep.prepare("eurosat_ms", world["ms"], ["B04", "B03", "B02", "B08"], out)
    return out


def test_streamed_images_are_the_whole_load_s(chunked_store):
    whole = load_split(chunked_store, "train")
    lazy = load_split(chunked_store, "train", stream=True)
    x = lazy.x
    assert isinstance(x, StoreImages) and x.chunk == 8
    assert (x.shape, x.dtype, len(x)) == (whole.x.shape, whole.x.dtype, len(whole.x))
    assert x.nbytes == whole.x.nbytes and np.array_equal(lazy.y, whole.y)
    assert np.array_equal(x[3:17], whole.x[3:17])
    pos = np.array([40, 2, 17, 2, 33])  # any order, repeats
    assert np.array_equal(x[pos], whole.x[pos])
    assert np.array_equal(x[torch.tensor([5, 1])], whole.x[[5, 1]])
    assert np.array_equal(x[7], whole.x[7])
    assert np.array_equal(np.asarray(x), whole.x)


def test_streamed_series_are_cut_to_their_dates_like_a_whole_load(tmp_path):
    from geopeft.data.synthetic_pastis import generate_pastis

    root = tmp_path / "PASTIS"
    generate_pastis(root, n_patches=10, size=24, seed=4)
    store = tmp_path / "p.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep, "CHUNK", 3)
        prep.prepare("pastis", root, ["B04", "B08"], store)
    for pad in ("repeat", "mask"):
        t = Temporal(80, (80, 6), pad, "2018-09-01") if pad == "mask" else \
            Temporal(6, (35, 6), pad, "2018-09-01")
        whole = load_split(store, "train", temporal=t)
        lazy = load_split(store, "train", temporal=t, stream=True)
        assert lazy.x.shape == whole.x.shape and np.array_equal(np.asarray(lazy.x), whole.x)
        assert np.array_equal(lazy.dates, whole.dates)


def test_chunk_order_visits_chunks_a_window_at_a_time():
    chunks = np.repeat(np.arange(10), 8)[np.random.default_rng(0).permutation(80)]
    a = chunk_order(chunks, torch.Generator().manual_seed(1), window=3)
    assert sorted(a.tolist()) == list(range(80))  # every sample once
    b = chunk_order(chunks, torch.Generator().manual_seed(1), window=3)
    assert torch.equal(a, b)  # from the generator alone
    gen = torch.Generator().manual_seed(1)
    first, second = chunk_order(chunks, gen, window=3), chunk_order(chunks, gen, window=3)
    assert not torch.equal(first, second)  # the next epoch draws another order
    seen = chunks[a.numpy()]
    windows = [set(seen[i : i + 24]) for i in range(0, 72, 24)]  # 3 chunks of 8 each
    assert all(len(w) == 3 for w in windows) and len(set(seen[72:])) == 1


def _model(store, seed=0):
    info = store_info(store)
    torch.manual_seed(seed)
    m, _ = build_classifier(backbone_cfg(), info, len(info.classes))
    return apply_strategy(m, "lora", LoraSpec(r=4, alpha=8, dropout=0.1))


def test_training_from_the_store_reads_each_chunk_about_once_an_epoch(chunked_store):
    lazy = load_split(chunked_store, "train", stream=True)
    val = load_split(chunked_store, "val", stream=True)
    chunks = len(np.unique(lazy.x.chunk_of()))
    args = TrainArgs(epochs=2, batch_size=8, seed=0, progress=False)
    res = fit(_model(chunked_store), lazy, val, args)
    assert len(res["history"]) == 2 and math.isfinite(res["history"][-1]["val_loss"])
    # a window of 4 chunks shuffled together and 8 kept: no chunk is read twice in an epoch
    assert lazy.x.reads <= 2 * chunks
    whole = fit(_model(chunked_store), load_split(chunked_store, "train"), None, args)
    assert whole["history"][0]["train_loss"] == pytest.approx(
        res["history"][0]["train_loss"], rel=0.2)  # the same task, another sample order


def test_a_streamed_run_resumes_bitwise(chunked_store, tmp_path, monkeypatch):
    """Stopped (as on SIGTERM) after step 5 of 2 epochs x 6 steps and resumed from its state:
    the weights and history of the uninterrupted run; the epoch's chunk order is in the state."""
    from geopeft.train import loop

    args = TrainArgs(epochs=2, batch_size=8, seed=0, progress=False, checkpoint_every=1,
                     checkpoint_minutes=0)
    ref_model = _model(chunked_store)
    ref = fit(ref_model, load_split(chunked_store, "train", stream=True), None, args)
    calls = {"n": 0}

    def stop_at_five() -> bool:
        calls["n"] += 1
        return calls["n"] == 5

    monkeypatch.setattr(loop, "stop_requested", stop_at_five)
    monkeypatch.setattr(loop, "install_sigterm_handler", lambda: None)
    ckpt = Checkpointer(tmp_path / "state", 1, 0)
    with pytest.raises(Preempted):
        fit(_model(chunked_store), load_split(chunked_store, "train", stream=True), None, args,
            checkpointer=ckpt)
    monkeypatch.setattr(loop, "stop_requested", lambda: False)
    saved = ckpt.latest()
    assert saved["step"] == 5 and saved["order"] is not None
    resumed_model = _model(chunked_store)
    res = fit(resumed_model, load_split(chunked_store, "train", stream=True), None, args,
              checkpointer=ckpt, resume=saved)
    assert res["history"] == ref["history"]
    for (n, a), b in zip(ref_model.state_dict().items(), resumed_model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), n


def test_one_decision_by_size_stated_in_the_log(chunked_store, caplog):
    caplog.set_level(logging.INFO, logger="geopeft.data.stream")
    whole = load_splits(chunked_store, [("train", None), ("val", None)], budget=(1e6, "test"))
    assert all(isinstance(s.x, np.ndarray) for s in whole)
    assert "loading the splits whole" in caplog.text and "test" in caplog.text
    tiny = load_splits(chunked_store, [("train", None), ("val", None)], budget=(0.01, "test"))
    assert all(isinstance(s.x, StoreImages) for s in tiny)
    assert "streaming batches from the store" in caplog.text
    nbytes = sum(s.x.nbytes for s in tiny)
    assert stream_decision(nbytes, "s", (2 * nbytes / 2**20 + 1, "x")) is False
    assert stream_decision(nbytes, "s", (2 * nbytes / 2**20 - 1, "x")) is True


def test_a_corrupt_chunk_names_the_store_and_the_samples(chunked_store, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(chunked_store, broken)
    chunk_files = sorted(p for p in (broken / "image").rglob("*") if p.is_file()
                         and p.name != "zarr.json")
    chunk_files[1].write_bytes(b"not a chunk")
    lazy = load_split(broken, "train", stream=True)
    with pytest.raises(DataError, match=r"broken\.zarr: cannot read image chunk \d+ \(samples"):
        np.asarray(lazy.x)
