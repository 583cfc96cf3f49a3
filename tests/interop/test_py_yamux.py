"""Interop: our yamux over our Noise with a real py-libp2p 0.8.1 peer (Noise only + yamux) on
127.0.0.1, both directions, 10 MiB through py-libp2p's echo handler. No host layer: the test drives
multistream -> Noise -> multistream -> YamuxConnection by hand so a failure points at yamux."""

from __future__ import annotations

import hashlib

import pytest
import trio

from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net.buffered import BufferedStream
from fileshare.net.multistream import select_inbound, select_outbound
from fileshare.net.noise import NOISE_PROTOCOL_ID, secure_inbound, secure_outbound
from fileshare.net.yamux import YAMUX_PROTOCOL_ID, YamuxConnection, YamuxStream

from .peers import ECHO_PROTOCOL, PeerFactory, payload_chunk, payload_sha256

pytest.importorskip("libp2p")

pytestmark = pytest.mark.interop

SIZE = 10 * 1024 * 1024
CHUNK = 256 * 1024
TIMEOUT = 60


def _tcp_port(multiaddr: str) -> int:
    parts = multiaddr.split("/")
    return int(parts[parts.index("tcp") + 1])


async def _echo_through(stream: BufferedStream, size: int) -> tuple[int, str]:
    """Send ``size`` payload bytes and half-close, while reading the echo back to EOF."""
    digest = hashlib.sha256()
    count = 0

    async def send() -> None:
        for off in range(0, size, CHUNK):
            await stream.send_all(payload_chunk(off, min(CHUNK, size - off)))
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while data := await stream.receive_some():
            digest.update(data)
            count += len(data)
    return count, digest.hexdigest()


async def test_we_dial_py_libp2p_and_echo_10_mib(py_peer: PeerFactory) -> None:
    peer = await py_peer(services=["echo"])
    key = PrivateKey.generate()
    with trio.fail_after(TIMEOUT):
        tcp = BufferedStream(await trio.open_tcp_stream("127.0.0.1", _tcp_port(peer.addr)))
        assert await select_outbound(tcp, [NOISE_PROTOCOL_ID]) == NOISE_PROTOCOL_ID
        secure = BufferedStream(
            await secure_outbound(tcp, key, expected_peer=PeerId.from_string(peer.peer_id))
        )
        assert await select_outbound(secure, [YAMUX_PROTOCOL_ID]) == YAMUX_PROTOCOL_ID
        conn = YamuxConnection(secure, is_initiator=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            assert 0 < await conn.ping() < 5  # py-libp2p answers yamux pings
            muxed = await conn.open_stream()
            stream = BufferedStream(muxed)
            assert await select_outbound(stream, [ECHO_PROTOCOL]) == ECHO_PROTOCOL
            count, digest = await _echo_through(stream, SIZE)
            assert count == SIZE
            assert digest == payload_sha256(SIZE)
            await stream.aclose()
            served = (await peer.command("served"))["served"]
            assert [(r["bytes"], r["ok"]) for r in served] == [(SIZE, True)]
            await conn.aclose()
        assert conn.closed


async def test_py_libp2p_dials_us_and_echoes_10_mib(py_peer: PeerFactory) -> None:
    key = PrivateKey.generate()
    me = PeerId.from_public_key(key.public_key())
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    served: list[tuple[int, str]] = []

    async def serve_echo(muxed: YamuxStream) -> None:
        stream = BufferedStream(muxed)
        try:
            if await select_inbound(stream, {ECHO_PROTOCOL}) != ECHO_PROTOCOL:
                return
        except Exception:
            await muxed.reset()  # identify etc.: not served here
            return
        digest = hashlib.sha256()
        count = 0
        while data := await stream.receive_some():
            digest.update(data)
            count += len(data)
            await stream.send_all(data)
        await stream.send_eof()
        served.append((count, digest.hexdigest()))

    async def serve_connection(conn: YamuxConnection, nursery: trio.Nursery) -> None:
        while True:
            try:
                muxed = await conn.accept_stream()
            except trio.EndOfChannel:
                return
            nursery.start_soon(serve_echo, muxed)

    peer = await py_peer(services=["echo"])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def accept_one() -> YamuxConnection:
                tcp = BufferedStream(await listener.accept())
                await select_inbound(tcp, {NOISE_PROTOCOL_ID})
                secure = BufferedStream(await secure_inbound(tcp, key))
                await select_inbound(secure, {YAMUX_PROTOCOL_ID})
                return YamuxConnection(secure, is_initiator=False)

            conns: list[YamuxConnection] = []

            async def accept_and_run() -> None:
                conn = await accept_one()
                conns.append(conn)
                async with trio.open_nursery() as inner:
                    inner.start_soon(conn.run)
                    await serve_connection(conn, inner)

            nursery.start_soon(accept_and_run)
            reply = await peer.command(
                "echo", addr=f"/ip4/127.0.0.1/tcp/{port}/p2p/{me}", size=SIZE, timeout=TIMEOUT
            )
            assert reply["bytes"] == SIZE
            assert reply["sha256"] == reply["sent_sha256"] == payload_sha256(SIZE)
            assert served == [(SIZE, payload_sha256(SIZE))]
            print(f"py-libp2p -> our yamux echo: {SIZE / reply['seconds'] / 1e6:.1f} MB/s")
            await conns[0].aclose()
    await listener.aclose()
