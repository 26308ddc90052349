import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard
from fileserver import FaultServer

from geopeft.data.download import ChecksumError, DownloadError, Remote, check_space, download
from geopeft.data.extract import MARKER, ArchiveError, UnsafeArchiveError, check_archive, extract

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


def test_no_wait_after_a_mirrors_last_attempt(server, tmp_path, monkeypatch):
    import geopeft.data.download as dl

    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    server.faults["data.bin"] = ["503"] * 10
    r = Remote("data.bin", (f"{server.url}/data.bin", f"{server.url}/data.bin"), md5=MD5)
    with pytest.raises(DownloadError, match="HTTP 503"):
        download(r, tmp_path / "a.bin", retries=3, backoff=1.0, progress=False)
    assert waits == [1.0, 2.0, 1.0, 2.0]  # 3 attempts per mirror, waits only between them


def test_a_bad_body_moves_on_to_the_next_mirror(tmp_path, caplog):
    with FaultServer({"data.bin": BODY, "mirror.bin": BODY}) as s:
        s.faults["data.bin"] = ["corrupt"] * 10
        r = Remote("data.bin", (f"{s.url}/data.bin", f"{s.url}/mirror.bin"), md5=MD5)
        with caplog.at_level("INFO"):
            out = download(r, tmp_path / "data.bin", retries=3, backoff=0.01, progress=False)
        assert out.read_bytes() == BODY
        assert [n for n, _ in s.requests] == ["data.bin", "mirror.bin"]  # no retry of bad bytes
    assert len(list(tmp_path.glob("data.bin.bad-*"))) == 1  # the bad body kept aside
    assert "trying the next mirror" in caplog.text and "downloaded and verified" in caplog.text
    with FaultServer({"data.bin": BODY, "mirror.bin": BODY}) as s:
        s.faults = {"data.bin": ["corrupt"] * 10, "mirror.bin": ["corrupt"] * 10}
        r = Remote("data.bin", (f"{s.url}/data.bin", f"{s.url}/mirror.bin"), md5=MD5)
        with pytest.raises(ChecksumError, match="from every mirror"):
            download(r, tmp_path / "b.bin", retries=3, backoff=0.01, progress=False)


def test_a_stale_partial_file_that_fails_is_downloaded_again_from_the_same_mirror(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(os.urandom(1000))  # left by another release
    out = fetch(server, tmp_path)
    assert out.read_bytes() == BODY
    ranges = [r for _, r in server.requests]
    assert ranges == ["bytes=1000-", None]  # resumed, failed the checksum, then from scratch
    assert len(list(tmp_path.glob("data.bin.bad-*"))) == 1


def test_a_size_only_remote_says_size_checked_not_verified(server, tmp_path, caplog):
    with caplog.at_level("INFO"):
        fetch(server, tmp_path, md5=None)
    assert "downloaded and size checked" in caplog.text and "verified" not in caplog.text


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
            if kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = link
                tf.addfile(info)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, kind, link in members:
            if kind in ("sym", "hard"):  # zip has symlinks only (mode bits); no hard links
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, link)
            elif kind == "dir":
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                zf.writestr(name, data)


def _archive(path: Path, members) -> Path:
    """``members`` as zip, tar.gz or tar.zst (by the name's suffix)."""
    if path.name.endswith(".zip"):
        _zip(path, members)
    elif path.name.endswith(".tar.zst"):
        raw = path.with_name(path.name + ".raw.tar")
        _tar(raw, members, mode="w")
        path.write_bytes(zstandard.ZstdCompressor().compress(raw.read_bytes()))
        raw.unlink()
    else:
        _tar(path, members)
    return path


def _long_symlink_chain():
    """The CVE-2025-4517 pattern: nested folders with 247-character names reached through
    one-letter symlinks, a link whose resolved path exceeds PATH_MAX, an escaping link through
    it, then a new file and a hard link written through the escape."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append((f"{path}{comp}", b"", "dir", None))
        members.append((f"{path}{step}", b"", "sym", comp))
        path = f"{path}{comp}/"
    long_link = "/".join(steps) + "/" + "l" * 254
    members.append((long_link, b"", "sym", "../" * len(steps)))
    members.append(("escape", b"", "sym", long_link + "/" + "../" * 2))
    members.append(("escape/pwned.txt", b"written outside", "file", None))
    members.append(("overwrite", b"", "hard", "escape/victim.txt"))
    members.append(("overwrite", b"overwritten", "file", None))
    return members


CHAINS = {
    "long-chain": _long_symlink_chain(),
    "short-chain": [("a/b", b"", "dir", None), ("a/b/up", b"", "sym", "../.."),
                    ("esc", b"", "sym", "a/b/up/.."), ("esc/pwned.txt", b"x", "file", None)],
    "hardlink": [("ok.txt", b"ok", "file", None), ("hl", b"", "hard", "../victim.txt"),
                 ("hl", b"overwritten", "file", None)],
}


@pytest.mark.parametrize("suffix", ["tar.gz", "tar.zst", "zip"])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_archives_with_links_are_refused_and_write_nothing_anywhere(tmp_path, chain, suffix):
    if suffix == "zip" and chain == "hardlink":
        pytest.skip("zip has no hard links")
    box = tmp_path / "box"  # the archive is extracted in box/work/out; box/ is "outside"
    (box / "work").mkdir(parents=True)
    victim = box / "victim.txt"
    victim.write_text("original")
    arch = _archive(tmp_path / f"bad.{suffix}", CHAINS[chain])
    before = sorted(p for p in tmp_path.rglob("*") if p != arch)
    pattern = re.escape(f"bad.{suffix}") + r": member '.+' is a (symbolic|hard) link"
    with pytest.raises(UnsafeArchiveError, match=pattern):
        extract(arch, box / "work" / "out")
    assert victim.read_text() == "original"
    assert sorted(p for p in tmp_path.rglob("*") if p != arch) == before  # nothing new anywhere


def test_a_refused_archive_is_one_geopeft_error_line(tmp_path):
    arch = _archive(tmp_path / "bad.tar.gz", CHAINS["short-chain"])
    r = subprocess.run([sys.executable, "-m", "geopeft.cli", "fetch", "--dataset", "eurosat_rgb",
                        "--out", str(tmp_path / "raw"), str(arch)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("geopeft fetch: error: ") and str(arch) in lines[0]
    assert "member 'a/b/up' is a symbolic link" in lines[0]
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("members", [
    [("a", b"", "dir", None), ("a", b"file over a folder", "file", None)],
    [("a", b"a file", "file", None), ("a/b", b"under a file", "file", None)],
], ids=["file-over-folder", "file-as-folder"])
def test_members_that_collide_are_one_error_naming_the_member(tmp_path, members):
    arch = _archive(tmp_path / "clash.tar.gz", members)
    with pytest.raises(ArchiveError, match=r"clash\.tar\.gz: member 'a(/b)?' cannot be written"):
        extract(arch, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_link_already_in_the_folder_is_never_followed(tmp_path):
    """The second line of defence: were a link ever in the extraction folder (links are refused
    before anything is written, so none can be), a member through it is refused, and a file
    member is never opened through one."""
    from geopeft.data.extract import Budget, _target, _write

    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "esc").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeArchiveError, match="'esc/x' resolves outside the destination"):
        _target(Path("a.tar"), root, "esc/x")
    (tmp_path / "victim").write_text("original")
    (root / "sub" / "f").symlink_to(tmp_path / "victim")
    with pytest.raises(ArchiveError, match="member 'sub/f' cannot be written"):
        _write(Path("a.tar"), root, "sub/f", io.BytesIO(b"overwritten"), Budget(Path("a.tar"), 99))
    assert (tmp_path / "victim").read_text() == "original"
    assert not list((tmp_path / "outside").iterdir())


def test_a_corrupt_archive_is_one_error_naming_it(tmp_path):
    for name in ("bad.tar.gz", "bad.zip", "bad.tar.zst"):
        (tmp_path / name).write_bytes(b"\x1f\x8b not really an archive" * 10)
        with pytest.raises(ArchiveError, match=re.escape(name) + ": not a readable archive"):
            extract(tmp_path / name, tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists()


def test_extract_zip_targz_tarzst(tmp_path):
    members = [("ds/a.txt", b"alpha", "file", None), ("ds/sub/b.txt", b"beta", "file", None)]
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
        ([("ds/l", b"", "sym", "../../outside")], "'ds/l' is a symbolic link"),
        ([("ds/l", b"", "sym", "/etc/passwd")], "'ds/l' is a symbolic link"),
        ([("ds/l", b"", "sym", "ok.txt")], "'ds/l' is a symbolic link"),  # even one inside
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
