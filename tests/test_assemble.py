"""Assembling a raw folder from downloaded files (``geopeft fetch``): crash-safe at every step,
and bounded in what an archive may unpack to (issue 37, items 3 and 5)."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from geopeft.data.extract import ArchiveError, ArchiveTooLargeError, extract
from geopeft.data.fetch import assemble
from geopeft.data.sources import DataError

KILLED = 137
#: the calls a kill is simulated in place of: every change to the file system assembling makes
STEPS = [(os, "replace"), (os, "rename"), (os, "link"), (os, "unlink"), (os, "rmdir"),
         (os, "mkdir"), (os, "write"), (shutil, "copy2")]


def _downloads(folder: Path) -> list[Path]:
    """A zip and a tar.gz of folders, and a plain file: what a source downloads."""
    folder.mkdir()
    with zipfile.ZipFile(folder / "a.zip", "w") as zf:
        zf.writestr("A/x.txt", "x" * 300)
        zf.writestr("A/sub/y.txt", "why")
        zf.writestr("top.txt", "top")
    with tarfile.open(folder / "b.tar.gz", "w:gz") as tf:
        for name, data in (("B/z.txt", b"zed"), ("B/w.bin", bytes(range(256)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (folder / "meta.csv").write_text("id,label\n1,2\n")
    return [folder / "a.zip", folder / "b.tar.gz", folder / "meta.csv"]


def _content(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _killed_at(k: int, files: list[Path], out: Path) -> bool:
    """Run ``assemble`` in a forked child that dies (``os._exit``: no cleanup, as SIGKILL)
    in place of its ``k``-th file-system change; whether it died before finishing."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            calls = [0]

            def step(fn):
                def wrapped(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == k:
                        os._exit(KILLED)
                    return fn(*args, **kwargs)
                return wrapped

            for module, name in STEPS:
                setattr(module, name, step(getattr(module, name)))
            assemble("eurosat_rgb", files, out)
            os._exit(0)
        except BaseException:
            os._exit(1)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, KILLED), f"the child failed (exit {code}) at step {k}"
    return code == KILLED


def test_a_fetch_killed_at_any_step_is_resumed_or_redone_never_accepted_partial(tmp_path):
    files = _downloads(tmp_path / "downloads")
    expected = _content(assemble("eurosat_rgb", files, tmp_path / "ref" / "raw"))
    assert "A/sub/y.txt" in expected and "B/w.bin" in expected and "meta.csv" in expected
    out = tmp_path / "data" / "raw"
    for keep_old in (False, True):  # as Snakemake runs it (the output removed first), by hand
        k = 1
        while True:
            if not keep_old:
                shutil.rmtree(out, ignore_errors=True)
            died = _killed_at(k, files, out)
            if out.exists():  # the raw folder only ever appears complete
                assert _content(out) == expected, f"a partial raw folder after a kill at step {k}"
            assemble("eurosat_rgb", files, out)  # the rerun
            assert _content(out) == expected, f"the rerun after a kill at step {k}"
            left = sorted(p.name for p in out.parent.iterdir() if p.name != ".raw.lock")
            assert left == ["raw"], f"stranded after a kill at step {k}: {left}"
            if not died:
                break
            k += 1
        assert k > 20  # every step of two archives and a file was interrupted once


def test_what_a_killed_fetch_of_before_left_is_redone_not_accepted(tmp_path):
    """The state of issue 37: part of an archive moved into a temporary raw folder, the rest in
    its extraction folder, whose marker says complete."""
    files = _downloads(tmp_path / "downloads")
    expected = _content(assemble("eurosat_rgb", files, tmp_path / "ref" / "raw"))
    data = tmp_path / "data"
    extract(files[0], data / ".raw.a.zip.x")
    (data / ".raw.tmp-k1ll3d").mkdir()
    os.replace(data / ".raw.a.zip.x" / "A", data / ".raw.tmp-k1ll3d" / "A")
    assert _content(assemble("eurosat_rgb", files, data / "raw")) == expected
    assert sorted(p.name for p in data.iterdir() if p.name != ".raw.lock") == ["raw"]


def test_a_second_fetch_of_the_same_folder_is_refused_while_one_runs(tmp_path):
    files = _downloads(tmp_path / "downloads")
    out = tmp_path / "data" / "raw"
    out.parent.mkdir()
    with open(out.parent / ".raw.lock", "a+") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match=r"another geopeft fetch \(pid 4242\) is assembling"):
            assemble("eurosat_rgb", files, out)
    assert not out.exists()


# ------------------------------------------------------------------------- decompressed size
BOMB = 3 << 20  # 3 MiB of zeros: a few KB compressed


def _bomb(path: Path) -> Path:
    """One member of BOMB zeros, with a small one before it."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ds/small.txt", "ok")
            zf.writestr("ds/zeros.bin", bytes(BOMB))
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in (("ds/small.txt", b"ok"), ("ds/zeros.bin", bytes(BOMB))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert path.stat().st_size < 64 << 10
    return path


def _only(folder: Path, *names: str) -> None:
    """Nothing but ``names`` in ``folder``: no destination, no half extraction."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tar.gz"])
def test_an_archive_over_the_limit_is_refused_before_anything_is_written(tmp_path, name, monkeypatch):
    arch = _bomb(tmp_path / name)
    monkeypatch.setattr(os, "open", lambda *a, **k: pytest.fail("a member was written"))
    with pytest.raises(ArchiveTooLargeError) as err:
        extract(arch, tmp_path / "out", max_bytes=64 << 10)
    assert str(err.value) == (f"{arch}: its members unpack to 3,145,730 bytes, over the limit of "
                              f"65,536 bytes (limits.max_extract_bytes)")
    _only(tmp_path, name)


def test_an_archive_larger_than_the_free_disk_is_refused_before_anything_is_written(
        tmp_path, monkeypatch):
    arch = _bomb(tmp_path / "bomb.zip")
    monkeypatch.setattr("geopeft.data.extract.shutil.disk_usage",
                        lambda p: shutil._ntuple_diskusage(10 << 20, 9 << 20, 1 << 20))
    with pytest.raises(ArchiveTooLargeError, match=re.escape(
            f"{arch}: its members unpack to 3,145,730 bytes, more than the 1,048,576 bytes free "
            f"in {tmp_path}")):
        extract(arch, tmp_path / "out")
    _only(tmp_path, "bomb.zip")


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tar.gz"])
def test_bytes_written_past_the_limit_are_refused_whatever_the_headers_declare(
        tmp_path, name, monkeypatch):
    arch = _bomb(tmp_path / name)
    monkeypatch.setattr("geopeft.data.extract._scan", lambda path: (2, 10))  # headers that lie
    written = [0]
    real_write = os.write

    def counting_write(fd, data):
        n = real_write(fd, data)
        written[0] += n
        return n

    monkeypatch.setattr(os, "write", counting_write)
    with pytest.raises(ArchiveTooLargeError, match=re.escape(
            f"{arch}: member 'ds/zeros.bin' takes the bytes written past the limit of 65,536 "
            f"bytes (limits.max_extract_bytes)")):
        extract(arch, tmp_path / "out", max_bytes=64 << 10)
    assert written[0] <= 64 << 10
    _only(tmp_path, name)


def test_a_full_disk_while_extracting_is_one_error_naming_the_folder(tmp_path, monkeypatch):
    arch = _bomb(tmp_path / "bomb.tar.gz")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ArchiveError) as err:
        extract(arch, tmp_path / "out")
    assert re.fullmatch(re.escape(f"{arch}: no space left in ") + r"\S+/\.out\.extracting while "
                        r"writing member 'ds/small\.txt' \(0 bytes written\); nothing is kept",
                        str(err.value))
    _only(tmp_path, "bomb.tar.gz")


def test_geopeft_fetch_applies_the_limit_and_says_so_in_one_line(tmp_path, capsys):
    from geopeft import cli

    files = _downloads(tmp_path / "downloads")
    bomb = _bomb(tmp_path / "downloads" / "bomb.zip")
    out = tmp_path / "data" / "raw"
    assert cli.main(["fetch", "--dataset", "eurosat_rgb", "--out", str(out),
                     "--max-extract-bytes", str(64 << 10), *map(str, files), str(bomb)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"geopeft fetch: error: {bomb}: its members unpack to 3,145,730 bytes, "
                       f"over the limit of 65,536 bytes (limits.max_extract_bytes)")
    _only(out.parent, ".raw.lock")  # no raw folder, no half assembly


@pytest.mark.slow  # a Snakemake dry run, about 2 s
def test_a_studys_extract_limit_reaches_geopeft_fetch(tmp_path):
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / ".test" / "config.yaml").read_text())
    cfg["data"] = {"dataset": "eurosat_rgb", "source": "download", "bands": ["B04", "B03", "B02"],
                   "remotes": [{"name": "EuroSAT_RGB.zip", "urls": ["http://127.0.0.1:9/x.zip"],
                                "size": 10}]}
    cfg["backbone"]["weights"] = "none"
    cfg["limits"] = {"max_extract_bytes": 4096}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "1",
                        "-n", "-p", "all"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fetch = [line for line in r.stdout.splitlines() if "geopeft fetch " in line]
    assert len(fetch) == 1 and " --max-extract-bytes 4096 " in fetch[0], fetch
