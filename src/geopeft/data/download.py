"""Checksummed, resumable downloads.

``download()`` streams a file to ``<dest>.part`` with a progress bar, resumes a cut transfer with
an HTTP ``Range`` request (and starts over when the server ignores ranges), retries 5xx answers,
timeouts and broken connections with exponential backoff, tries mirrors in order, verifies the
checksum and only then renames the file to ``dest``. A file whose checksum does not match is
moved aside to ``<dest>.bad-<md5 prefix>`` and reported; it never sits under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from geopeft.errors import GeopeftError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class DownloadError(GeopeftError, RuntimeError):
    """A download failed for good (all mirrors and retries exhausted, or not enough space)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected checksum."""


@dataclass(frozen=True)
class Remote:
    """A file to fetch: mirrors in order of preference, expected size and checksum."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    size: int | None = None
    sha256: str | None = None


def file_digest(path: Path, algo: str = "md5") -> str:
    """The hex digest (``algo``: any hashlib name) of a file, read in blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_space(folder: Path, needed: int, margin: float = 1.05) -> None:
    """Raise if ``folder``'s file system has less than ``needed`` bytes (x margin) free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * margin:
        raise DownloadError(
            f"{folder}: {free / 1e9:.1f} GB free, the download needs {needed * margin / 1e9:.1f} GB"
        )


def verify(path: Path, remote: Remote) -> None:
    """Check size and checksum of a complete file; move it aside on mismatch."""
    if remote.size is not None and path.stat().st_size != remote.size:
        bad = _aside(path, "size")
        raise ChecksumError(f"{remote.name}: {path.stat().st_size if path.exists() else '?'} bytes, "
                            f"expected {remote.size}; kept aside as {bad}")
    for algo in ("md5", "sha256"):
        want = getattr(remote, algo)
        if want:
            got = file_digest(path, algo)
            if got != want:
                bad = _aside(path, got[:8])
                raise ChecksumError(f"{remote.name}: {algo} {got} does not match the expected "
                                    f"{want}; the file is kept aside as {bad}")


def _aside(path: Path, tag: str) -> Path:
    base = path.name[: -len(".part")] if path.name.endswith(".part") else path.name
    bad = path.with_name(f"{base}.bad-{tag}")
    os.replace(path, bad)
    return bad


def _fetch_once(url: str, part: Path, timeout: float, total_hint: int | None, progress: bool) -> None:
    """One attempt: append to ``part`` from its current size (Range), or restart on 200."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "geopeft"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = resp.status
        if have and status == 200:  # server ignores Range: start over
            log.info("%s: server does not resume (HTTP 200 to a Range request); restarting", url)
            have = 0
        elif status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise DownloadError(f"{url}: unexpected Content-Range {crange!r} for offset {have}")
        length = resp.headers.get("Content-Length")
        expected_total = have + int(length) if length is not None else total_hint
        mode = "ab" if have else "wb"
        with open(part, mode) as fh, tqdm(total=expected_total, initial=have, unit="B",
                                           unit_scale=True, desc=part.name[:40],
                                           disable=not progress, file=sys.stderr,
                                           mininterval=1 if sys.stderr.isatty() else 30) as bar:
            got = 0
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                fh.write(block)
                got += len(block)
                bar.update(len(block))
        if length is not None and got != int(length):
            raise ConnectionError(f"{url}: connection closed after {got} of {length} bytes")


def download(remote: Remote, dest: Path, retries: int = 5, timeout: float = 60.0,
             backoff: float = 2.0, progress: bool = True) -> Path:
    """Fetch ``remote`` to ``dest`` (verified); an existing verified ``dest`` is kept as it is.

    Each mirror gets ``retries`` attempts with exponential backoff between them (none after its
    last attempt); a body that fails the checksum is kept aside and the next mirror is tried.

    Raises:
        ChecksumError: every mirror that answered sent bytes that do not match (kept aside).
        DownloadError: every mirror failed after ``retries`` attempts, or not enough disk space.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    checked = "verified" if (remote.md5 or remote.sha256) else "size checked"
    if not (remote.md5 or remote.sha256):
        log.warning("%s: no checksum is known; the download is checked for size only", remote.name)
    part = dest.with_name(dest.name + ".part")
    if remote.size:
        have = part.stat().st_size if part.exists() else 0
        check_space(dest.parent, remote.size - have)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    bad_bodies = 0
    for m, url in enumerate(remote.urls):
        for attempt in range(retries):
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _fetch_once(url, part, timeout, remote.size, progress)
                if remote.size is not None and part.stat().st_size > remote.size:
                    part.unlink()  # a stale, longer partial file: start over
                    raise ConnectionError("partial file longer than the expected size")
                if remote.size is not None and part.stat().st_size < remote.size:
                    raise ConnectionError(f"got {part.stat().st_size} of {remote.size} bytes")
                verify(part, remote)
                os.replace(part, dest)
                log.info("%s: downloaded and %s -> %s", remote.name, checked, dest)
                return dest
            except ChecksumError as err:
                errors.append(f"{url}: {err}")
                if resumed and attempt + 1 < retries:  # a stale partial file: once from scratch
                    log.warning("%s: the resumed file does not verify (kept aside); downloading "
                                "it again from the start", remote.name)
                    continue
                bad_bodies += 1
                break  # this mirror serves other bytes: the next one may not
            except urllib.error.HTTPError as err:
                errors.append(f"{url}: HTTP {err.code}")
                if err.code == 416:  # range not satisfiable: the partial file is stale
                    part.unlink(missing_ok=True)
                elif err.code < 500 and err.code != 429:
                    break  # 4xx other than throttling: this mirror will not work
            except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException,
                    OSError) as err:
                errors.append(f"{url}: {type(err).__name__}: {err}")
            if attempt + 1 == retries:
                break  # the last attempt: no wait before the next mirror or the error
            wait = backoff * 2**attempt
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", remote.name,
                        attempt + 1, errors[-1], wait)
            time.sleep(wait)
        if m + 1 < len(remote.urls):
            log.warning("%s: giving up on %s (%s); trying the next mirror", remote.name, url,
                        errors[-1])
    error = ChecksumError if bad_bodies and bad_bodies == len(remote.urls) else DownloadError
    raise error(f"{remote.name}: download failed from every mirror:\n  " + "\n  ".join(errors[-6:]))
