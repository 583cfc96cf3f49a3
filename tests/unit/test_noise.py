"""Noise XX (libp2p): the sans-io handshake, SecureStream framing, and the trio drivers."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import ProtocolError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.limits import NOISE_MAX_FRAME
from fileshare.net.buffered import BufferedStream
from fileshare.net.noise import (
    HandshakeError,
    NoiseError,
    NoiseHandshake,
    SecureStream,
    secure_inbound,
    secure_outbound,
)
from fileshare.net.noise_handshake import HandshakePayload, HandshakeResult, hkdf

ALICE = PrivateKey.from_seed(bytes(range(32)))
BOB = PrivateKey.from_seed(bytes(range(32, 64)))
ALICE_ID = PeerId.from_public_key(ALICE.public_key())
BOB_ID = PeerId.from_public_key(BOB.public_key())


def run_cores(
    init: NoiseHandshake, resp: NoiseHandshake
) -> tuple[HandshakeResult, HandshakeResult]:
    msg1 = init.start()
    assert resp.start() == b""
    msg2 = resp.receive_data(msg1)
    msg3 = init.receive_data(msg2)
    assert init.complete and not resp.complete
    assert resp.receive_data(msg3) == b""
    assert init.result is not None and resp.result is not None
    return init.result, resp.result


def test_sans_io_handshake_and_transport() -> None:
    ri, rr = run_cores(
        NoiseHandshake(True, ALICE, expected_peer=BOB_ID, muxers=["/yamux/1.0.0"]),
        NoiseHandshake(False, BOB, muxers=["/mplex/6.7.0", "/yamux/1.0.0"]),
    )
    assert ri.remote_peer == BOB_ID and rr.remote_peer == ALICE_ID
    assert ri.remote_muxers == ("/mplex/6.7.0", "/yamux/1.0.0")
    assert rr.remote_muxers == ("/yamux/1.0.0",)
    assert ri.handshake_hash == rr.handshake_hash
    ct = ri.send_cipher.encrypt_with_ad(b"", b"hello")
    assert len(ct) == 5 + 16
    assert rr.recv_cipher.decrypt_with_ad(b"", ct) == b"hello"
    ct2 = rr.send_cipher.encrypt_with_ad(b"", b"back")
    assert ri.recv_cipher.decrypt_with_ad(b"", ct2) == b"back"


def test_hkdf_matches_rfc5869_construction() -> None:
    # Noise's HKDF with 2 outputs equals RFC 5869 HKDF(salt=ck, ikm, info="") expanded to 64 bytes
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ck, ikm = os.urandom(32), os.urandom(32)
    ref = HKDF(hashes.SHA256(), 64, salt=ck, info=b"").derive(ikm)
    assert b"".join(hkdf(ck, ikm, 2)) == ref
    ref3 = HKDF(hashes.SHA256(), 96, salt=ck, info=b"").derive(ikm)
    assert b"".join(hkdf(ck, ikm, 3)) == ref3


def test_expected_peer_mismatch_refused_before_message_3() -> None:
    init = NoiseHandshake(True, ALICE, expected_peer=ALICE_ID)
    resp = NoiseHandshake(False, BOB)
    msg2 = resp.receive_data(init.start()) if resp.start() == b"" else b""
    with pytest.raises(HandshakeError, match="expected peer"):
        init.receive_data(msg2)


class LyingKey(PrivateKey):
    """Signs with garbage: the static-key signature will not verify."""

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(64)


def test_bad_signature_refused_both_ways() -> None:
    liar = LyingKey.from_protobuf(BOB.to_protobuf())
    init = NoiseHandshake(True, ALICE)
    resp = NoiseHandshake(False, liar)
    resp.start()
    with pytest.raises(HandshakeError, match="signature"):
        init.receive_data(resp.receive_data(init.start()))
    init = NoiseHandshake(True, LyingKey.from_protobuf(ALICE.to_protobuf()))
    resp = NoiseHandshake(False, BOB)
    resp.start()
    msg3 = init.receive_data(resp.receive_data(init.start()))
    with pytest.raises(HandshakeError, match="signature"):
        resp.receive_data(msg3)


def test_tampered_handshake_message() -> None:
    init = NoiseHandshake(True, ALICE)
    resp = NoiseHandshake(False, BOB)
    resp.start()
    msg2 = bytearray(resp.receive_data(init.start()))
    msg2[50] ^= 1
    with pytest.raises(HandshakeError):
        init.receive_data(bytes(msg2))


def test_low_order_ephemeral_refused() -> None:
    resp = NoiseHandshake(False, BOB)
    resp.start()
    with pytest.raises(HandshakeError):
        resp.receive_data(b"\x00\x20" + bytes(32))  # the all-zero X25519 point


def test_payload_codec() -> None:
    p = HandshakePayload(b"key", b"sig", ("/yamux/1.0.0",), (b"h",))
    assert HandshakePayload.decode(p.encode()) == p
    with pytest.raises(ProtocolError):
        HandshakePayload.decode(b"\x0a\x03key")  # no signature


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_responder_core_arbitrary_bytes_only_protocol_error(chunks: list[bytes]) -> None:
    resp = NoiseHandshake(False, BOB)
    resp.start()
    try:
        for chunk in chunks:
            if resp.complete:
                break
            resp.receive_data(chunk)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_initiator_core_arbitrary_bytes_only_protocol_error(data: bytes) -> None:
    init = NoiseHandshake(True, ALICE)
    init.start()
    with contextlib.suppress(ProtocolError):
        init.receive_data(len(data).to_bytes(2, "big") + data)


# --- SecureStream over in-memory streams ---


def secure_pair(max_frame: int = NOISE_MAX_FRAME) -> tuple[SecureStream, SecureStream]:
    ri, rr = run_cores(NoiseHandshake(True, ALICE), NoiseHandshake(False, BOB))
    a, b = trio.testing.memory_stream_pair()
    return (
        SecureStream(BufferedStream(a), ri, ALICE_ID, max_frame=max_frame),
        SecureStream(BufferedStream(b), rr, BOB_ID, max_frame=max_frame),
    )


def raw_receiver(
    max_frame: int = NOISE_MAX_FRAME,
) -> tuple[HandshakeResult, trio.abc.SendStream, SecureStream]:
    """A SecureStream fed by raw bytes we write ourselves, plus the sender's cipher state."""
    ri, rr = run_cores(NoiseHandshake(True, ALICE), NoiseHandshake(False, BOB))
    send, recv = trio.testing.memory_stream_one_way_pair()
    a, _unused = trio.testing.memory_stream_pair()
    stream = trio.StapledStream(a, recv)
    return ri, send, SecureStream(BufferedStream(stream), rr, BOB_ID, max_frame=max_frame)


def frame(result: HandshakeResult, plaintext: bytes) -> bytes:
    ct = result.send_cipher.encrypt_with_ad(b"", plaintext)
    return len(ct).to_bytes(2, "big") + ct


async def test_secure_stream_round_trip_and_partial_reads() -> None:
    a, b = secure_pair()
    await a.send_all(b"x" * 100_000)
    got = b""
    while len(got) < 100_000:
        got += await b.receive_some(7000)
    assert got == b"x" * 100_000
    await b.send_all(b"reply")
    assert await a.receive_some() == b"reply"
    await a.send_eof()
    assert await b.receive_some() == b""


async def test_frames_are_max_size_and_split_reads_work() -> None:
    init, send, recv = raw_receiver()
    data = b"".join(frame(init, bytes([i]) * 1000) for i in range(5))
    for i in range(0, len(data), 333):  # deliver in awkward pieces, splitting headers too
        await send.send_all(data[i : i + 333])
    out = b""
    while len(out) < 5000:
        out += await recv.receive_some()
    assert out == b"".join(bytes([i]) * 1000 for i in range(5))


async def test_tampered_ciphertext_is_an_error() -> None:
    init, send, recv = raw_receiver()
    f = bytearray(frame(init, b"secret data"))
    f[5] ^= 0x40
    await send.send_all(bytes(f))
    with pytest.raises(NoiseError):
        await recv.receive_some()
    with pytest.raises(NoiseError):  # the stream stays failed
        await recv.receive_some()


async def test_frame_over_the_limit_is_an_error() -> None:
    init, send, recv = raw_receiver(max_frame=1024)
    await send.send_all(frame(init, b"a" * 2000))
    with pytest.raises(NoiseError, match="exceeds"):
        await recv.receive_some()


async def test_frame_shorter_than_tag_is_an_error() -> None:
    _init, send, recv = raw_receiver()
    await send.send_all(b"\x00\x05hello")
    with pytest.raises(NoiseError):
        await recv.receive_some()


async def test_eof_inside_a_frame_is_an_error() -> None:
    init, send, recv = raw_receiver()
    await send.send_all(frame(init, b"abcdef")[:10])
    await send.aclose()
    with pytest.raises(NoiseError):
        await recv.receive_some()


async def test_sender_uses_full_frames() -> None:
    ri, rr = run_cores(NoiseHandshake(True, ALICE), NoiseHandshake(False, BOB))
    a, b = trio.testing.memory_stream_pair()
    s = SecureStream(BufferedStream(a), ri, ALICE_ID)
    n = NOISE_MAX_FRAME - 16
    await s.send_all(b"z" * (3 * n + 5))
    raw = b""
    while len(raw) < 3 * (n + 18) + 5 + 18:
        raw += await b.receive_some()
    lengths, pos = [], 0
    while pos < len(raw):
        length = int.from_bytes(raw[pos : pos + 2], "big")
        lengths.append(length)
        pos += 2 + length
    assert lengths == [NOISE_MAX_FRAME] * 3 + [5 + 16]
    del rr


async def test_concurrent_senders_detected() -> None:
    a, _b = secure_pair()
    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as n:
            n.start_soon(a.send_all, b"x" * 10_000_000)
            n.start_soon(a.send_all, b"y")


# --- over real TCP on 127.0.0.1 ---


async def tcp_pair(
    expected: PeerId | None = BOB_ID,
) -> tuple[SecureStream, SecureStream, Sequence[trio.SocketListener]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    out: dict[str, SecureStream] = {}

    async def accept() -> None:
        out["in"] = await secure_inbound(BufferedStream(await listeners[0].accept()), BOB)

    async with trio.open_nursery() as n:
        n.start_soon(accept)
        stream = BufferedStream(await trio.open_tcp_stream("127.0.0.1", port))
        out["out"] = await secure_outbound(stream, ALICE, expected)
    return out["out"], out["in"], listeners


async def test_tcp_handshake_and_data_both_ways() -> None:
    a, b, listeners = await tcp_pair()
    assert (a.remote_peer, a.local_peer, b.remote_peer, b.local_peer) == (
        BOB_ID,
        ALICE_ID,
        ALICE_ID,
        BOB_ID,
    )
    assert b.remote_public_key == ALICE.public_key()
    await a.send_all(b"ping")
    assert await b.receive_some() == b"ping"
    await b.send_all(b"pong")
    assert await a.receive_some() == b"pong"
    await a.aclose()
    assert await b.receive_some() == b""
    await b.aclose()
    await listeners[0].aclose()


async def test_tcp_10_mib_integrity_full_duplex() -> None:
    a, b, listeners = await tcp_pair()
    size = 10 * 1024 * 1024
    blob_a, blob_b = os.urandom(size), os.urandom(size // 2)

    async def pump(src: SecureStream, blob: bytes) -> None:
        view = memoryview(blob)
        for i in range(0, len(blob), 300_001):
            await src.send_all(view[i : i + 300_001])
        await src.send_eof()

    async def drain(dst: SecureStream, into: list[bytes]) -> None:
        while data := await dst.receive_some():
            into.append(data)

    got_a: list[bytes] = []
    got_b: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(pump, a, blob_a)
        n.start_soon(pump, b, blob_b)
        n.start_soon(drain, b, got_b)
        n.start_soon(drain, a, got_a)
    assert hashlib.sha256(b"".join(got_b)).digest() == hashlib.sha256(blob_a).digest()
    assert hashlib.sha256(b"".join(got_a)).digest() == hashlib.sha256(blob_b).digest()
    await a.aclose()
    await b.aclose()
    await listeners[0].aclose()


async def test_tcp_expected_peer_mismatch_refused() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def accept() -> None:
        with pytest.raises((HandshakeError, trio.BrokenResourceError)):
            await secure_inbound(BufferedStream(await listeners[0].accept()), BOB)

    async with trio.open_nursery() as n:
        n.start_soon(accept)
        stream = BufferedStream(await trio.open_tcp_stream("127.0.0.1", port))
        with pytest.raises(HandshakeError, match="expected peer"):
            await secure_outbound(stream, ALICE, expected_peer=ALICE_ID)
        await stream.aclose()
    await listeners[0].aclose()


async def test_stalled_handshake_is_bounded_by_the_callers_cancel_scope() -> None:
    """secure_* have no timeout of their own: the caller wraps them in a cancel scope."""
    a, _b = trio.testing.memory_stream_pair()  # the peer never answers
    with trio.move_on_after(0.2) as scope:
        await secure_outbound(BufferedStream(a), ALICE)
    assert scope.cancelled_caught
    _c, d = trio.testing.memory_stream_pair()
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
        await secure_inbound(BufferedStream(d), BOB)


async def test_handshake_eof_is_handshake_error() -> None:
    a, b = trio.testing.memory_stream_pair()
    await b.aclose()
    with pytest.raises((HandshakeError, trio.BrokenResourceError)):
        await secure_outbound(BufferedStream(a), ALICE)
