"""The source registry: what each dataset downloads, with the checksums documented in
shared/notes/datasets.md. Values marked (unverified) there were read in third-party code, not at
the publisher; this test pins them so that a changed value is a visible, reviewed change, and the
download step reports a mismatch with both values if the publisher's file differs."""

import pytest

from geopeft.data.fetch import remotes_for
from geopeft.data.sources import DataError, get_source

DOCUMENTED = {
    # dataset: {file: (md5, size or None, verified at the publisher?)}
    "eurosat_ms": {"EuroSAT_MS.zip": ("091174add3c8e680a49244acf185b9f0", 2_065_402_329, False),
                   "eurosat-train.txt": ("908f142e73d6acdf3f482c5e80d851b1", None, True),
                   "eurosat-val.txt": ("95de90f2aa998f70a3b2416bfe0687b4", None, True),
                   "eurosat-test.txt": ("7ae5ab94471417b6e315763121e67c5f", None, True)},
    "eurosat_rgb": {"EuroSAT_RGB.zip": ("f46e308c4d50d4bf32fedad2d3d62f3b", 94_658_721, False)},
    "bigearthnet_s2": {
        "BigEarthNet-S2.tar.zst": ("2245ed2d1a93f6ce637d839bc856396e", 63_251_710_377, True),
        "metadata.parquet": ("55687065e77b6d0b0f1ff604a6e7b49c", 3_616_349, True),
        "metadata_for_patches_with_snow_cloud_or_shadow.parquet":
            ("fe31856f4986d446c9468b59d6387c91", 710_162, True)},
    "bigearthnet_s2_v1": {"BigEarthNet-S2-v1.0.tar.gz": ("5a64e9ce38deb036a435a7b59494924c", None, True)},
}


@pytest.mark.parametrize("dataset", sorted(DOCUMENTED))
def test_registry_matches_documented_checksums(dataset):
    remotes = {r.name: r for r in get_source(dataset).remotes}
    for name, (md5, size, _verified) in DOCUMENTED[dataset].items():
        assert remotes[name].md5 == md5
        assert remotes[name].size == size
        assert remotes[name].urls[0].startswith("https://")


def test_real_v2_metadata_checksum_matches_the_shared_copy():
    """The two BigEarthNet v2 parquet checksums were verified on the real files in shared/."""
    import hashlib

    from conftest import SHARED

    folder = SHARED / "data" / "real" / "bigearthnet_v2_metadata"
    if not folder.is_dir():
        pytest.skip("../shared absent")
    remotes = {r.name: r for r in get_source("bigearthnet_s2").remotes}
    for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        data = (folder / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == remotes[name].md5
        assert len(data) == remotes[name].size


def test_mirrors_come_first_and_override():
    r = remotes_for("eurosat_rgb", mirrors=["http://127.0.0.1:9/m/"])
    assert r[0].urls[0] == "http://127.0.0.1:9/m/EuroSAT_RGB.zip" and "zenodo" in r[0].urls[1]
    o = remotes_for("eurosat_rgb", override=[{"name": "x.zip", "urls": ["http://127.0.0.1:9/x.zip"]}])
    assert [x.name for x in o] == ["x.zip"]
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_source("nope")
