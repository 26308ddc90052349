import json
import subprocess
import sys

import numpy as np
import pytest

from geopeft.data.subsets import label_fraction_subset, subset_file_name

LABELS = np.repeat(np.arange(5), [200, 150, 100, 300, 250])
np.random.default_rng(0).shuffle(LABELS)


def test_nested_across_fractions():
    s = {f: set(label_fraction_subset(LABELS, f, seed=3)) for f in (0.01, 0.1, 0.5, 1.0)}
    assert s[0.01] <= s[0.1] <= s[0.5] <= s[1.0]
    assert len(s[1.0]) == len(LABELS)


def test_stratified_every_class_keeps_its_share():
    idx = label_fraction_subset(LABELS, 0.1, seed=0)
    for c, n in zip(*np.unique(LABELS, return_counts=True), strict=True):
        assert (LABELS[idx] == c).sum() == round(0.1 * n)
    tiny = label_fraction_subset(LABELS, 0.001, seed=0)
    assert set(LABELS[tiny]) == set(range(5))  # at least one per class


def test_seeded_reproducible_and_seed_dependent():
    a = label_fraction_subset(LABELS, 0.1, seed=1)
    assert np.array_equal(a, label_fraction_subset(LABELS, 0.1, seed=1))
    assert not np.array_equal(a, label_fraction_subset(LABELS, 0.1, seed=2))


def test_random_method_and_bad_values():
    r = label_fraction_subset(LABELS, 0.2, seed=0, method="random")
    assert len(r) == 200 and set(r) <= set(label_fraction_subset(LABELS, 0.5, 0, "random"))
    with pytest.raises(ValueError, match="not in"):
        label_fraction_subset(LABELS, 0.0, seed=0)
    with pytest.raises(ValueError, match="method"):
        label_fraction_subset(LABELS, 0.5, seed=0, method="greedy")


def test_cache_key_holds_method_fraction_seed():
    names = {subset_file_name(m, f, s) for m in ("stratified", "random") for f in (0.1, 0.5)
             for s in (0, 1)}
    assert len(names) == 8


def test_cli_subset_only_train_samples(rgb_store, tmp_path):
    import xarray as xr

    out = tmp_path / "s.json"
    subprocess.run([sys.executable, "-m", "geopeft.cli", "subset", "--store", str(rgb_store),
                    "--fraction", "0.5", "--seed", "0", "--out", str(out)], check=True)
    sub = json.loads(out.read_text())
    split = xr.open_zarr(rgb_store, zarr_format=3, consolidated=False).split.values
    assert (split[sub["samples"]] == "train").all()
    assert sub["method"] == "stratified" and sub["fraction"] == 0.5 and sub["seed"] == 0


def test_multilabel_stratified_by_rarest_label():
    from geopeft.data.subsets import strata

    rng = np.random.default_rng(0)
    y = (rng.random((400, 6)) < [0.6, 0.4, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
    y[:5] = 0  # unlabelled samples
    s = strata(y)
    assert (s[:5] == -1).all()
    assert all(y[i, s[i]] == 1 for i in range(5, 400) if s[i] >= 0)
    small = set(label_fraction_subset(y, 0.1, seed=0))
    big = set(label_fraction_subset(y, 0.5, seed=0))
    assert small <= big
    # the rarest class keeps (about) its share instead of vanishing
    rare = np.flatnonzero(y[:, 5])
    assert len(set(rare) & big) >= round(0.5 * (s == 5).sum())
