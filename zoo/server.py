"""A small local HTTP generation server for one loaded model (`genpipe serve`).

    GET  /healthz       {"status": "ok", "model": ..., "version": ..., "family": ...}
    POST /v1/generate   JSON request (the same fields `mlflow models serve` takes, see
                        zoo.serving.generate_from_request), plus "format": "png" | "json"
                        for image models. Image samples come back as a PNG grid (default)
                        or a JSON array; text models answer text/plain.

It binds 127.0.0.1 unless told otherwise, caps the request body, and runs one generation at a
time (models are not thread-safe and one request can already use every core); /healthz stays
responsive meanwhile because each connection has its own thread.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from zoo.errors import GenpipeError

MAX_BODY_BYTES = 64 * 1024
FORMATS = ("png", "json")


class GenerationServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the model and what /healthz reports."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: Any, info: dict[str, str]) -> None:
        super().__init__(address, _Handler)
        self.model = model
        self.info = info
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def render(samples: Any, fmt: str) -> tuple[str, bytes]:
    """Model output -> (content type, body): text as text, image arrays as PNG or JSON."""
    if isinstance(samples, str):
        return "text/plain; charset=utf-8", samples.encode("utf-8")
    if isinstance(samples, (list, tuple)) and all(isinstance(s, str) for s in samples):
        return "text/plain; charset=utf-8", "\n".join(samples).encode("utf-8")
    arr = np.asarray(samples)
    if fmt == "json":
        return "application/json", json.dumps(
            {"shape": list(arr.shape), "samples": arr.tolist()}
        ).encode()
    if arr.ndim != 4:
        raise GenpipeError(
            f"the model returned an array of shape {list(arr.shape)}, not images: "
            'ask for "format": "json"'
        )
    from zoo.images import grid_png

    return "image/png", grid_png(arr)


class _Handler(BaseHTTPRequestHandler):
    server: GenerationServer
    protocol_version = "HTTP/1.1"
    # Keep-alive responses are written in pieces (headers, then body): without TCP_NODELAY
    # Nagle + delayed ACK adds ~40 ms per request (bench_serve: p50 70 -> ~30 ms).
    disable_nagle_algorithm = True

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, "application/json", json.dumps({"error": message}).encode())

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if self.path.split("?")[0] in ("/healthz", "/health"):
            self._send(
                200, "application/json", json.dumps({"status": "ok", **self.server.info}).encode()
            )
        else:
            self._error(404, f"no such endpoint {self.path}: use GET /healthz or POST /v1/generate")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/v1/generate":
            self._error(404, f"no such endpoint {self.path}: use POST /v1/generate")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return
        if int(length) > MAX_BODY_BYTES:
            # Do not read it: close the connection instead of draining a huge body.
            self.close_connection = True
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit",
            )
            return
        raw = self.rfile.read(int(length))
        try:
            request = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._error(400, f"request body is not JSON: {e}")
            return
        if not isinstance(request, dict):
            self._error(400, 'request must be a JSON object such as {"n": 16, "seed": 0}')
            return
        fmt = request.pop("format", "png")
        if fmt not in FORMATS:
            self._error(400, f"format={fmt!r} is not one of {', '.join(FORMATS)}")
            return
        from zoo.serving import generate_from_request

        try:
            with self.server.lock:
                samples = generate_from_request(self.server.model, request)
            ctype, body = render(samples, fmt)
        except GenpipeError as e:
            self._error(400, str(e))
            return
        except (TypeError, ValueError) as e:
            # An unknown request field reaches model.generate as a keyword argument.
            self._error(400, f"bad request: {e}")
            return
        self._send(200, ctype, body)


def serve(
    model: Any, info: dict[str, str], host: str = "127.0.0.1", port: int = 8080
) -> GenerationServer:
    """A bound (not yet serving) server; call serve_forever() or run it in a thread."""
    try:
        return GenerationServer((host, port), model, info)
    except OSError as e:
        raise GenpipeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
