"""Fetch a real dataset: download every file of its source (verified), then assemble the raw
folder the source's reader expects (archives extracted safely, metadata files copied).

Remotes come from the source registry; a config may put lab or institutional ``mirrors`` (base
URLs, tried first, each serving files under their archive name) in front of them, or replace
them entirely with ``remotes`` (name, urls, md5/sha256, size), e.g. to pin another release.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from geopeft.data.download import Remote, download
from geopeft.data.extract import extract
from geopeft.data.sources import DataError, get_source
from geopeft.io import atomic_dir

log = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")


def remotes_for(dataset: str, mirrors: list[str] | None = None,
                override: list[dict[str, Any]] | None = None) -> list[Remote]:
    """The files to download for ``dataset``, mirrors first.

    Args:
        dataset: the dataset.
        mirrors: ``data.mirrors``: base URLs tried before the publisher's.
        override: ``data.remotes``: files that replace the source's own (those of another dataset
            are ignored).
    """
    override = [r for r in (override or []) if r.get("dataset") in (None, dataset)]
    if override:
        base = [Remote(r["name"], tuple(r["urls"]), r.get("md5"), r.get("size"), r.get("sha256"))
                for r in override]
    else:
        base = list(get_source(dataset).remotes)
    if not base:
        raise DataError(f"{dataset}: no download location is known; set data.raw_dir to the "
                        f"unpacked data or data.remotes")
    mirrors = [m.rstrip("/") for m in (mirrors or [])]
    return [Remote(r.name, tuple(f"{m}/{r.name}" for m in mirrors) + r.urls, r.md5, r.size,
                   r.sha256) for r in base]


def is_archive(name: str) -> bool:
    """Whether a downloaded file is an archive to extract (by its suffix)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def download_file(dataset: str, name: str, out: Path, mirrors: list[str] | None = None,
                  override: list[dict[str, Any]] | None = None, **kw: Any) -> Path:
    """Download one named file of ``dataset`` to ``out`` (verified).

    Args:
        dataset: the dataset.
        name: the remote file's name.
        out: where the verified file goes.
        mirrors: ``data.mirrors``.
        override: ``data.remotes``.
    """
    for r in remotes_for(dataset, mirrors, override):
        if r.name == name:
            return download(r, out, **kw)
    raise DataError(f"{dataset}: no remote file named {name!r}")


def assemble(dataset: str, files: list[Path], out: Path) -> Path:
    """Build the raw folder ``out`` from downloaded ``files`` (archives extracted, others copied).

    Args:
        dataset: the dataset.
        files: its downloaded files (archives are extracted).
        out: the raw folder, in the publisher's layout.
    """
    with atomic_dir(out) as tmp:
        for f in files:
            f = Path(f)
            if is_archive(f.name):
                part = extract(f, tmp.parent / f".{out.name}.{f.name}.x")
                for child in part.iterdir():
                    if child.name.startswith(".geopeft-"):
                        continue
                    target = tmp / child.name
                    if target.exists():
                        raise DataError(f"{f}: {child.name} is also in another archive")
                    os.replace(child, target)
                shutil.rmtree(part, ignore_errors=True)
            else:
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
    log.info("%s: raw folder assembled at %s", dataset, out)
    return out
