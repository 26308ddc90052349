"""Atomic file and directory writes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    """Give a temporary file (0600) or folder (0700) the permissions ``open``/``mkdir`` would:
    ``mode`` less the umask, so results on shared storage are readable by the group as usual."""
    os.chmod(path, mode & ~_umask())


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give the files a third-party writer made owner-only (0600: safetensors' ``save_file``,
    so also peft's ``save_pretrained``) the permissions ``open`` would have given them (0666 less
    the umask): a colleague who reads ``run.json`` reads the weights too. ``path``: a file, or
    a folder and every file under it; other modes are left as they are."""
    path = Path(path)
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600:
            _as_created(p, 0o666)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` on success.

    On an exception (or a kill) the temporary directory is removed (or left under a
    ``.tmp-`` name that no reader treats as complete); ``final`` is never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _as_created(tmp, 0o777)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(final)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling file for writing; rename it to ``final`` once closed cleanly."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        _as_created(Path(tmp), 0o666)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path (not yet created) for a writer that takes a file name
    (rasterio, GDAL); it is renamed to ``final`` when the block ends cleanly, removed otherwise.
    The file gets the permissions ``open`` would have given it (0666 less the umask)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=final.suffix,
                                dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
        _as_created(tmp, 0o666)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the file in any parse error."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Stable JSON text (sorted keys): equal configs give equal strings (Snakemake params)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
