"""Rehearsal of a real study: fixtures in the publishers' formats and the server that offers them.

A rehearsal (``rehearsal: true``, see :func:`geopeft.config.rehearse`) runs a real study's whole
DAG on a CPU, through the real download, extraction, preparation and weight-loading code, with
only the sizes changed. This module writes what it downloads:

* **data**: for each dataset, the files its source downloads (``Source.remotes``), under their
  published names and in the publisher's layout, a few dozen samples of the embedded world at
  the real sizes (``Source.fixture_samples``), written by the source's fixture writer
  (:meth:`geopeft.data.sources.base.Source.write_fixtures`; a new dataset brings its own, this
  module names none);
* **weights**: random values in the publisher's checkpoint format: ``timm:<tag>`` as the timm
  hub's ``model.safetensors`` (timm's key names and shapes, the head the tag's pretrained
  configuration has), ``url:`` weights of the zoo as the published ``.pth`` (bands of the
  weights as input channels, the entry's wrapper key), each family's own layout
  (:meth:`geopeft.models.families.EncoderFamily.fixture_checkpoint`: CROMA's ``.pt`` of
  several encoders);

and ``manifest.json`` with every file's checksum (the pins the rehearsal checks downloads and
weights against). :class:`FixtureServer` serves them on 127.0.0.1 and writes ``server.json``.
Nothing here is a result: every output of a rehearsal says "rehearsal".
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from geopeft import config as study_config
from geopeft.io import atomic_dir
from geopeft.layout import FixtureLayout
from geopeft.spec import ConfigError
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY

log = logging.getLogger(__name__)
#: Bump when fixtures change: older ones in the folder are made again.
FIXTURE_VERSION = 2


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fixture_datasets() -> list[str]:
    """The datasets the rehearsal can write fixtures of: those whose source declares a fixture
    size (``Source.fixture_samples``; its ``Source.write_fixtures`` writes the files)."""
    from geopeft.data.sources import REGISTRY

    return sorted(name for name, src in REGISTRY.items() if src.fixture_samples)


def _dataset_files(dataset: str, work: Path, out: Path) -> list[str]:
    """Write the downloadable files of ``dataset`` into ``out`` (its source's fixture writer,
    ``work`` its scratch folder); their names, the source's remotes."""
    from geopeft.data.sources import get_source

    source = get_source(dataset)
    if dataset not in fixture_datasets():
        raise ConfigError(f"rehearsal: no fixtures for dataset {dataset!r} "
                          f"(have {', '.join(fixture_datasets())})")
    source.write_fixtures(out, work)
    names = [r.name for r in source.remotes]
    missing = [x for x in names if not (out / x).is_file()]
    if missing:  # the source's remotes and the fixture must name the same files
        raise RuntimeError(f"{dataset}: fixture lacks {missing}")
    return names


def _url_entry(weights: str) -> Any:
    from geopeft.models.zoo import REGISTRY

    for e in REGISTRY.values():
        if e.weights == weights:
            return e
    raise ConfigError(f"rehearsal: {weights} is not the published weights of a zoo backbone; "
                      f"no fixture can be written in its format")


def _weights_file(weights: str, out: Path) -> Path:
    """A checkpoint with random values in the format ``weights`` is published in."""
    import timm
    import torch

    torch.manual_seed(0)
    if weights.startswith("timm:"):
        tag = weights[5:]
        cfg = timm.models.get_pretrained_cfg(tag)
        if cfg is None:
            raise ConfigError(f"rehearsal: timm knows no pretrained tag {tag!r}")
        model = timm.create_model(tag, pretrained=False, num_classes=cfg.num_classes)
        from safetensors.torch import save_file

        path = out / tag / "model.safetensors"  # the hub's file name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path
    entry = _url_entry(weights)
    in_chans = len(entry.bands) if entry.bands else 3
    from geopeft.models.families import get_family

    obj = get_family(entry.family).fixture_checkpoint(entry, in_chans)
    name = weights.rsplit("/", 1)[-1].split("?")[0]
    stem, ext = os.path.splitext(name)
    stem = stem.rsplit("-", 1)[0] if len(stem.rsplit("-", 1)[-1]) == 8 else stem  # no hub hash
    path = out / f"rehearsal-{stem}{ext}"
    torch.save(obj, path)
    return path


def study_needs(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The datasets and the ``timm:`` / ``url:`` weights a (not yet rehearsed) study uses."""
    datasets = sorted({ds for _, ds in study_config.study_datasets(cfg)})
    weights = set()
    for row in study_config.study_rows(cfg):
        bb = study_config.row_backbone(cfg, row)
        if (bb is not None and STRATEGY_REGISTRY[row["method"]].loads_weights
                and bb["weights"].startswith(("timm:", "url:"))):
            weights.add(bb["weights"])
    return datasets, sorted(weights)


def make_fixtures(folder: Path, datasets: list[str], weights: list[str]) -> dict[str, Any]:
    """Write the missing fixtures into ``folder`` and return the updated manifest."""
    folder = Path(folder)
    mpath = FixtureLayout(folder).manifest
    manifest: dict[str, Any] = {"version": FIXTURE_VERSION, "datasets": {}, "weights": {}}
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old.get("version") == FIXTURE_VERSION:
            manifest = old
    files = FixtureLayout(folder).files
    for ds in datasets:
        if ds in manifest["datasets"] and all(
                (files / ds / f["name"]).is_file() for f in manifest["datasets"][ds]):
            continue
        log.info("rehearsal: writing %s fixtures", ds)
        with atomic_dir(files / ds) as tmp:
            work = tmp.parent / f".{ds}.work"
            shutil.rmtree(work, ignore_errors=True)
            try:
                names = _dataset_files(ds, work, tmp)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            entries = [{"name": x, "path": f"files/{ds}/{x}", "md5": _digest(tmp / x, "md5"),
                        "size": (tmp / x).stat().st_size} for x in names]
        manifest["datasets"][ds] = entries
        _write_json(mpath, manifest)
    for w in weights:
        have = manifest["weights"].get(w)
        if have and (folder / have["path"]).is_file():
            continue
        log.info("rehearsal: writing a random checkpoint in the format of %s", w)
        (files / "weights").mkdir(parents=True, exist_ok=True)
        path = _weights_file(w, files / "weights")
        manifest["weights"][w] = {"path": str(path.relative_to(folder)),
                                  "sha256": _digest(path, "sha256")}
        _write_json(mpath, manifest)
    _write_json(mpath, manifest)
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class FixtureServer:
    """Serves ``<folder>/files`` on 127.0.0.1 (GET, HEAD, byte ranges) and records its address
    in ``<folder>/server.json`` while it runs (a context manager)."""

    def __init__(self, folder: Path, port: int = 0):
        self.folder = Path(folder)
        root = FixtureLayout(self.folder).files.resolve()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("fixture server: " + fmt, *args)

            def _file(self) -> Path | None:
                rel = self.path.split("?")[0].lstrip("/")
                rel = rel[len("files/"):] if rel.startswith("files/") else rel
                p = (root / rel).resolve()
                return p if p.is_file() and root in p.parents else None

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                size = p.stat().st_size
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
                    start = int(rng[6:].split("-")[0])
                    if start >= size:  # nothing to send from there: not satisfiable (RFC 9110)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    with open(p, "rb") as fh:
                        fh.seek(start)
                        shutil.copyfileobj(fh, self.wfile, 1 << 20)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        _write_json(FixtureLayout(self.folder).server, {"url": self.url, "pid": os.getpid()})
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            info = json.loads(FixtureLayout(self.folder).server.read_text())
            if info.get("url") == self.url:
                FixtureLayout(self.folder).server.unlink()
        except (OSError, ValueError):
            pass
        self.httpd.shutdown()
        self.httpd.server_close()


def prepare_study(files: list[str], folder: Path) -> dict[str, Any]:
    """Write the fixtures the given study files need (resolved without rehearsal)."""
    datasets: set[str] = set()
    weights: set[str] = set()
    for f in files:
        cfg = study_config.resolve([f], {"rehearsal": False})
        ds, w = study_needs(cfg)
        datasets.update(ds)
        weights.update(w)
    return make_fixtures(folder, sorted(datasets), sorted(weights))


__all__ = ["FIXTURE_VERSION", "FixtureServer", "fixture_datasets", "make_fixtures", "prepare_study",
           "study_needs"]
