"""Safe, restartable extraction of zip, tar.gz and tar.zst archives.

Dataset archives hold files and folders only, so that is all geopeft extracts: symbolic links,
hard links, devices and fifos are refused, as are absolute paths and ``..`` components
(:class:`UnsafeArchiveError`, naming the archive and the member). Every member is checked before
anything is written, and geopeft writes each file itself -- no link is ever created, each path is
resolved against the real extraction folder before it is opened, and the file is opened without
following a link -- so extraction cannot write outside its folder whatever Python's own tarfile
filters do at this patch level (the symlink-chain escapes of CVE-2025-4517 included).

Extraction goes into a temporary sibling folder that is renamed to the destination only when
every member is out, with a ``.geopeft-extracted`` marker naming the archive; a killed extraction
leaves only the temporary folder, which the next run removes and redoes, never a half tree that
looks complete.

What an archive may unpack to is bounded (``max_bytes``, a study's ``limits.max_extract_bytes``):
the members' declared sizes are summed and checked against the limit and the free disk space
before anything is written, and the bytes actually written are counted against the limit as
they go, so neither a zip bomb nor a header that lies gets past it (:class:`ArchiveTooLargeError`).
A full disk during extraction is one :class:`ArchiveError` naming the archive and the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from geopeft.errors import GeopeftError
from geopeft.limits import DEFAULT

MARKER = ".geopeft-extracted"


class ArchiveError(GeopeftError, ValueError):
    """An archive cannot be read (corrupt, truncated, an unknown type); the message names it."""


class UnsafeArchiveError(ArchiveError):
    """An archive member is not a plain file or folder inside the destination (a link, a device,
    an absolute path, ``..``); nothing of the archive is extracted."""


class ArchiveTooLargeError(ArchiveError):
    """An archive unpacks to more than its limit or the free disk space; nothing of it is kept."""


def _bytes(n: int) -> str:
    """A size in bytes for an error line, with its GiB when large enough to matter."""
    return f"{n:,} bytes" + (f" ({n / (1 << 30):.1f} GiB)" if n >= 1 << 27 else "")


def _check_name(archive: Path, name: str) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in norm.split("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} leaves the destination ('..')")


def _refuse_link(archive: Path, name: str, target: str, hard: bool) -> None:
    kind = "a hard link" if hard else "a symbolic link"
    raise UnsafeArchiveError(f"{archive}: member {name!r} is {kind} (-> {target!r}); dataset "
                             "archives hold files and folders only")


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
    """Validate every member without extracting; returns the member count.

    Raises:
        UnsafeArchiveError: a member is a link, device or fifo, or its path leaves the folder.
        ArchiveError: the archive cannot be read.
    """
    return _scan(Path(path))[0]


def _scan(path: Path) -> tuple[int, int]:
    """Validate every member without extracting; the member count and their declared bytes."""
    n = size = 0
    with _reading(path):
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    _check_zip_member(path, zf, info)
                    n, size = n + 1, size + info.file_size
            return n, size
        with _open_tar(path) as tf:
            for m in tf:
                _check_tar_member(path, m)
                n, size = n + 1, size + (m.size if m.isfile() else 0)
    return n, size


def check_size(archive: Path, declared: int, folder: Path, max_bytes: int,
               limit: str = "limits.max_extract_bytes") -> None:
    """Refuse an archive whose members declare more than ``max_bytes`` or than ``folder``'s free
    disk space, before anything is written.

    Raises:
        ArchiveTooLargeError: naming the archive, the sizes and the limit.
    """
    if declared > max_bytes:
        raise ArchiveTooLargeError(f"{archive}: its members unpack to {_bytes(declared)}, over "
                                   f"the limit of {_bytes(max_bytes)} ({limit})")
    free = shutil.disk_usage(folder).free
    if declared > free:
        raise ArchiveTooLargeError(f"{archive}: its members unpack to {_bytes(declared)}, more "
                                   f"than the {_bytes(free)} free in {folder}")


class Budget:
    """The bytes an extraction may still write (``max_bytes`` in all), counted as written."""

    def __init__(self, archive: Path, max_bytes: int, limit: str = "limits.max_extract_bytes"):
        self.archive, self.max_bytes, self.limit, self.written = archive, max_bytes, limit, 0

    def copy(self, name: str, data: IO[bytes], fd: int, folder: Path) -> None:
        """Copy member ``name`` from ``data`` to ``fd``, refusing the chunk that would pass the
        limit before it is written; a full disk is one :class:`ArchiveError` naming ``folder``."""
        while chunk := data.read(1 << 20):
            if self.written + len(chunk) > self.max_bytes:
                raise ArchiveTooLargeError(
                    f"{self.archive}: member {name!r} takes the bytes written past the limit of "
                    f"{_bytes(self.max_bytes)} ({self.limit}) although the members declare less; "
                    f"nothing is kept")
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise ArchiveError(f"{self.archive}: no space left in {folder} while writing "
                                   f"member {name!r} ({_bytes(self.written)} written); nothing "
                                   f"is kept") from None
            self.written += len(chunk)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the errors of reading a bad archive into one :class:`ArchiveError` naming it."""
    if not (path.name.lower().endswith(".zip") or _is_tar(path)):
        raise ArchiveError(f"{path}: unknown archive type (zip, tar, tar.gz, tar.zst)")
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise ArchiveError(f"{path}: not a readable archive ({err})") from err
    except Exception as err:
        if type(err).__module__.startswith("zstandard") or "zstd" in type(err).__name__.lower():
            raise ArchiveError(f"{path}: not a readable archive ({err})") from err
        raise


def _check_zip_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    _check_name(path, info.filename)
    kind = (info.external_attr >> 16) & 0o170000
    if kind == 0o120000:  # a symlink stored in a zip
        _refuse_link(path, info.filename, zf.read(info).decode(errors="replace"), hard=False)
    if kind not in (0, 0o100000, 0o040000):
        raise UnsafeArchiveError(f"{path}: member {info.filename!r} is not a file or folder")


def _check_tar_member(path: Path, m: tarfile.TarInfo) -> None:
    _check_name(path, m.name)
    if m.issym() or m.islnk():
        _refuse_link(path, m.name, m.linkname, hard=m.islnk())
    if not (m.isfile() or m.isdir()):
        raise UnsafeArchiveError(f"{path}: member {m.name!r} is a device or fifo")


def _target(archive: Path, root: Path, name: str) -> Path:
    """The path of member ``name`` under ``root`` (a real folder), checked once resolved."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    target = root.joinpath(*parts) if parts else root
    parent = target.parent.resolve() if parts else root
    if parent != root and root not in parent.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside the destination")
    return target


def _write(archive: Path, root: Path, name: str, data: IO[bytes], budget: Budget) -> None:
    target = _target(archive, root, name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _target(archive, root, name)  # the folders just made are real folders under root
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as err:  # a file where a folder is needed, a folder of the same name, a link
        raise ArchiveError(f"{archive}: member {name!r} cannot be written ({err.strerror})") from err
    try:
        budget.copy(name, data, fd, root)
    finally:
        os.close(fd)


def _mkdir(archive: Path, root: Path, name: str) -> None:
    try:
        _target(archive, root, name).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArchiveError(f"{archive}: member {name!r} cannot be written ({err.strerror})") from err


def _extract_into(archive: Path, root: Path, budget: Budget) -> None:
    """Write every member of ``archive`` (checked already) under the real folder ``root``."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_zip_member(archive, zf, info)
                if info.is_dir():
                    _mkdir(archive, root, info.filename)
                else:
                    with zf.open(info) as data:
                        _write(archive, root, info.filename, data, budget)
        return
    with _open_tar(archive) as tf:
        for m in tf:  # streamed: tar.zst cannot seek
            _check_tar_member(archive, m)
            if m.isdir():
                _mkdir(archive, root, m.name)
            else:
                data = tf.extractfile(m)
                assert data is not None  # a regular file
                _write(archive, root, m.name, data, budget)


def extract(archive: Path, dest: Path, max_bytes: int = DEFAULT.max_extract_bytes) -> Path:
    """Extract ``archive`` into ``dest`` atomically; a completed ``dest`` is left as it is.

    Args:
        archive: a zip, tar.gz or tar.zst file.
        dest: the folder to extract into.
        max_bytes: the most it may unpack to (``limits.max_extract_bytes``).

    Raises:
        UnsafeArchiveError: a member is a link, device or fifo or would land outside ``dest``
            (nothing is extracted).
        ArchiveTooLargeError: it unpacks to more than ``max_bytes`` or the free disk space
            (nothing is kept).
        ArchiveError: the archive cannot be read, or the disk fills up (nothing is kept).
    """
    archive, dest = Path(archive), Path(dest)
    if (dest / MARKER).is_file():
        return dest
    declared = _scan(archive)[1]  # refuse an unsafe archive before writing anything
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed run, before counting free space
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_size(archive, declared, dest.parent, max_bytes)
    tmp.mkdir(parents=True)
    try:
        with _reading(archive):
            _extract_into(archive, tmp.resolve(), Budget(archive, max_bytes))
        (tmp / MARKER).write_text(f"{archive.name}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
