"""Hostile peers that get past the handshake: bad Noise frames and bad yamux frames.

Each hostile client completes TCP -> multistream -> Noise -> multistream yamux with our host (a
real listener on 127.0.0.1), then misbehaves at the frame level. The host must close that
connection (or, for a frame on an unknown stream, reset just that stream) with a logged reason,
and keep serving a well-behaved peer in the same test.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from fileshare.errors import ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.limits import YAMUX_MAX_STREAMS
from fileshare.net import addrs
from fileshare.net.buffered import BufferedStream
from fileshare.net.host import Host, open_host
from fileshare.net.multistream import select_outbound
from fileshare.net.noise import SecureStream, secure_outbound
from fileshare.protocols.ping import PingService, ping

LOOPBACK = addrs.parse("/ip4/127.0.0.1/tcp/0")
HEADER = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


@asynccontextmanager
async def serving_host() -> AsyncIterator[Host]:
    async with open_host(PrivateKey.generate(), listen=[LOOPBACK]) as host:
        PingService(host)
        yield host


class Hostile:
    """A client that speaks just enough of the stack to reach yamux, then sends raw frames."""

    def __init__(self, secure: SecureStream, reader: BufferedStream) -> None:
        self.secure = secure
        self.reader = reader

    @classmethod
    async def connect(cls, target: Host) -> Hostile:
        host, port, _family = addrs.tcp_endpoint(target.listen_addrs()[0])
        tcp = await trio.open_tcp_stream(host, port)
        raw = BufferedStream(tcp)
        assert await select_outbound(raw, ["/noise"]) == "/noise"
        secure = await secure_outbound(raw, PrivateKey.generate(), target.peer_id)
        reader = BufferedStream(secure)
        assert await select_outbound(reader, ["/yamux/1.0.0"]) == "/yamux/1.0.0"
        return cls(secure, reader)

    async def frame(
        self, ftype: int, flags: int, stream_id: int, length: int, body: bytes = b""
    ) -> None:
        await self.secure.send_all(HEADER.pack(0, ftype, flags, stream_id, length) + body)

    async def next_frame(self) -> tuple[int, int, int, int]:
        """The next frame from the host as (type, flags, stream id, length); data bodies skipped."""
        _v, ftype, flags, sid, length = HEADER.unpack(await self.reader.receive_exactly(12))
        if ftype == DATA and length:
            await self.reader.receive_exactly(length)
        return ftype, flags, sid, length

    async def wait_closed(self, timeout: float = 10) -> list[tuple[int, int, int, int]]:
        """Read frames until the host closes the connection; return what it sent before."""
        seen: list[tuple[int, int, int, int]] = []
        with trio.fail_after(timeout):
            while True:
                try:
                    seen.append(await self.next_frame())
                except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return seen

    async def aclose(self) -> None:
        await self.secure.aclose()


async def still_serving(host: Host, other: Host) -> None:
    with trio.fail_after(10):
        assert (
            len(await ping(other, addrs.with_peer(host.listen_addrs()[0], host.peer_id), count=2))
            == 2
        )


@pytest.mark.parametrize(
    "header",
    [
        HEADER.pack(1, DATA, SYN, 1, 0),  # unknown version
        HEADER.pack(0, 9, 0, 1, 0),  # unknown frame type
        HEADER.pack(0, DATA, SYN, 2, 0),  # wrong stream id parity for the dialler (must be odd)
        HEADER.pack(0, DATA, SYN, 1, 64 << 20),  # data frame far past the receive window
    ],
    ids=["bad-version", "unknown-type", "wrong-parity", "past-window"],
)
async def test_invalid_yamux_frame_closes_only_that_connection(
    header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving_host() as host, serving_host() as other:
        hostile = await Hostile.connect(host)
        await hostile.secure.send_all(header)
        sent = await hostile.wait_closed()
        assert (GO_AWAY, 0, 0, 1) in sent, f"expected GoAway(protocol error), got {sent}"
        await hostile.aclose()
        await still_serving(host, other)
    assert "yamux: protocol error, closing connection" in caplog.text


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">H", 5) + b"\x00" * 5,  # shorter than the 16-byte tag
        struct.pack(">H", 100) + b"\x01" * 100,  # ciphertext that fails authentication
    ],
    ids=["short-frame", "bad-tag"],
)
async def test_bad_noise_frame_closes_only_that_connection(frame: bytes) -> None:
    async with serving_host() as host, serving_host() as other:
        hostile = await Hostile.connect(host)
        await hostile.secure.transport.send_all(frame)  # raw bytes under the cipher
        with trio.fail_after(10):
            while True:
                try:
                    if not await hostile.secure.transport.receive_some(65536):
                        break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
        await hostile.aclose()
        await still_serving(host, other)


async def test_data_for_unknown_stream_resets_that_stream_only() -> None:
    async with serving_host() as host:
        hostile = await Hostile.connect(host)
        await hostile.frame(DATA, 0, 1001, 3, b"abc")  # stream 1001 was never opened
        await hostile.frame(PING, SYN, 0, 77)
        got_rst = got_pong = False
        with trio.fail_after(10):
            while not (got_rst and got_pong):
                ftype, flags, sid, length = await hostile.next_frame()
                got_rst |= sid == 1001 and bool(flags & RST)
                got_pong |= ftype == PING and bool(flags & ACK) and length == 77
        await hostile.aclose()


async def test_stream_flood_is_bounded_and_host_keeps_serving() -> None:
    async with serving_host() as host, serving_host() as other:
        hostile = await Hostile.connect(host)
        n = 3000
        burst = b"".join(HEADER.pack(0, WINDOW_UPDATE, SYN, 2 * i + 1, 0) for i in range(n))
        await hostile.secure.send_all(burst)
        resets: set[int] = set()
        with trio.fail_after(20):
            # none of these streams ever negotiates a protocol, so at most YAMUX_MAX_STREAMS of
            # them can be live at once: every one past that must be reset
            while len(resets) < n - YAMUX_MAX_STREAMS:
                _ftype, flags, sid, _length = await hostile.next_frame()
                if flags & RST and sid % 2 == 1:
                    resets.add(sid)
        await still_serving(host, other)
        # the flooding connection itself is still alive and answers a ping
        await hostile.frame(PING, SYN, 0, 5)
        with trio.fail_after(10):
            while (await hostile.next_frame())[0:2] != (PING, ACK):
                pass
        await hostile.aclose()
