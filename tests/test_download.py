import hashlib
import io
import os
import tarfile
import zipfile

import pytest
import zstandard
from fileserver import FaultServer

from geopeft.data.download import ChecksumError, DownloadError, Remote, check_space, download
from geopeft.data.extract import MARKER, UnsafeArchiveError, check_archive, extract

BODY = os.urandom(3 * (1 << 20) + 12345)  # a few chunks, so a cut lands mid-body
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def server():
    with FaultServer({"data.bin": BODY}) as s:
        yield s


def remote(server, **kw):
    base = {"md5": MD5, "size": len(BODY)}
    base.update(kw)
    return Remote("data.bin", (f"{server.url}/data.bin",), **base)


def fetch(server, tmp_path, **kw):
    return download(remote(server, **kw), tmp_path / "data.bin", retries=4, backoff=0.01,
                    timeout=kw.pop("timeout", 5), progress=False)


def test_plain_download_verified(server, tmp_path):
    out = fetch(server, tmp_path)
    assert out.read_bytes() == BODY
    assert not list(tmp_path.glob("*.part"))


def test_cut_mid_body_resumes_with_range(server, tmp_path):
    server.faults["data.bin"] = ["cut"]
    out = fetch(server, tmp_path)
    assert out.read_bytes() == BODY
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0


def test_503_then_success(server, tmp_path):
    server.faults["data.bin"] = ["503", "503"]
    assert fetch(server, tmp_path).read_bytes() == BODY
    assert len(server.requests) == 3


def test_slow_response_times_out_then_succeeds(server, tmp_path):
    server.faults["data.bin"] = ["slow"]
    r = remote(server)
    out = download(r, tmp_path / "data.bin", retries=3, backoff=0.01, timeout=0.5, progress=False)
    assert out.read_bytes() == BODY
    assert len(server.requests) >= 2


def test_range_unsupported_restarts_from_zero(server, tmp_path):
    server.faults["data.bin"] = ["cut", "norange"]
    assert fetch(server, tmp_path).read_bytes() == BODY


def test_wrong_bytes_is_a_clear_error_and_kept_aside(server, tmp_path):
    server.faults["data.bin"] = ["corrupt"]
    with pytest.raises(ChecksumError, match=r"md5 [0-9a-f]{32} does not match the expected " + MD5):
        fetch(server, tmp_path)
    assert not (tmp_path / "data.bin").exists()
    assert len(list(tmp_path.glob("data.bin.bad-*"))) == 1


def test_mirror_fallback_and_all_failing(server, tmp_path):
    r = Remote("data.bin", (f"{server.url}/missing.bin", f"{server.url}/data.bin"), md5=MD5)
    assert download(r, tmp_path / "a.bin", retries=2, backoff=0.01, progress=False).read_bytes() == BODY
    bad = Remote("x", (f"{server.url}/missing.bin",), md5=MD5)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(bad, tmp_path / "b.bin", retries=2, backoff=0.01, progress=False)
    assert not (tmp_path / "b.bin").exists()


def test_persistent_5xx_gives_up(server, tmp_path):
    server.faults["data.bin"] = ["503"] * 10
    with pytest.raises(DownloadError, match="HTTP 503"):
        fetch(server, tmp_path)


def test_disk_space_check(tmp_path):
    with pytest.raises(DownloadError, match="GB free, the download needs"):
        check_space(tmp_path, 10**18)


# ------------------------------------------------------------------------------- extraction
def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_extract_zip_targz_tarzst(tmp_path):
    members = [("ds/a.txt", b"alpha", "file", None), ("ds/sub/b.txt", b"beta", "file", None),
               ("ds/link.txt", b"", "sym", "a.txt")]
    _tar(tmp_path / "a.tar.gz", members)
    raw = tmp_path / "a.tar"
    _tar(raw, members, mode="w")
    (tmp_path / "a.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw.read_bytes()))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("ds/a.txt", "alpha")
        zf.writestr("ds/sub/b.txt", "beta")
    for arch in ("a.tar.gz", "a.tar.zst", "a.zip"):
        out = extract(tmp_path / arch, tmp_path / f"out-{arch}")
        assert (out / "ds" / "sub" / "b.txt").read_text() == "beta"
        assert (out / MARKER).is_file()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../evil.txt", b"x", "file", None)], r"'\.\./evil\.txt' leaves the destination"),
        ([("/etc/evil", b"x", "file", None)], "has an absolute path"),
        ([("ds/l", b"", "sym", "../../outside")], "points outside"),
        ([("ds/l", b"", "sym", "/etc/passwd")], "points to the absolute path"),
    ],
)
def test_malicious_archives_refused(tmp_path, members, message):
    _tar(tmp_path / "bad.tar.gz", [("ds/ok.txt", b"ok", "file", None), *members])
    with pytest.raises(UnsafeArchiveError, match=message):
        extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_zip_traversal_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(UnsafeArchiveError):
        check_archive(tmp_path / "bad.zip")


def test_killed_extraction_is_redone_not_trusted(tmp_path):
    _tar(tmp_path / "a.tar.gz", [("ds/a.txt", b"alpha", "file", None)])
    half = tmp_path / ".out.extracting"  # what a kill leaves behind
    (half / "ds").mkdir(parents=True)
    (half / "ds" / "partial").write_text("half")
    out = extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (out / "ds" / "a.txt").read_text() == "alpha"
    assert not (out / "ds" / "partial").exists() and not half.exists()
    # a destination without the marker (half copied by hand) is not trusted either
    (out / MARKER).unlink()
    (out / "ds" / "a.txt").write_text("tampered")
    assert (extract(tmp_path / "a.tar.gz", out) / "ds" / "a.txt").read_text() == "alpha"
