"""Safe, restartable extraction of zip, tar.gz and tar.zst archives.

Every member is checked before anything is written: absolute paths, ``..`` components, and
symbolic or hard links whose target would land outside the destination are refused
(:class:`UnsafeArchiveError`). Extraction goes into a temporary sibling folder that is renamed to
the destination only when every member is out, with a ``.geopeft-extracted`` marker naming the
archive; a killed extraction leaves only the temporary folder, which the next run removes and
redoes, never a half tree that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from geopeft.errors import GeopeftError

MARKER = ".geopeft-extracted"


class UnsafeArchiveError(GeopeftError, ValueError):
    """An archive member would be written outside the destination folder."""


def _check_name(archive: Path, name: str) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in norm.split("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} leaves the destination ('..')")


def _check_link(archive: Path, name: str, target: str, hard: bool) -> None:
    t = target.replace("\\", "/")
    if t.startswith("/"):
        raise UnsafeArchiveError(f"{archive}: link {name!r} points to the absolute path {target!r}")
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, t))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: link {name!r} -> {target!r} points outside")


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    name = path.name.lower()
    if name.endswith((".tar.zst", ".tzst")):
        import zstandard

        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                yield tf
    else:
        with tarfile.open(path, mode="r:*") as tf:
            yield tf


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.bz2"))


def check_archive(path: Path) -> int:
    """Validate every member without extracting; returns the member count."""
    path = Path(path)
    n = 0
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_name(path, info.filename)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:  # a symlink stored in a zip
                    _check_link(path, info.filename, zf.read(info).decode(), hard=False)
                n += 1
        return n
    if not _is_tar(path):
        raise ValueError(f"{path}: unknown archive type (zip, tar, tar.gz, tar.zst)")
    with _open_tar(path) as tf:
        for m in tf:
            _check_tar_member(path, m)
            n += 1
    return n


def _check_tar_member(path: Path, m: tarfile.TarInfo) -> None:
    _check_name(path, m.name)
    if m.issym() or m.islnk():
        _check_link(path, m.name, m.linkname, hard=m.islnk())
    elif not (m.isfile() or m.isdir()):
        raise UnsafeArchiveError(f"{path}: member {m.name!r} is a device or fifo")


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` atomically; a completed ``dest`` is left as it is.

    Args:
        archive: a zip, tar.gz or tar.zst file.
        dest: the folder to extract into.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest`` (nothing is extracted).
    """
    archive, dest = Path(archive), Path(dest)
    if (dest / MARKER).is_file():
        return dest
    check_archive(archive)  # refuse before writing anything
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed run
    tmp.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with _open_tar(archive) as tf:
                for m in tf:  # streamed: tar.zst cannot seek
                    _check_tar_member(archive, m)
                    tf.extract(m, tmp, filter="data")
        (tmp / MARKER).write_text(f"{archive.name}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
