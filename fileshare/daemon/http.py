"""A small HTTP/1.1 server on trio, built on ``h11`` (the sans-io HTTP/1.1 state machine).

``serve_http(handler, host, port)`` accepts connections and, per request, awaits
``handler(Request) -> Response``. A response body is either bytes or a ``stream`` coroutine that
writes chunks (sent with Content-Length when ``content_length`` is given, else chunked). Limits
(``fileshare.limits.HTTP_*``): header bytes, body bytes, target length, time to send a request,
idle keep-alive time, time one write may block, concurrent connections. Malformed requests get
400 (or 413/414/431) and the connection is closed; the server keeps serving others.

Handlers raise ``HTTPError(status, message)`` for client errors; they become
``{"error": message}`` JSON responses. Any other exception is logged and answered with 500.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11
import trio

from ..errors import FileshareError
from ..limits import (
    HTTP_HEADER_TIMEOUT,
    HTTP_KEEPALIVE_TIMEOUT,
    HTTP_MAX_BODY_BYTES,
    HTTP_MAX_CONNECTIONS,
    HTTP_MAX_HEADER_BYTES,
    HTTP_MAX_TARGET,
    HTTP_READ_SIZE,
    HTTP_WRITE_TIMEOUT,
)

log = logging.getLogger("fileshare.daemon.http")

Write = Callable[[bytes], Awaitable[None]]
BodyWriter = Callable[[Write], Awaitable[None]]
SERVER_NAME = "fileshare"


class HTTPError(FileshareError):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(slots=True)
class Request:
    method: str
    target: str  # as received: path and query, still percent-encoded
    path: str  # percent-decoded
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    client: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}``); 400 otherwise."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: BodyWriter | None = None  # writes the body in chunks instead of ``body``
    content_length: int | None = None  # of ``stream``'s output, when known


Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode() + b"\n"
    return Response(status, [("Content-Type", "application/json"), *(headers or [])], body)


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return json_response({"error": message}, status, headers)


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request target into a decoded path and query parameters; 400/414 when invalid."""
    if len(target) > HTTP_MAX_TARGET:
        raise HTTPError(414, f"request target longer than {HTTP_MAX_TARGET} characters")
    if not target.startswith("/"):
        raise HTTPError(400, "request target must be an absolute path")
    raw_path, _, raw_query = target.partition("?")
    path = unquote(raw_path, errors="strict")
    if "\x00" in path:
        raise HTTPError(400, "NUL in request path")
    query: dict[str, str] = {}
    try:
        for key, value in parse_qsl(raw_query, keep_blank_values=True, errors="strict"):
            query.setdefault(key, value)
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "malformed query string") from None
    return path, query


class _Abort(Exception):
    """The connection must be closed without a (further) response."""


class _ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HTTPServer:
    """Serves ``handler`` on listeners; ``active`` counts open connections."""

    def __init__(self, handler: Handler, *, name: str = "http") -> None:
        self.handler = handler
        self.name = name
        self.active = 0
        self.requests = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,  # trio.TaskStatus[list[tuple[str, int]]]
    ) -> None:
        """Listen on ``host:port`` (0: a free port); ``started`` gets the bound addresses."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = []
        for listener in listeners:
            sockname = listener.socket.getsockname()
            bound.append((str(sockname[0]), int(sockname[1])))
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            client = f"{peer[0]}:{peer[1]}"
        except (OSError, IndexError, TypeError):
            client = "?"
        if self.active >= HTTP_MAX_CONNECTIONS:
            await _send_canned(stream, 503, "too many connections")
            return
        self.active += 1
        try:
            await self._serve(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Abort, trio.TooSlowError):
            pass
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, client: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HTTP_MAX_HEADER_BYTES)
        while True:
            with trio.CancelScope(deadline=trio.current_time() + HTTP_KEEPALIVE_TIMEOUT) as scope:
                try:
                    request = await _read_request(conn, stream, scope, client)
                except h11.RemoteProtocolError as exc:
                    await _send_error(
                        conn, stream, exc.error_status_hint, f"malformed request: {exc}"
                    )
                    return
                except _ClientError as exc:
                    await _send_error(conn, stream, exc.status, exc.message)
                    return
            if scope.cancelled_caught:
                if conn.their_state is h11.SEND_BODY or _has_partial(conn):
                    await _send_error(conn, stream, 408, "request timed out")
                return  # an idle keep-alive connection: close quietly
            if request is None:
                return  # the client closed the connection
            self.requests += 1
            response = await self._respond(request)
            await _send_response(conn, stream, request, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _respond(self, request: Request) -> Response:
        try:
            response = await self.handler(request)
        except HTTPError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.target)
            response = error_response(500, "internal server error")
        log.debug("%s %s %s -> %d", request.client, request.method, request.target, response.status)
        return response


def _has_partial(conn: h11.Connection) -> bool:
    data, _closed = conn.trailing_data
    return bool(data)


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, scope: trio.CancelScope, client: str
) -> Request | None:
    """Read one whole request (head and body) or None when the client closed the connection."""
    head: h11.Request | None = None
    body = bytearray()
    started = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(HTTP_READ_SIZE)
            if data and not started:
                started = True
                scope.deadline = trio.current_time() + HTTP_HEADER_TIMEOUT
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            raise _Abort()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            if not started:
                started = True
                scope.deadline = trio.current_time() + HTTP_HEADER_TIMEOUT
            head = event
            size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if size > HTTP_MAX_HEADER_BYTES:  # h11 only bounds heads that arrive in pieces
                raise _ClientError(431, f"request head larger than {HTTP_MAX_HEADER_BYTES} bytes")
            length = _content_length(event)
            if length is not None and length > HTTP_MAX_BODY_BYTES:
                raise _ClientError(413, f"request body larger than {HTTP_MAX_BODY_BYTES} bytes")
            if conn.they_are_waiting_for_100_continue:
                await _write(
                    stream, conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > HTTP_MAX_BODY_BYTES:
                raise _ClientError(413, f"request body larger than {HTTP_MAX_BODY_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return _make_request(head, bytes(body), client)


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


def _make_request(head: h11.Request, body: bytes, client: str) -> Request:
    try:
        target = head.target.decode("ascii")
    except UnicodeDecodeError:
        raise _ClientError(400, "request target is not ASCII") from None
    try:
        path, query = parse_target(target)
    except HTTPError as exc:
        raise _ClientError(exc.status, exc.message) from None
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("ascii", "replace")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        head.method.decode("ascii", "replace"), target, path, query, headers, body, client
    )


async def _write(stream: trio.SocketStream, data: bytes | None) -> None:
    if not data:
        return
    with trio.fail_after(HTTP_WRITE_TIMEOUT):
        await stream.send_all(data)


def _head(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    encoded = [(b"server", SERVER_NAME.encode())]
    encoded += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        reason = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, headers=encoded, reason=reason)


async def _send_error(
    conn: h11.Connection, stream: trio.SocketStream, status: int, message: str
) -> None:
    """Answer a request we could not read, then the caller closes the connection."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    resp = error_response(status, message, [("Connection", "close")])
    try:
        if conn.their_state is h11.IDLE or conn.their_state is h11.ERROR:
            raise h11.LocalProtocolError("no request to answer")
        await _write(stream, conn.send(_head(resp.status, _with_length(resp))))
        await _write(stream, conn.send(h11.Data(data=resp.body)))
        await _write(stream, conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:  # h11 cannot frame a response now: write a canned one
        await _send_canned(stream, status, message)


async def _send_canned(stream: trio.SocketStream, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: {SERVER_NAME}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        await _write(stream, head.encode("ascii") + body)


def _with_length(resp: Response) -> list[tuple[str, str]]:
    headers = list(resp.headers)
    if resp.stream is None:
        headers.append(("Content-Length", str(len(resp.body))))
    elif resp.content_length is not None:
        headers.append(("Content-Length", str(resp.content_length)))
    return headers


async def _send_response(
    conn: h11.Connection, stream: trio.SocketStream, request: Request, resp: Response
) -> None:
    await _write(stream, conn.send(_head(resp.status, _with_length(resp))))
    if request.method != "HEAD" and resp.status not in (204, 304):
        if resp.stream is None:
            if resp.body:
                await _write(stream, conn.send(h11.Data(data=resp.body)))
        else:

            async def write(chunk: bytes) -> None:
                if chunk:
                    await _write(stream, conn.send(h11.Data(data=chunk)))

            try:
                await resp.stream(write)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                raise
            except Exception as exc:  # headers are out: all we can do is cut the body short
                log.warning("%s %s: response aborted: %s", request.method, request.target, exc)
                raise _Abort() from exc
    try:
        await _write(stream, conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError as exc:  # the body was shorter than its Content-Length
        log.warning("%s %s: response aborted: %s", request.method, request.target, exc)
        raise _Abort() from exc
