"""A small local HTTP generation server for one loaded model (`genpipe serve`).

    GET  /healthz       {"status": "ok", "model": ..., "version": ..., "family": ...}
    POST /v1/generate   JSON request (the same fields `mlflow models serve` takes, see
                        zoo.serving.generate_from_request), plus "format": "png" | "json"
                        for image models. Image samples come back as a PNG grid (default)
                        or a JSON array; text models answer text/plain.

Served by uvicorn (asyncio, h11) and Starlette, which MLflow already brings, rather than a
hand-made server. What bounds a hostile or broken client:
* time: a request must arrive whole (headers and body) within `request_timeout` (default
  10 s) of the connection's start or of the previous response, else the client gets 408 and
  is cut off; idle keep-alive connections close after KEEP_ALIVE_SECONDS;
* size: a body over MAX_BODY_BYTES is refused from its Content-Length without being read
  (a request without one gets 411), request heads over 16 KiB are refused by h11;
* concurrency: connections cost no thread; beyond MAX_CONNECTIONS open connections new
  requests get 503; one generation runs at a time (models are not thread-safe and one
  request can already use every core) in one worker thread, so /healthz stays responsive;
* content: a body that is not a JSON object of finite numbers (NaN, Infinity, 1e400) or is
  nested too deeply answers 400 with a one-line JSON error, like every refusal here.
It binds 127.0.0.1 unless told otherwise and has no authentication: bind it to a public
address only behind something that authenticates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h11
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from zoo.errors import GenpipeError

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 256
KEEP_ALIVE_SECONDS = 5
REQUEST_TIMEOUT = 10.0
FORMATS = ("png", "json")
ENDPOINTS = "GET /healthz or POST /v1/generate"
log = logging.getLogger(__name__)


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
    from zoo.grids import grid_png

    return "image/png", grid_png(arr)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A refusal: {"error": "..."} on one line."""
    body = json.dumps({"error": " ".join(str(message).split())})
    return Response(body, status, headers=headers, media_type="application/json")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_request(raw: bytes) -> dict[str, Any]:
    """The request object of a body; GenpipeError (one line) for anything else."""
    try:
        request = json.loads(raw or b"{}", parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise GenpipeError("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise GenpipeError(f"request body is not JSON with finite numbers: {e}") from None
    if not isinstance(request, dict):
        raise GenpipeError('request must be a JSON object such as {"n": 16, "seed": 0}')
    return request


def build_app(model: Any, info: dict[str, str], worker: ThreadPoolExecutor) -> Starlette:
    """The ASGI app: /healthz and /v1/generate, generation in `worker` (one thread)."""

    async def healthz(request: Request) -> Response:
        return Response(json.dumps({"status": "ok", **info}), media_type="application/json")

    async def generate(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return _error(411, "a Content-Length header is required", {"Connection": "close"})
        if int(length) > MAX_BODY_BYTES:
            # Not read: uvicorn closes the connection instead of draining a huge body.
            return _error(
                413,
                f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit",
                {"Connection": "close"},
            )
        try:
            fields = parse_request(await request.body())
        except ClientDisconnect:
            return _error(400, "the client went away")  # nobody reads this
        except GenpipeError as e:
            return _error(400, str(e))
        fmt = fields.pop("format", "png")
        if fmt not in FORMATS:
            return _error(400, f"format={fmt!r} is not one of {', '.join(FORMATS)}")
        loop = asyncio.get_running_loop()
        try:
            ctype, body = await loop.run_in_executor(worker, _generate, model, fields, fmt)
        except GenpipeError as e:
            return _error(400, str(e))
        except (TypeError, ValueError, OverflowError) as e:
            # An unknown request field reaches model.generate as a keyword argument.
            return _error(400, f"bad request: {e}")
        except Exception as e:  # noqa: BLE001 - one line to the client, the trace to the log
            log.exception("generation failed")
            return _error(500, f"generation failed: {type(e).__name__}: {e}")
        return Response(body, media_type=ctype)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        what = "no such endpoint" if exc.status_code == 404 else exc.detail
        return _error(
            exc.status_code, f"{what} {request.method} {request.url.path}: use {ENDPOINTS}"
        )

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/health", healthz, methods=["GET"]),
        Route("/v1/generate", generate, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _generate(model: Any, fields: dict[str, Any], fmt: str) -> tuple[str, bytes]:
    from zoo.serving import generate_from_request

    return render(generate_from_request(model, fields), fmt)


class _DeadlineH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol plus the one bound it lacks: time to send a request.

    uvicorn times out idle keep-alive connections only after a first response; a client that
    connects and sends nothing, or headers and then no body, would hold its connection (and
    a slot of MAX_CONNECTIONS) forever. Here a request must be complete within
    `request_timeout` of the connection's start or of the previous response.
    """

    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()  # the request is in: the app's time is not the client's

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps(
                {"error": f"the request did not arrive within {self.request_timeout:g} s"}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()  # the app (if it waits for the body) sees a disconnect


class GenerationServer:
    """A bound uvicorn server for one model; `serve_forever()` runs it (in any thread)."""

    def __init__(self, sock: socket.socket, model: Any, info: dict[str, str], timeout: float):
        import uvicorn

        self.socket = sock
        self.server_address = sock.getsockname()
        self.model = model
        self.info = info
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genpipe-generate")
        protocol = type("DeadlineH11", (_DeadlineH11,), {"request_timeout": timeout})
        config = uvicorn.Config(
            build_app(model, info, self._worker),
            http=protocol,
            lifespan="off",
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            log_config=None,  # leave the CLI's logging alone
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until shutdown() (or, in the main thread, SIGINT/SIGTERM)."""
        self._stopped.clear()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop serve_forever() (from another thread) and wait for it to return."""
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self._worker.shutdown(wait=False, cancel_futures=True)


def serve(
    model: Any,
    info: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 8080,
    request_timeout: float = REQUEST_TIMEOUT,
) -> GenerationServer:
    """A bound (not yet serving) server; call serve_forever() or run it in a thread."""
    try:
        sock = socket.create_server((host, port), backlog=128)
    except OSError as e:
        raise GenpipeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return GenerationServer(sock, model, info, request_timeout)
