"""The h11-based HTTP server: keep-alive, streaming, limits, malformed input; gateway helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.daemon import http as http_mod
from fileshare.daemon.gateway import _parse_range, negotiate
from fileshare.daemon.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Write,
    json_response,
    parse_target,
)
from fileshare.limits import HTTP_MAX_BODY_BYTES, HTTP_MAX_HEADER_BYTES


async def handler(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("bug")
    if request.path == "/teapot":
        raise HTTPError(418, "short and stout")
    if request.path == "/stream":

        async def stream(write: Write) -> None:
            for i in range(3):
                await write(f"chunk{i};".encode())

        return Response(200, [("Content-Type", "text/plain")], stream=stream)
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": len(request.body),
        }
    )


@asynccontextmanager
async def server() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(HTTPServer(handler).serve, "127.0.0.1", 0)
        yield bound[0][1]
        nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                await stream.send_all(data)
                await stream.send_eof()  # then the server sees the end of a truncated request
            except trio.BrokenResourceError:
                pass
            out = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
            return out


def get(path: str, extra: str = "", close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{conn}{extra}\r\n".encode()


async def test_keep_alive_and_json() -> None:
    async with server() as port:
        out = await exchange(port, get("/a%20b?x=1&x=2&y", close=False) + get("/second"))
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert b'"path":"/a b","query":{"x":"1","y":""}' in out
    assert b'"path":"/second"' in out


async def test_streamed_head_and_errors() -> None:
    async with server() as port:
        streamed = await exchange(port, get("/stream"))
        assert b"transfer-encoding: chunked" in streamed.lower()
        assert b"chunk0;" in streamed and b"chunk2;" in streamed
        head = await exchange(port, get("/x").replace(b"GET", b"HEAD"))
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        teapot = await exchange(port, get("/teapot"))
        assert teapot.startswith(b"HTTP/1.1 418") and b'{"error":"short and stout"}' in teapot
        boom = await exchange(port, get("/boom"))
        assert boom.startswith(b"HTTP/1.1 500") and b"internal server error" in boom
        post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        assert b'"body":5' in await exchange(port, post)


async def test_limits() -> None:
    async with server() as port:
        big = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {HTTP_MAX_BODY_BYTES + 1}\r\n\r\n"
        assert (await exchange(port, big.encode())).startswith(b"HTTP/1.1 413")
        huge = get("/", extra=f"X-Big: {'a' * HTTP_MAX_HEADER_BYTES}\r\n")
        assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431")
        long_target = get("/" + "a" * 5000)
        assert (await exchange(port, long_target)).startswith(b"HTTP/1.1 414")
        assert (await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await exchange(port, get("/ok"))).startswith(b"HTTP/1.1 200")


async def test_slow_request_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_mod, "HTTP_HEADER_TIMEOUT", 0.2)
    monkeypatch.setattr(http_mod, "HTTP_KEEPALIVE_TIMEOUT", 0.2)
    async with server() as port:
        with trio.fail_after(3):  # a request that stalls half-way gets 408
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost")
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 408")
            await stream.aclose()
        with trio.fail_after(3):  # an idle connection is closed quietly
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await stream.receive_some(10) == b""
            await stream.aclose()


async def test_connection_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_mod, "HTTP_MAX_CONNECTIONS", 1)
    async with server() as port:
        held = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.sleep(0.05)
        assert (await exchange(port, get("/"))).startswith(b"HTTP/1.1 503")
        await held.aclose()
        await trio.sleep(0.05)
        assert (await exchange(port, get("/"))).startswith(b"HTTP/1.1 200")


request_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, target, headers, tail: (
            f"{method} {target} HTTP/1.1\r\n".encode() + headers + b"\r\n\r\n" + tail
        ),
        st.sampled_from(["GET", "POST", "HEAD", "G\x00T", ""]),
        st.text(max_size=40),
        st.binary(max_size=80),
        st.binary(max_size=40),
    ),
)


@settings(max_examples=40, deadline=None)
@given(request_bytes)
async def test_fuzzed_requests_never_break_the_server(data: bytes) -> None:
    async with server() as port:
        out = await exchange(port, data)
        if out:
            assert out.startswith(b"HTTP/1.1 "), out[:80]
            assert not out.startswith(b"HTTP/1.1 5"), out[:200]
        assert (await exchange(port, get("/after"))).startswith(b"HTTP/1.1 200")


@given(st.text(max_size=200))
def test_parse_target_raises_only_http_errors(text: str) -> None:
    try:
        path, query = parse_target(text)
    except HTTPError as exc:
        assert exc.status in (400, 414)
    else:
        assert isinstance(path, str) and isinstance(query, dict)


def test_negotiation() -> None:
    assert negotiate({"format": "raw"}, "application/vnd.ipld.car").kind == "raw"
    assert negotiate({}, "application/vnd.ipld.raw").kind == "raw"
    car = negotiate({}, "application/vnd.ipld.car; version=1; order=dfs; dups=y")
    assert car.kind == "car" and car.dups
    assert not negotiate({"format": "car"}, "").dups
    assert negotiate({"format": "car", "car-dups": "y"}, "").dups
    pref = negotiate({}, "application/vnd.ipld.car;version=2, application/vnd.ipld.raw;q=0.5")
    assert pref.kind == "raw"
    assert negotiate({}, "").kind == "file"
    assert negotiate({}, "text/html,application/xhtml+xml,*/*;q=0.8").kind == "file"
    with pytest.raises(HTTPError) as exc:
        negotiate({}, "application/vnd.ipld.dag-json")
    assert exc.value.status == 406
    with pytest.raises(HTTPError) as exc:
        negotiate({"format": "tar"}, "")
    assert exc.value.status == 400


def test_ranges() -> None:
    assert _parse_range("", 100) is None
    assert _parse_range("bytes=0-9", 100) == (0, 10)
    assert _parse_range("bytes=90-", 100) == (90, 100)
    assert _parse_range("bytes=-10", 100) == (90, 100)
    assert _parse_range("bytes=50-1000", 100) == (50, 100)
    assert _parse_range("bytes=0-1,5-6", 100) is None  # multiple ranges: the whole file
    for bad in ("bytes=100-", "bytes=5-4", "bytes=-0"):
        with pytest.raises(HTTPError) as exc:
            _parse_range(bad, 100)
        assert exc.value.status == 416
