"""Reproducible archives of a folder, for the fixtures a rehearsal downloads.

A source's fixture writer (:attr:`geopeft.data.sources.base.Source.fixtures`) writes its
dataset's downloadable files, in the publisher's layout, with these: sorted entries and fixed
times, so the same world gives byte-identical archives (the rehearsal's manifest pins their
checksums).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

#: The time every archive entry carries (2020-01-01 00:00:00 UTC).
ARCHIVE_TIME = (2020, 1, 1, 0, 0, 0)
_ARCHIVE_EPOCH = 1577836800


def zip_tree(folder: Path, arcroot: str, out: Path) -> None:
    """Write a zip of the files under ``folder`` as ``arcroot/...`` (deflated, sorted entries,
    fixed times: reproducible).

    Args:
        folder: the folder to archive (its files, recursively; folders get no entry).
        arcroot: the top folder of every entry in the archive.
        out: the zip file to write.
    """
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                info = zipfile.ZipInfo(f"{arcroot}/{p.relative_to(folder)}", ARCHIVE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())


def tar_zst_tree(folder: Path, arcroot: str, out: Path) -> None:
    """Write a zstandard-compressed tar of ``folder`` as ``arcroot/...`` (folders and files,
    sorted, fixed times and owners: reproducible).

    Args:
        folder: the folder to archive (itself as ``arcroot``, then everything under it).
        arcroot: the top folder of the archive.
        out: the ``.tar.zst`` file to write.
    """
    import zstandard

    folder = Path(folder)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for p in sorted([folder, *folder.rglob("*")]):
            ti = tf.gettarinfo(str(p), f"{arcroot}/{p.relative_to(folder)}" if p != folder else arcroot)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = _ARCHIVE_EPOCH, 0, 0, "", ""
            if p.is_file():
                with open(p, "rb") as fh:
                    tf.addfile(ti, fh)
            else:
                tf.addfile(ti)
    Path(out).write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))


__all__ = ["ARCHIVE_TIME", "tar_zst_tree", "zip_tree"]
