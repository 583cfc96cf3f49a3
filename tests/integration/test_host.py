"""Two in-process hosts on 127.0.0.1: dial, streams both ways, identify, ping, bad input, flow control."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from fileshare.errors import FileshareError, ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs
from fileshare.net.host import Connection, DialError, Host, NetStream, open_host
from fileshare.net.multistream import encode_message
from fileshare.protocols.identify import AGENT_VERSION, IDENTIFY_PROTOCOL, IdentifyService
from fileshare.protocols.ping import PING_PROTOCOL, PingService, ping

ECHO = "/test/echo/1.0.0"
LOOPBACK = addrs.parse("/ip4/127.0.0.1/tcp/0")


async def echo(stream: NetStream, conn: Connection) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while chunk := await stream.receive_some():
        parts.append(chunk)
    return b"".join(parts)


@asynccontextmanager
async def node(**kwargs: float) -> AsyncIterator[tuple[Host, IdentifyService]]:
    async with open_host(PrivateKey.generate(), listen=[LOOPBACK], **kwargs) as host:  # type: ignore[arg-type]
        ident = IdentifyService(host)
        PingService(host)
        host.set_stream_handler(ECHO, echo)
        yield host, ident


def full_addr(host: Host) -> addrs.Multiaddr:
    return addrs.with_peer(host.listen_addrs()[0], host.peer_id)


async def echo_roundtrip(src: Host, dst: Host | addrs.Multiaddr | PeerId, data: bytes) -> bytes:
    target = full_addr(dst) if isinstance(dst, Host) else dst
    stream, proto = await src.new_stream(target, ["/not/supported/1.0.0", ECHO])
    assert proto == ECHO
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(data)
            await stream.send_eof()

        nursery.start_soon(send)
        got = await read_all(stream)
    await stream.aclose()
    return got


async def test_dial_streams_both_ways_identify_and_ping() -> None:
    connected: list[PeerId] = []
    disconnected = trio.Event()
    async with node() as (a, ident_a), node() as (b, ident_b):

        async def on_connect(conn: Connection) -> None:
            connected.append(conn.remote_peer)

        async def on_disconnect(conn: Connection) -> None:
            disconnected.set()

        a.on_connect(on_connect)
        a.on_disconnect(on_disconnect)
        with trio.fail_after(10):
            conn = await b.dial(full_addr(a))
            assert conn.remote_peer == a.peer_id
            assert await b.dial(a.peer_id) is conn  # reused
            payload = bytes(range(256)) * 4096  # 1 MiB
            assert await echo_roundtrip(b, a, payload) == payload
            assert await echo_roundtrip(a, b.peer_id, b"back") == b"back"  # other direction
            assert len(a.connections) == 1 and len(b.connections) == 1

            await ident_b.wait_identified(a.peer_id)
            await ident_a.wait_identified(b.peer_id)
        info = b.peerstore.get(a.peer_id)
        assert info is not None
        assert info.agent_version == AGENT_VERSION
        assert info.protocol_version == "ipfs/0.1.0"
        assert {IDENTIFY_PROTOCOL, PING_PROTOCOL, ECHO} <= info.protocols
        assert a.listen_addrs()[0] in info.addrs
        assert info.public_key == a.public_key
        assert info.observed_addr == conn.local_addr
        assert a.peerstore.protocols(b.peer_id) >= {ECHO}
        assert connected == [b.peer_id]

        with trio.fail_after(10):
            rtts = await ping(b, a.peer_id, count=3)
            assert len(rtts) == 3 and all(0 < r < 5 for r in rtts)
            assert len(await ping(a, b.peer_id)) == 1
            await b.disconnect(a.peer_id)
            await disconnected.wait()
        assert not a.is_connected(b.peer_id)


async def test_concurrent_dials_share_one_connection() -> None:
    async with node() as (a, _), node() as (b, _):
        b.peerstore.add_addrs(a.peer_id, a.listen_addrs())
        results: list[Connection] = []

        async def dial() -> None:
            results.append(await b.dial(a.peer_id))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(dial)
        assert len({c.id for c in results}) == 1


async def test_peer_id_mismatch_and_unreachable() -> None:
    async with node() as (a, _), node() as (b, _):
        wrong = PeerId.from_public_key(PrivateKey.generate().public_key())
        bad = addrs.with_peer(a.listen_addrs()[0], wrong)
        with trio.fail_after(10), pytest.raises(DialError, match=str(wrong)):
            await b.dial(bad)
        assert not b.connections
        # nothing listens on a port we just freed
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()
        with trio.fail_after(10), pytest.raises(DialError, match="cannot reach"):
            await b.dial(addrs.parse(f"/ip4/127.0.0.1/tcp/{port}"))
        with trio.fail_after(10):
            assert await echo_roundtrip(b, a, b"still fine") == b"still fine"


async def test_unsupported_protocol_and_failing_handler(caplog: pytest.LogCaptureFixture) -> None:
    async with node() as (a, _), node() as (b, _):

        async def broken(stream: NetStream, conn: Connection) -> None:
            await stream.receive_some()
            raise RuntimeError("handler bug")

        a.set_stream_handler("/test/broken/1.0.0", broken)
        with trio.fail_after(10):
            with pytest.raises(ProtocolError):
                await b.new_stream(full_addr(a), ["/test/missing/1.0.0"])
            stream, _ = await b.new_stream(a.peer_id, ["/test/broken/1.0.0"])
            await stream.send_all(b"trigger")
            with pytest.raises((FileshareError, trio.BrokenResourceError)):
                await stream.receive_some()
            assert await echo_roundtrip(b, a, b"ok") == b"ok"
        assert "handler bug" in caplog.text


async def test_peer_reset_inside_a_handler_nursery_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer resetting a stream while a handler's nursery reads it: INFO, no traceback."""
    caplog.set_level(logging.INFO, logger="fileshare")
    ended = trio.Event()

    async def reader(stream: NetStream, conn: Connection) -> None:
        async def read_all() -> None:
            while await stream.receive_some():
                pass
            raise trio.BrokenResourceError("peer went away")  # as a reset surfaces

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
        finally:
            ended.set()

    async with node() as (a, _), node() as (b, _):
        a.set_stream_handler("/test/reader/1.0.0", reader)
        with trio.fail_after(10):
            stream, _ = await b.new_stream(full_addr(a), ["/test/reader/1.0.0"])
            await stream.send_all(b"some bytes")
            await stream.reset()
            await ended.wait()
            assert await echo_roundtrip(b, a, b"ok") == b"ok"
    records = [r for r in caplog.records if "/test/reader/1.0.0" in r.getMessage()]
    assert records and all(r.levelno == logging.INFO for r in records)


async def _expect_closed(sock: trio.socket.SocketType, limit: float) -> None:
    """Read until the host closes the socket (EOF or reset), within ``limit`` seconds."""
    with trio.fail_after(limit):
        while True:
            try:
                if not await sock.recv(65536):
                    return
            except ConnectionResetError:
                return


async def _raw_connect(host: Host) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    port = addrs.tcp_endpoint(host.listen_addrs()[0])[1]
    await sock.connect(("127.0.0.1", port))
    return sock


async def test_bad_inbound_connections_are_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fileshare")
    async with node(negotiation_timeout=1.5) as (a, _), node() as (b, _):
        garbage = await _raw_connect(a)
        await garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        stalled = await _raw_connect(a)  # says nothing at all
        plaintext = await _raw_connect(a)
        await plaintext.send(
            encode_message("/multistream/1.0.0") + encode_message("/plaintext/2.0.0")
        )
        with trio.fail_after(10):
            # a well-behaved peer keeps working meanwhile
            assert await echo_roundtrip(b, a, b"x" * 100_000) == b"x" * 100_000
            reply = b""
            while b"na\n" not in reply:
                chunk = await plaintext.recv(4096)
                assert chunk, "closed before answering na"
                reply += chunk
            assert b"/plaintext" not in reply
            plaintext.shutdown(trio.socket.SHUT_WR)  # nothing else to offer
        await _expect_closed(garbage, 5)
        await _expect_closed(plaintext, 5)
        await _expect_closed(stalled, 5)
        for sock in (garbage, stalled, plaintext):
            sock.close()
        with trio.fail_after(10):
            assert len(await ping(b, a.peer_id, count=2)) == 2
        assert a.connections and all(c.remote_peer == b.peer_id for c in a.connections)
    closed = [
        r.getMessage() for r in caplog.records if "closed inbound connection" in r.getMessage()
    ]
    assert len(closed) == 3, closed
    assert any("timed out" in m for m in closed)
    assert any("security negotiation failed" in m for m in closed)


async def test_connection_limit(caplog: pytest.LogCaptureFixture) -> None:
    async with node(max_connections=1) as (a, _), node() as (b, _), node() as (c, _):
        with trio.fail_after(10):
            await b.dial(full_addr(a))
            with pytest.raises(DialError):
                await c.dial(full_addr(a))
            assert await echo_roundtrip(b, a, b"1") == b"1"
    assert "limit of 1 connections reached" in caplog.text


@pytest.mark.slow
async def test_stalled_reader_stalls_sender_then_completes() -> None:
    """A reader that stops for 30 s holds the writer back by flow control; nothing times out."""
    total = 64 * 1024 * 1024
    received = 0
    sent = 0
    paused = trio.Event()
    resume = trio.Event()
    done = trio.Event()

    async def slow_sink(stream: NetStream, conn: Connection) -> None:
        nonlocal received
        while chunk := await stream.receive_some(65536):
            received += len(chunk)
            if received >= 4 * 1024 * 1024 and not paused.is_set():
                paused.set()
                await resume.wait()
        await stream.send_all(received.to_bytes(8, "big"))
        done.set()

    async with node() as (a, _), node() as (b, _):
        a.set_stream_handler("/test/sink/1.0.0", slow_sink)
        stream, _ = await b.new_stream(full_addr(a), ["/test/sink/1.0.0"])
        block = b"\xab" * 65536

        async def writer() -> None:
            nonlocal sent
            while sent < total:
                await stream.send_all(block)
                sent += len(block)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            with trio.fail_after(30):
                await paused.wait()
            await trio.sleep(2)
            stalled_at = sent
            await trio.sleep(28)
            assert sent == stalled_at, "the writer kept going while the reader was stalled"
            assert sent < total
            resume.set()
            with trio.fail_after(60):
                await done.wait()
                assert int.from_bytes(await stream.receive_exactly(8), "big") == total
        assert received == total
