"""Fetch a real dataset: download every file of its source (verified), then assemble the raw
folder the source's reader expects (archives extracted safely, metadata files copied).

Remotes come from the source registry; a config may put lab or institutional ``mirrors`` (base
URLs, tried first, each serving files under their archive name) in front of them, or replace
them entirely with ``remotes`` (name, urls, md5/sha256, size), e.g. to pin another release.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geopeft.data.download import Remote, download
from geopeft.data.extract import extract
from geopeft.data.sources import DataError, get_source
from geopeft.errors import GeopeftError
from geopeft.io import atomic_file
from geopeft.limits import DEFAULT

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


def assemble(dataset: str, files: list[Path], out: Path,
             max_extract_bytes: int = DEFAULT.max_extract_bytes) -> Path:
    """Build the raw folder ``out`` from downloaded ``files`` (archives extracted, others copied).

    Crash-safe and resumable: the work goes on in ``.<out>.assembling`` next to ``out`` (the
    files' manifest, the tree being built, a mark per file once all of it is in the tree), and
    the tree becomes ``out`` by one rename once every file is in, so ``out`` only ever appears
    complete. An archive is extracted whole into ``<file>.x`` (its marker: complete), renamed
    to ``<file>.moving`` before its content moves into the tree (never trusted as extracted
    again), and marked done once all has moved; a rerun after a kill at any point resumes from
    there, or starts over when the files differ. One fetch of ``out`` runs at a time (a lock).

    Args:
        dataset: the dataset.
        files: its downloaded files (archives are extracted).
        out: the raw folder, in the publisher's layout.
        max_extract_bytes: the most one archive may unpack to (``limits.max_extract_bytes``).

    Raises:
        DataError: two files share a name, an archive member is in another archive too, or
            another fetch of ``out`` is running.
        ArchiveError: an archive is unsafe, unreadable, over the limit or the disk is full.
    """
    files, out = [Path(f) for f in files], Path(out)
    names = [f.name for f in files]
    if len(set(names)) < len(names):
        raise DataError(f"{dataset}: two downloaded files share a name ({sorted(names)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        _remove_strays(out)
        work = _workspace(out, files)
        tree, done = work / "tree", work / "done"
        try:
            for f in files:
                if not (done / f.name).exists():
                    _put_in(f, work, tree, max_extract_bytes)
                    (done / f.name).touch()
                shutil.rmtree(work / f"{f.name}.moving", ignore_errors=True)
        except GeopeftError:  # refused (unsafe, too large, disk full): rerunning gives the same
            shutil.rmtree(work, ignore_errors=True)
            raise
        if out.exists():  # a previous raw folder (Snakemake removes it first; a hand rerun not)
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tree, out)
            shutil.rmtree(old)
        else:
            os.replace(tree, out)
        shutil.rmtree(work)
    log.info("%s: raw folder assembled at %s", dataset, out)
    return out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``.<out>.lock`` (an ``flock``, released by the OS however this process ends)."""
    import fcntl

    path = out.with_name(f".{out.name}.lock")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise DataError(f"{out}: another geopeft fetch (pid {holder}) is assembling it (lock "
                            f"{path}); let it finish or stop it, then rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _remove_strays(out: Path) -> None:
    """Remove what a killed fetch of an earlier geopeft left next to ``out`` (its temporary
    raw folder, the archives' extraction folders, a replaced raw folder); under the lock."""
    n = out.name
    for pattern in (f".{n}.tmp-*", f".{n}.old*", f".{n}.*.x", f"..{n}.*.x.extracting"):
        for stray in out.parent.glob(pattern):
            log.info("%s: removing %s, left by a killed fetch", out, stray)
            shutil.rmtree(stray, ignore_errors=True)


def _workspace(out: Path, files: list[Path]) -> Path:
    """``.<out>.assembling``: resumed when it was started from the same files (its manifest is
    written last, so a manifest means the folder is set up), else made anew."""
    work = out.with_name(f".{out.name}.assembling")
    manifest = json.dumps([[str(f.resolve()), (st := f.stat()).st_size, st.st_mtime_ns]
                           for f in files])
    if (work / "tree").is_dir() and (work / "inputs.json").is_file():
        if (work / "inputs.json").read_text() == manifest:
            log.info("%s: resuming the assembly in %s", out, work)
            return work
    shutil.rmtree(work, ignore_errors=True)
    (work / "tree").mkdir(parents=True)
    (work / "done").mkdir()
    with atomic_file(work / "inputs.json") as fh:
        fh.write(manifest)
    return work


def _put_in(f: Path, work: Path, tree: Path, max_bytes: int) -> None:
    """Put a downloaded file's content into ``tree``: an archive extracted, another file linked
    or copied; done again or resumed when a kill interrupted it."""
    if not is_archive(f.name):
        copy = work / f"{f.name}.copying"
        copy.unlink(missing_ok=True)
        try:
            os.link(f, copy)
        except OSError:
            shutil.copy2(f, copy)
        os.replace(copy, tree / f.name)
        return
    _move_in(f, work, tree, max_bytes)


def _move_in(archive: Path, work: Path, tree: Path, max_bytes: int) -> None:
    """Extract ``archive`` whole, then move its content into ``tree`` (resuming a move)."""
    moving = work / f"{archive.name}.moving"
    if not moving.exists():
        os.replace(extract(archive, work / f"{archive.name}.x", max_bytes), moving)
    for child in sorted(moving.iterdir()):
        if child.name.startswith(".geopeft-"):
            continue
        target = tree / child.name
        if target.exists():
            raise DataError(f"{archive}: {child.name} is also in another archive")
        os.replace(child, target)
