"""yamux: sans-io core, trio driver over memory streams and 127.0.0.1 TCP, bad input, fuzzing."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fileshare.errors import LimitExceeded, ProtocolError
from fileshare.limits import YAMUX_INITIAL_WINDOW, YAMUX_MAX_UNACKED_INBOUND
from fileshare.net.yamux import (
    YAMUX_PROTOCOL_ID,
    StreamReset,
    YamuxConnection,
    YamuxError,
    YamuxSession,
    YamuxStream,
)
from fileshare.net.yamux_core import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    DataReceived,
    PongReceived,
    SendWindowUpdated,
    StreamEnded,
    StreamOpened,
    StreamWasReset,
    encode_header,
)

KIB = 1024
MIB = 1024 * KIB


def frame(typ: int, flags: int, sid: int, length: int, payload: bytes = b"") -> bytes:
    return encode_header(typ, flags, sid, length) + payload


# ---------------------------------------------------------------- sans-io core


def test_protocol_id_and_header_layout() -> None:
    assert YAMUX_PROTOCOL_ID == "/yamux/1.0.0"
    assert encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 7, 0x01020304) == bytes(
        [0, 1, 0, 3, 0, 0, 0, 7, 1, 2, 3, 4]
    )


def test_core_open_accept_data_fin_between_two_sessions() -> None:
    client = YamuxSession(is_initiator=True)
    server = YamuxSession(is_initiator=False)
    sid, syn = client.open_stream()
    assert sid == 1
    events = server.feed(syn)
    assert events == [StreamOpened(1)]
    ack = server.accept_stream(1)
    assert client.feed(ack) == []  # an ACK with delta 0 only acknowledges
    assert client.unacked_outbound == 0
    wire = client.send_data(1, b"hello") + client.close_stream(1)
    # byte by byte: a header split anywhere must give the same result
    got: list[object] = []
    for i in range(len(wire)):
        got += server.feed(wire[i : i + 1])
    assert b"".join(e.data for e in got if isinstance(e, DataReceived)) == b"hello"
    assert got[-1] == StreamEnded(1)
    assert server.open_stream()[0] == 2  # the responder uses even ids


def test_core_ping_is_answered_with_ack_echoing_opaque() -> None:
    s = YamuxSession(is_initiator=True)
    assert s.feed(frame(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF)) == []
    assert s.data_to_send() == frame(TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF)
    assert s.feed(frame(TYPE_PING, FLAG_ACK, 0, 42)) == [PongReceived(42)]


def test_core_accepts_syn_on_window_update_with_larger_window_and_syn_on_data() -> None:
    s = YamuxSession(is_initiator=False)
    events = s.feed(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 768 * KIB))
    assert events == [StreamOpened(1), SendWindowUpdated(1)]
    assert s.send_window(1) == YAMUX_INITIAL_WINDOW + 768 * KIB
    events = s.feed(frame(TYPE_DATA, FLAG_SYN, 3, 3, b"abc"))
    assert events == [StreamOpened(3), DataReceived(3, b"abc")]


def test_core_window_update_sent_after_half_window_and_grows_when_fast() -> None:
    s = YamuxSession(is_initiator=False)
    s.feed(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
    s.accept_stream(1, now=0.0)
    s.rtt = 0.010
    s.feed(frame(TYPE_DATA, 0, 1, 256 * KIB, bytes(256 * KIB)))
    assert s.consumed(1, 64 * KIB, now=0.001) == b""  # not per read
    update = s.consumed(1, 64 * KIB, now=0.002)  # half the window, drained fast
    assert update[:8] == encode_header(TYPE_WINDOW_UPDATE, 0, 1, 0)[:8]
    (delta,) = struct.unpack(">I", update[8:])
    assert delta == 128 * KIB + 256 * KIB  # consumed bytes + growth from 256 to 512 KiB
    assert s.recv_window(1) == 512 * KIB
    # slow consumer: no growth
    s.feed(frame(TYPE_DATA, 0, 1, 384 * KIB, bytes(384 * KIB)))  # the whole credit
    update = s.consumed(1, 256 * KIB, now=5.0)
    assert struct.unpack(">I", update[8:])[0] == 256 * KIB
    assert s.recv_window(1) == 512 * KIB


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x01" + frame(TYPE_PING, FLAG_SYN, 0, 1)[1:], "version"),
        (frame(9, 0, 0, 0), "type"),
        (frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), "parity"),
        (frame(TYPE_DATA, FLAG_SYN, 2, 256 * KIB + 1), "window"),
        (frame(TYPE_DATA, 0, 0, 1, b"x"), "stream 0"),
        (frame(TYPE_PING, FLAG_SYN, 5, 1), "ping on stream"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_core_protocol_errors_queue_go_away(wire: bytes, reason: str) -> None:
    s = YamuxSession(is_initiator=True)  # the peer must use even ids
    with pytest.raises(YamuxError):
        s.feed(wire)
    assert s.data_to_send() == frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
    assert s.terminated
    with pytest.raises(YamuxError):
        s.feed(b"")


def test_core_data_for_unknown_stream_is_reset_not_fatal() -> None:
    s = YamuxSession(is_initiator=False)
    assert s.feed(frame(TYPE_DATA, 0, 9, 4, b"lost")) == []
    assert s.data_to_send() == frame(TYPE_WINDOW_UPDATE, FLAG_RST, 9, 0)
    assert s.feed(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)) == [StreamOpened(1)]
    assert s.feed(frame(TYPE_DATA, FLAG_RST, 1, 0)) == [StreamWasReset(1)]
    assert s.data_to_send() == b""  # never answer an RST with an RST


def test_core_window_overflow_is_protocol_error() -> None:
    s = YamuxSession(is_initiator=False)
    s.feed(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
    with pytest.raises(YamuxError):
        s.feed(frame(TYPE_WINDOW_UPDATE, 0, 1, 0xFFFFFFFF))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.booleans())
def test_core_arbitrary_bytes_raise_only_protocol_errors(data: bytes, initiator: bool) -> None:
    s = YamuxSession(is_initiator=initiator)
    try:
        s.feed(data)
        s.data_to_send()
    except ProtocolError:
        pass


_frames = st.builds(
    lambda typ, flags, sid, length, pay: frame(typ, flags, sid, length, pay),
    st.integers(0, 4),
    st.integers(0, 0x1F),
    st.sampled_from([0, 1, 2, 3, 4, 0xFFFFFFFF]),
    st.sampled_from([0, 1, 5, 256 * KIB, 0xFFFFFFFF]),
    st.binary(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=30), st.integers(1, 13))
def test_core_random_frame_sequences_raise_only_protocol_errors(
    frames: list[bytes], step: int
) -> None:
    s = YamuxSession(is_initiator=False)
    wire = b"".join(frames)
    try:
        for i in range(0, len(wire), step):
            for ev in s.feed(wire[i : i + step]):
                if isinstance(ev, StreamOpened):
                    s.accept_stream(ev.stream_id)
                elif isinstance(ev, DataReceived):
                    s.consumed(ev.stream_id, len(ev.data))
    except ProtocolError:
        assert s.terminated


# ---------------------------------------------------------------- driver helpers


@asynccontextmanager
async def yamux_pair(
    transport: str = "memory", **kwargs: int
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    async with trio.open_nursery() as nursery:
        if transport == "tcp":
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            client_t: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
            server_t: trio.abc.Stream = await listeners[0].accept()
            await listeners[0].aclose()
        else:
            client_t, server_t = trio.testing.memory_stream_pair()
        a = YamuxConnection(client_t, is_initiator=True, **kwargs)
        b = YamuxConnection(server_t, is_initiator=False, **kwargs)
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        yield a, b
        await a.aclose()
        await b.aclose()


async def read_all(stream: YamuxStream) -> bytes:
    parts = []
    while chunk := await stream.receive_some():
        parts.append(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------- driver behaviour


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_open_accept_both_directions(transport: str) -> None:
    async with yamux_pair(transport) as (a, b):
        s1 = await a.open_stream()
        await s1.send_all(b"from a")
        r1 = await b.accept_stream()
        assert r1.stream_id == s1.stream_id == 1
        assert await r1.receive_some() == b"from a"
        s2 = await b.open_stream()
        await s2.send_all(b"from b")
        r2 = await a.accept_stream()
        assert r2.stream_id == s2.stream_id == 2
        assert await r2.receive_some() == b"from b"
        assert r1.protocol is None


async def test_many_concurrent_streams_data_integrity_over_tcp() -> None:
    payloads = {i: os.urandom(50 * KIB + i * 997) for i in range(40)}
    results: dict[bytes, bytes] = {}
    async with yamux_pair("tcp") as (a, b):

        async def echo_server() -> None:
            async with trio.open_nursery() as n:
                for _ in range(len(payloads)):
                    stream = await b.accept_stream()
                    n.start_soon(echo, stream)

        async def echo(stream: YamuxStream) -> None:
            data = await read_all(stream)
            await stream.send_all(data[::-1])
            await stream.aclose()

        async def client(i: int) -> None:
            stream = await a.open_stream()
            await stream.send_all(payloads[i])
            await stream.send_eof()
            results[payloads[i]] = await read_all(stream)
            await stream.aclose()

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(echo_server)
                for i in payloads:
                    n.start_soon(client, i)
        assert len(results) == len(payloads)
        assert all(v == k[::-1] for k, v in results.items())
        assert a.session.stream_count == 0 and b.session.stream_count == 0


async def test_half_close_both_ways() -> None:
    async with yamux_pair() as (a, b):
        s = await a.open_stream()
        await s.send_all(b"request")
        await s.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await s.send_all(b"more")
        r = await b.accept_stream()
        assert await read_all(r) == b"request"
        assert await r.receive_some() == b""  # EOF is sticky
        await r.send_all(b"response")  # the other direction is still open
        await r.send_eof()
        assert await read_all(s) == b"response"
        assert a.session.stream_count == 0 and b.session.stream_count == 0


async def test_reset_by_peer_and_locally() -> None:
    async with yamux_pair() as (a, b):
        s = await a.open_stream()
        await s.send_all(b"x")
        r = await b.accept_stream()
        assert await r.receive_some() == b"x"
        async with trio.open_nursery() as n:

            async def blocked_reader() -> None:
                with pytest.raises(StreamReset):
                    await r.receive_some()

            n.start_soon(blocked_reader)
            await trio.testing.wait_all_tasks_blocked()
            await s.reset()
        with pytest.raises(StreamReset):
            await r.send_all(b"y")
        with pytest.raises(StreamReset):
            await s.receive_some()
        with pytest.raises(StreamReset):
            await s.send_all(b"y")
        await s.aclose()  # closing a reset stream is quiet


async def test_go_away_ends_peer_run_and_accept() -> None:
    a_t, b_t = trio.testing.memory_stream_pair()
    a = YamuxConnection(a_t, is_initiator=True)
    b = YamuxConnection(b_t, is_initiator=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(a.run)
            b_done = trio.Event()

            async def run_b() -> None:
                await b.run()  # returns normally on the peer's GoAway
                b_done.set()

            n.start_soon(run_b)
            s = await a.open_stream()
            await s.send_all(b"hi")
            r = await b.accept_stream()
            await a.aclose()
            await b_done.wait()
            assert a.closed and b.closed
            with pytest.raises(trio.EndOfChannel):
                await b.accept_stream()
            assert await r.receive_some() == b"hi"  # buffered data stays readable
            with pytest.raises(StreamReset):
                await r.receive_some()  # no FIN came: the stream was cut
            with pytest.raises(YamuxError):
                await b.open_stream()


async def test_ping_rtt_both_ways() -> None:
    async with yamux_pair("tcp") as (a, b):
        for conn in (a, b):
            rtt = await conn.ping()
            assert 0 < rtt < 1.0
            assert conn.session.rtt == rtt


async def test_stalled_reader_stalls_sender_at_window_then_completes() -> None:
    payload = os.urandom(3 * MIB)
    async with yamux_pair("tcp") as (a, b):
        s = await a.open_stream()
        sent = trio.Event()

        async def sender() -> None:
            await s.send_all(payload)
            await s.send_eof()
            sent.set()

        async with trio.open_nursery() as n:
            n.start_soon(sender)
            r = await b.accept_stream()
            await trio.sleep(1.0)  # the reader does not read
            assert not sent.is_set()
            assert r.buffered == YAMUX_INITIAL_WINDOW  # exactly one window in flight
            assert a.session.send_window(s.stream_id) == 0
            with trio.fail_after(10):
                assert await read_all(r) == payload
        assert sent.is_set()


class DelayedStream(trio.abc.Stream):
    """One direction of a pipe with a fixed one-way delay (for a realistic RTT)."""

    def __init__(self, inner: trio.abc.Stream, delay: float, nursery: trio.Nursery) -> None:
        self._inner = inner
        self._delay = delay
        self._send, self._recv = trio.open_memory_channel[tuple[float, bytes]](10_000)
        nursery.start_soon(self._pump)

    async def _pump(self) -> None:
        async for due, data in self._recv:
            await trio.sleep_until(due)
            await self._inner.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send.send((trio.current_time() + self._delay, bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self._inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._inner.aclose()


async def test_receive_window_grows_on_a_fast_stream_with_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # virtual time: only the simulated 10 ms latency each way counts, not how busy the CPU is
    size = 24 * MIB
    async with trio.open_nursery() as n:
        a_t, b_t = trio.testing.memory_stream_pair()
        a = YamuxConnection(DelayedStream(a_t, 0.01, n), is_initiator=True)
        b = YamuxConnection(DelayedStream(b_t, 0.01, n), is_initiator=False)
        n.start_soon(a.run)
        n.start_soon(b.run)
        await a.ping()
        await b.ping()
        s = await a.open_stream()
        chunk = b"z" * MIB
        start = trio.current_time()

        async def sender() -> None:
            for _ in range(size // MIB):
                await s.send_all(chunk)
            await s.send_eof()

        n.start_soon(sender)
        r = await b.accept_stream()
        with trio.fail_after(20):
            assert len(await read_all(r)) == size
        elapsed = trio.current_time() - start
        assert r.receive_window > YAMUX_INITIAL_WINDOW
        # a fixed 256 KiB window would need >= 96 round trips of 20 ms = 1.9 s
        assert elapsed < 1.9
        await a.aclose()
        await b.aclose()
        n.cancel_scope.cancel()


# ---------------------------------------------------------------- bad input from a raw peer


@asynccontextmanager
async def raw_peer(
    **kwargs: int,
) -> AsyncIterator[tuple[YamuxConnection, trio.abc.Stream, Callable[[], trio.Event]]]:
    """Our connection (responder) against a test-controlled raw byte stream (the initiator)."""
    ours, raw = trio.testing.memory_stream_pair()
    conn = YamuxConnection(ours, is_initiator=False, **kwargs)
    done = trio.Event()

    async def run() -> None:
        await conn.run()
        done.set()

    async with trio.open_nursery() as n:
        n.start_soon(run)
        yield conn, raw, lambda: done
        n.cancel_scope.cancel()


class FrameReader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self, *, pongs: bool = False) -> tuple[int, int, int, int, bytes]:
        """Next frame, skipping pings (our side pings once at start) unless ``pongs``."""
        while True:
            while len(self.buf) < 12:
                more = await self.stream.receive_some()
                if not more:
                    raise EOFError
                self.buf += more
            _, typ, flags, sid, length = struct.unpack(">BBHII", self.buf[:12])
            payload_len = length if typ == TYPE_DATA else 0
            while len(self.buf) < 12 + payload_len:
                self.buf += await self.stream.receive_some()
            payload = self.buf[12 : 12 + payload_len]
            self.buf = self.buf[12 + payload_len :]
            if typ != TYPE_PING or (pongs and flags == FLAG_ACK):
                return typ, flags, sid, length, payload


@pytest.mark.parametrize(
    "bad",
    [
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # version 1
        frame(7, 0, 0, 0),  # unknown type
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0),  # our (even) parity from the initiator
        frame(TYPE_DATA, FLAG_SYN, 1, YAMUX_INITIAL_WINDOW + 1) + bytes(16),  # beyond window
    ],
    ids=["version", "type", "parity", "window"],
)
async def test_bad_input_closes_with_go_away_protocol_error(
    bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        async with raw_peer() as (conn, raw, done):
            await raw.send_all(bad)
            reader = FrameReader(raw)
            assert await reader.next() == (TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR, b"")
            await done().wait()  # run() returned without raising
            assert conn.closed
    assert "protocol error" in caplog.text


async def test_data_on_unknown_stream_is_reset_and_connection_survives() -> None:
    with trio.fail_after(5):
        async with raw_peer() as (conn, raw, _):
            reader = FrameReader(raw)
            await raw.send_all(frame(TYPE_DATA, 0, 41, 3, b"abc"))
            assert await reader.next() == (TYPE_WINDOW_UPDATE, FLAG_RST, 41, 0, b"")
            await raw.send_all(frame(TYPE_DATA, FLAG_SYN, 1, 2, b"ok"))
            stream = await conn.accept_stream()
            assert await stream.receive_some() == b"ok"
            assert not conn.closed


async def test_flood_of_inbound_streams_is_bounded_and_connection_stays_usable() -> None:
    flood = 3000
    with trio.fail_after(10):
        async with raw_peer() as (conn, raw, _):
            reader = FrameReader(raw)
            await raw.send_all(
                b"".join(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(flood))
            )
            resets: set[int] = set()
            while len(resets) < flood - YAMUX_MAX_UNACKED_INBOUND:
                typ, flags, sid, _, _ = await reader.next()
                assert (typ, flags) == (TYPE_WINDOW_UPDATE, FLAG_RST)
                resets.add(sid)
            assert min(resets) == 2 * YAMUX_MAX_UNACKED_INBOUND + 1  # the first 256 were kept
            assert conn.session.stream_count == YAMUX_MAX_UNACKED_INBOUND
            assert conn.session.rejected_streams == flood - YAMUX_MAX_UNACKED_INBOUND
            # the kept streams still work
            await raw.send_all(frame(TYPE_DATA, FLAG_FIN, 1, 5, b"first"))
            stream = await conn.accept_stream()
            assert stream.stream_id == 1
            assert await read_all(stream) == b"first"
            assert await reader.next() == (TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0, b"")
            # accepting freed a slot: one new stream is admitted again
            await raw.send_all(frame(TYPE_DATA, FLAG_SYN, 2 * flood + 1, 1, b"!"))
            await trio.testing.wait_all_tasks_blocked()
            assert conn.session.rejected_streams == flood - YAMUX_MAX_UNACKED_INBOUND
            await raw.send_all(frame(TYPE_PING, FLAG_SYN, 0, 77))
            assert await reader.next(pongs=True) == (TYPE_PING, FLAG_ACK, 0, 77, b"")
            assert not conn.closed


async def test_open_stream_respects_max_streams() -> None:
    async with yamux_pair(max_streams=3) as (a, _):
        streams = [await a.open_stream() for _ in range(3)]
        with pytest.raises(LimitExceeded):
            await a.open_stream()
        await streams[0].reset()  # frees a slot
        await a.open_stream()


async def test_transport_eof_ends_run_and_resets_open_streams() -> None:
    ours, raw = trio.testing.memory_stream_pair()
    conn = YamuxConnection(ours, is_initiator=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(conn.run)
            await raw.send_all(frame(TYPE_DATA, FLAG_SYN, 1, 3, b"abc"))
            await raw.send_all(frame(TYPE_DATA, FLAG_SYN | FLAG_FIN, 3, 3, b"def"))
            s1 = await conn.accept_stream()
            s3 = await conn.accept_stream()
            await raw.aclose()  # no GoAway: the transport just ends
        assert conn.closed
        assert await s1.receive_some() == b"abc"
        with pytest.raises(StreamReset):
            await s1.receive_some()
        assert await read_all(s3) == b"def"  # it had its FIN: a clean EOF
        with pytest.raises(StreamReset):
            await s3.send_all(b"late")


async def test_closing_a_stream_early_does_not_stall_the_peer() -> None:
    payload = os.urandom(2 * MIB)
    async with yamux_pair() as (a, b):
        s = await a.open_stream()
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(s.send_all, payload)
                r = await b.accept_stream()
                assert await r.receive_some(10) == payload[:10]
                await r.aclose()  # FIN + discard whatever still comes
                with pytest.raises(trio.ClosedResourceError):
                    await r.receive_some()
        assert await s.receive_some() == b""  # we saw the peer's FIN
        await s.send_eof()
        await trio.testing.wait_all_tasks_blocked()
        assert a.session.stream_count == 0 and b.session.stream_count == 0


async def test_concurrent_receivers_on_one_stream_are_refused() -> None:
    async with yamux_pair() as (a, _):
        s = await a.open_stream()
        async with trio.open_nursery() as n:
            n.start_soon(s.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await s.receive_some()
            n.cancel_scope.cancel()
