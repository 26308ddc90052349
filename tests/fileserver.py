"""A fault-injecting HTTP file server on 127.0.0.1 for download tests (bounded, stops itself)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """Serves ``files`` (name -> bytes); ``faults[name]`` is a list of faults consumed per request.

    Faults: ``"cut"`` (send half the body, then close), ``"503"``, ``"slow"`` (pause 2 s before
    the body), ``"corrupt"`` (flip bytes), ``"norange"`` (ignore Range, always 200).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                queue = server.faults.get(name, [])
                fault = queue.pop(0) if queue else None
                body = server.files[name]
                if fault == "503":
                    self.send_error(503)
                    return
                if fault == "corrupt":
                    body = bytes(b ^ 0xFF for b in body[:64]) + body[64:]
                start = 0
                if rng and fault != "norange" and "always_norange" not in server.faults:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if fault == "slow":
                    time.sleep(2.0)
                if fault == "cut":
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
