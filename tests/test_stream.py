"""Splits left in the store and read chunk by chunk (geopeft.data.stream): the same samples as a
whole load, an epoch order that reads each chunk about once, training and resuming from them,
and one decision by size."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from conftest import backbone_cfg

from geopeft.data import prepare as prep
from geopeft.data.dataset import load_split, load_splits, store_info
from geopeft.data.sources import DataError
from geopeft.data.stream import StoreImages, chunk_order, stream_decision
from geopeft.models.classifier import build_classifier
from geopeft.spec import LoraSpec, Temporal, TrainArgs
from geopeft.strategies import apply_strategy
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


def _streamed(store, split="train", workers=0):
    sp = load_split(store, split, stream=True)
    sp.x.workers = workers
    return sp


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_run_resumes_bitwise(chunked_store, tmp_path, monkeypatch, workers):
    """Stopped (as on SIGTERM) after step 5 of 2 epochs x 6 steps and resumed from its state:
    the weights and history of the uninterrupted run (read in the training process); the
    epoch's chunk order is in the state. With reader processes, the same."""
    from geopeft.train import loop

    args = TrainArgs(epochs=2, batch_size=8, seed=0, progress=False, checkpoint_every=1,
                     checkpoint_minutes=0)
    ref_model = _model(chunked_store)
    ref = fit(ref_model, _streamed(chunked_store), None, args)
    calls = {"n": 0}

    def stop_at_five() -> bool:
        calls["n"] += 1
        return calls["n"] == 5

    monkeypatch.setattr(loop, "stop_requested", stop_at_five)
    monkeypatch.setattr(loop, "install_sigterm_handler", lambda: None)
    ckpt = Checkpointer(tmp_path / "state", 1, 0)
    with pytest.raises(Preempted):
        fit(_model(chunked_store), _streamed(chunked_store, workers=workers), None, args,
            checkpointer=ckpt)
    monkeypatch.setattr(loop, "stop_requested", lambda: False)
    saved = ckpt.latest()
    assert saved["step"] == 5 and saved["order"] is not None
    resumed_model = _model(chunked_store)
    res = fit(resumed_model, _streamed(chunked_store, workers=workers), None, args,
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


def test_reader_processes_give_the_batches_of_the_training_process(chunked_store):
    """Batches read by 2 reader processes (DataLoader workers decompressing chunks ahead) are
    those read in the training process, and each chunk a batch needs is read once while it is
    kept (the plan of reads follows the cache)."""
    x = load_split(chunked_store, "train", stream=True).x
    order = chunk_order(x.chunk_of(), torch.Generator().manual_seed(3)).numpy()
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    local = list(x.batches(batches, workers=0))
    reads = x.reads
    x.reads = 0
    ahead = list(x.batches(batches, workers=2))
    assert x.reads <= reads  # no more chunk reads than one process with the same cache
    assert x.reads == len(np.unique(x.chunk_of()))  # a window of 4 chunks, 8 kept: each once
    assert len(ahead) == len(local) == len(batches)
    for a, b, p in zip(ahead, local, batches, strict=True):
        assert a.dtype == x.dtype and np.array_equal(a, b) and np.array_equal(b, x[p])
    stopped = x.batches(batches, workers=2)
    next(stopped)
    stopped.close()  # an epoch stopped early (SIGTERM) stops its readers


def test_training_with_reader_processes_is_bitwise_the_same(chunked_store):
    args = TrainArgs(epochs=2, batch_size=8, seed=0, progress=False)
    models, results = [], []
    for workers in (0, 2):
        models.append(_model(chunked_store))
        results.append(fit(models[-1], _streamed(chunked_store, workers=workers),
                           _streamed(chunked_store, "val", workers=workers), args))
    assert results[0]["history"] == results[1]["history"]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_a_corrupt_chunk_read_by_a_reader_process_names_store_and_samples(chunked_store,
                                                                          tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(chunked_store, broken)
    chunk_files = sorted(p for p in (broken / "image").rglob("*") if p.is_file()
                         and p.name != "zarr.json")
    chunk_files[1].write_bytes(b"not a chunk")
    x = load_split(broken, "train", stream=True).x
    with pytest.raises(DataError) as err:
        list(x.batches([slice(i, i + 8) for i in range(0, len(x), 8)], workers=2))
    msg = str(err.value)
    assert re.match(r".*broken\.zarr: cannot read image chunk \d+ \(samples \d+-\d+\)", msg)
    assert "Traceback" not in msg and "worker" not in msg


def test_a_killed_reader_process_stops_the_job_with_a_clear_error(chunked_store, monkeypatch):
    """A reader process killed (as by the kernel out of memory) fails the read at once with an
    error naming the store, not a hang."""
    import os
    import signal
    import time

    parent = os.getpid()
    read = StoreImages._read

    def killed_in_a_child(self, c):
        if os.getpid() != parent and c >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return read(self, c)

    monkeypatch.setattr(StoreImages, "_read", killed_in_a_child)
    x = load_split(chunked_store, "train", stream=True).x
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"ms\.zarr: a reader process of the image chunks failed"
                                        r" \(.*(killed|exited unexpectedly)"):
        list(x.batches([np.arange(i, min(i + 8, len(x))) for i in range(0, len(x), 8)],
                       workers=2))
    assert time.monotonic() - t0 < 60


def test_a_source_s_planned_sample_size_is_the_store_s(chunked_store):
    """What ``geopeft validate --resolved`` counts per sample is what a job holds per sample."""
    from geopeft.data.sources import REGISTRY

    x = load_split(chunked_store, "train", stream=True).x
    assert REGISTRY["eurosat_ms"].sample_bytes(4, {"size": x.shape[-1]}) == x.nbytes // len(x)
    assert REGISTRY["eurosat_ms"].sample_bytes(4, {}) == 4 * 64 * 64 * 2  # the published side
    assert REGISTRY["eurosat_rgb"].sample_bytes(3, {}) == 3 * 64 * 64
    assert REGISTRY["bigearthnet_s2"].sample_bytes(6, {"size": 60}) == 6 * 60 * 60 * 2
    assert REGISTRY["pastis"].sample_bytes(10, {}, length=35) == 35 * 10 * 128 * 128 * 2


def test_the_job_memory_is_the_least_of_its_limits_and_shared_by_its_ranks(monkeypatch):
    """The machine's own memory and cgroup are replaced, so that the figures hold on any test
    machine (a laptop with 8 GB, a container with a cgroup limit)."""
    from geopeft.data import stream

    monkeypatch.setattr(stream, "_machine_memory_mb", lambda: (20_000.0, "available memory"))
    monkeypatch.setattr(stream, "_cgroup_limit_mb", lambda: None)
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert stream.memory_budget_mb() == (20_000.0, "available memory")
    assert stream.memory_budget_mb(8000) == (8000.0, "the job's resources.mem_mb")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "6000")
    assert stream.memory_budget_mb(8000) == (6000.0, "SLURM allocation (SLURM_MEM_PER_NODE)")
    monkeypatch.setattr(stream, "_cgroup_limit_mb", lambda: (3000.0, "cgroup limit (memory.max)"))
    assert stream.memory_budget_mb(8000) == (3000.0, "cgroup limit (memory.max)")
    assert stream.memory_budget_mb(4000, ranks=2) == (1500.0, "cgroup limit (memory.max), "
                                                              "shared by 2 processes")


def test_the_cgroup_limit_is_read_from_v2_else_v1(tmp_path):
    """memory.max (v2) first, then memory.limit_in_bytes (v1); 'max' and v1's huge 'unlimited'
    figure are no limit."""
    from geopeft.data import stream

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    files = (str(v2), str(v1))
    assert stream._cgroup_limit_mb(files) is None  # neither file
    v1.write_text("9223372036854771712\n")  # v1 without a limit
    assert stream._cgroup_limit_mb(files) is None
    v1.write_text("2147483648\n")
    assert stream._cgroup_limit_mb(files) == (2048.0, f"cgroup limit ({v1})")
    v2.write_text("max\n")  # v2 says no limit: v1's figure is not v2's
    assert stream._cgroup_limit_mb(files) == (2048.0, f"cgroup limit ({v1})")
    v2.write_text("4294967296\n")
    assert stream._cgroup_limit_mb(files) == (4096.0, f"cgroup limit ({v2})")


def test_a_whole_read_holds_one_chunk_beside_its_output(chunked_store):
    """Reading a split whole (as a job that loads it does) takes its chunks one at a time: the
    peak of memory is the output and a few chunks, not every chunk of the split at once."""
    import tracemalloc

    lazy = load_split(chunked_store, "train", stream=True).x
    x = StoreImages(chunked_store, lazy.idx, cache_chunks=1)
    chunk_bytes = x.chunk * x.nbytes // len(x)
    n_chunks = len(np.unique(x.chunk_of()))
    assert n_chunks >= 10
    tracemalloc.start()
    out = x[slice(None)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # (zarr's buffers take a few chunks more; holding all of them took 13)
    assert peak < out.nbytes + 8 * chunk_bytes, (peak, out.nbytes, chunk_bytes)


def test_a_pickled_copy_reads_the_same_without_the_readers(chunked_store):
    """Where worker processes are spawned (macOS, Windows), DataLoader pickles what it sends
    them: a copy of streamed images holds no reader processes, open array or cache, and reads
    the same samples."""
    import pickle

    x = load_split(chunked_store, "train", stream=True).x
    order = chunk_order(x.chunk_of(), torch.Generator().manual_seed(1)).numpy()
    batches = [order[i : i + 8] for i in range(0, 24, 8)]
    first = next(x.batches(batches, workers=2))  # readers started, array open, cache filled
    copy = pickle.loads(pickle.dumps(x))
    assert copy._loader is None and copy._arr is None and copy._cache == {}
    assert np.array_equal(copy[batches[0]], first) and np.array_equal(copy[5:9], x[5:9])
    x.close()
