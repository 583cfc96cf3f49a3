"""Kademlia wire messages (/ipfs/kad/1.0.0) and the sans-io request handler."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import DecodeError, LimitExceeded, ProtocolError
from fileshare.limits import (
    KAD_MAX_ADDRS_PER_PEER,
    KAD_MAX_CLOSER_PEERS,
    KAD_MAX_KEY,
    KAD_MAX_MESSAGE,
    KAD_MAX_PROVIDER_PEERS,
)
from fileshare.protocols.kad import (
    ConnectionType,
    KadServer,
    Message,
    MessageType,
    Peer,
    ProviderStore,
    Record,
    RoutingTable,
    decode_message,
    encode_message,
)
from fileshare.wire.protobuf import Writer


def pid(n: int) -> bytes:
    """A sha2-256 multihash peer id."""
    return b"\x12\x20" + n.to_bytes(32, "big")


def ip4(a: int, b: int, c: int = 0, d: int = 1) -> bytes:
    return bytes([0x04, a, b, c, d, 0x06, 0x0F, 0xA1])


peer_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: b"\x12\x20" + d),
    st.binary(min_size=1, max_size=42).map(lambda d: bytes([0, len(d)]) + d),
)
peers = st.builds(
    Peer,
    peer_ids,
    st.lists(st.binary(min_size=1, max_size=40), max_size=4).map(tuple),
    st.sampled_from(ConnectionType),
)
records = st.builds(
    Record,
    st.binary(max_size=KAD_MAX_KEY),
    st.binary(max_size=200),
    st.text(max_size=30),
)
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    st.binary(max_size=KAD_MAX_KEY),
    st.none() | records,
    st.lists(peers, max_size=KAD_MAX_CLOSER_PEERS).map(tuple),
    st.lists(peers, max_size=5).map(tuple),
    st.integers(-(1 << 31), (1 << 31) - 1),
)


# --- codec ---


@given(messages)
@settings(max_examples=200)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=600))
@settings(max_examples=2000)
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except (DecodeError, LimitExceeded):
        return
    assert decode_message(encode_message(msg)) == msg


@given(messages, st.data())
@settings(max_examples=200)
def test_mutated_messages_raise_only_codec_errors(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    with contextlib.suppress(DecodeError, LimitExceeded):
        decode_message(bytes(raw))


def test_known_encoding() -> None:
    msg = Message(
        MessageType.FIND_NODE, b"\x01\x02", closer_peers=(Peer(b"\x00\x01\x07", (b"\x04",)),)
    )
    # type=4, key=0102, closerPeers { id=000107, addrs=04 }
    assert encode_message(msg) == bytes.fromhex("08041202010242080a03000107120104")


def test_defaults_are_omitted_and_type_defaults_to_put_value() -> None:
    assert encode_message(Message(MessageType.PUT_VALUE)) == b""
    assert decode_message(b"").type == MessageType.PUT_VALUE


def test_unknown_fields_skipped_and_unknown_connection_type_tolerated() -> None:
    peer = Writer().bytes(1, pid(1)).uint(3, 99).uint(7, 5).finish()
    data = Writer().uint(1, 4).bytes(2, b"k").bytes(8, peer).string(15, "x").finish()
    msg = decode_message(data)
    assert msg.closer_peers == (Peer(pid(1), (), ConnectionType.NOT_CONNECTED),)


def test_negative_cluster_level_round_trips() -> None:
    msg = Message(MessageType.PING, cluster_level_raw=-5)
    assert decode_message(encode_message(msg)).cluster_level_raw == -5


# --- validation ---


def test_oversized_key_rejected() -> None:
    data = Writer().uint(1, 3).bytes(2, b"k" * (KAD_MAX_KEY + 1)).finish()
    with pytest.raises(LimitExceeded):
        decode_message(data)
    decode_message(Writer().uint(1, 3).bytes(2, b"k" * KAD_MAX_KEY).finish())
    with pytest.raises(LimitExceeded):
        encode_message(Message(MessageType.GET_VALUE, b"k" * (KAD_MAX_KEY + 1)))


def test_oversized_record_key_rejected() -> None:
    rec = Writer().bytes(1, b"r" * (KAD_MAX_KEY + 1)).bytes(2, b"v").finish()
    with pytest.raises(LimitExceeded):
        decode_message(Writer().bytes(3, rec).finish())


def test_too_many_closer_peers_rejected() -> None:
    peer = Writer().bytes(1, pid(1)).finish()
    w = Writer().uint(1, 4)
    for _ in range(KAD_MAX_CLOSER_PEERS + 1):
        w.bytes(8, peer)
    with pytest.raises(LimitExceeded):
        decode_message(w.finish())


def test_too_many_provider_peers_rejected() -> None:
    peer = Writer().bytes(1, pid(1)).finish()
    w = Writer().uint(1, 3)
    for _ in range(KAD_MAX_PROVIDER_PEERS + 1):
        w.bytes(9, peer)
    with pytest.raises(LimitExceeded):
        decode_message(w.finish())


def test_too_many_addrs_per_peer_rejected() -> None:
    w = Writer().bytes(1, pid(1))
    for i in range(KAD_MAX_ADDRS_PER_PEER + 1):
        w.bytes(2, ip4(1, i))
    with pytest.raises(LimitExceeded):
        decode_message(Writer().uint(1, 4).bytes(8, w.finish()).finish())


def test_message_size_limit() -> None:
    with pytest.raises(LimitExceeded):
        decode_message(b"\x00" * (KAD_MAX_MESSAGE + 1))


@pytest.mark.parametrize(
    "peer",
    [
        Writer().bytes(2, b"\x04").finish(),  # no id
        Writer().bytes(1, b"\x12\x20\x01").finish(),  # id not a multihash (length mismatch)
        Writer().bytes(1, b"\x12\x20" + bytes(32)).uint(2, 1).finish(),  # addrs as a varint
    ],
)
def test_bad_peer_entries_rejected(peer: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(Writer().uint(1, 4).bytes(8, peer).finish())


@pytest.mark.parametrize(
    "data",
    [
        Writer().uint(1, 6).finish(),  # unknown message type
        Writer().bytes(1, b"x").finish(),  # type as bytes
        Writer().uint(10, 1 << 40).finish(),  # clusterLevelRaw outside int32
        Writer().bytes(3, Writer().bytes(5, b"\xff").finish()).finish(),  # bad UTF-8
        b"\x12\x05ab",  # truncated length-delimited field
    ],
)
def test_malformed_messages_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


# --- server ---


class OnlyV:
    """Accepts records whose value starts with b"v"; the longer value wins."""

    def validate(self, key: bytes, value: bytes) -> bool:
        return value.startswith(b"v")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return max(range(len(values)), key=lambda i: len(values[i]))


def make_server(n_peers: int = 30, validator: OnlyV | None = None) -> KadServer:
    me = pid(0)
    table = RoutingTable(me)
    for i in range(1, n_peers + 1):
        table.try_add(pid(i), [ip4(i, i)], 0.0)
    return KadServer(me, table, ProviderStore(), local_addrs=lambda: [ip4(9, 9)], validator=validator)


def test_find_node_returns_k_closest_without_requester() -> None:
    server = make_server()
    resp = server.handle(pid(1), Message(MessageType.FIND_NODE, pid(5)), 0.0)
    ids = [p.id for p in resp.closer_peers]
    assert resp.type == MessageType.FIND_NODE and resp.key == pid(5)
    assert len(ids) == 20 and pid(1) not in ids and pid(5) in ids
    mine = server.handle(pid(1), Message(MessageType.FIND_NODE, pid(0)), 0.0)
    assert mine.closer_peers[0] == Peer(pid(0), (ip4(9, 9),))


def test_add_provider_only_for_the_sender() -> None:
    server = make_server()
    key = b"\x12\x20" + bytes(range(32))
    other = Message(MessageType.ADD_PROVIDER, key, provider_peers=(Peer(pid(2), (ip4(2, 2),)),))
    with pytest.raises(ProtocolError):
        server.handle(pid(1), other, 0.0)
    assert server.providers.get(key, 0.0) == []
    mixed = Message(
        MessageType.ADD_PROVIDER,
        key,
        provider_peers=(Peer(pid(2), (ip4(2, 2),)), Peer(pid(1), (ip4(1, 1),))),
    )
    echo = server.handle(pid(1), mixed, 0.0)
    assert echo.provider_peers == (Peer(pid(1), (ip4(1, 1),)),)
    assert server.providers.get(key, 1.0) == [Peer(pid(1), (ip4(1, 1),))]
    got = server.handle(pid(3), Message(MessageType.GET_PROVIDERS, key), 1.0)
    assert got.provider_peers == (Peer(pid(1), (ip4(1, 1),)),) and len(got.closer_peers) == 20


def test_add_provider_key_must_be_multihash() -> None:
    server = make_server()
    msg = Message(MessageType.ADD_PROVIDER, b"not-a-multihash", provider_peers=(Peer(pid(1)),))
    with pytest.raises(ProtocolError):
        server.handle(pid(1), msg, 0.0)


def test_requests_without_key_rejected_and_ping_answered() -> None:
    server = make_server()
    for t in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS, MessageType.GET_VALUE):
        with pytest.raises(ProtocolError):
            server.handle(pid(1), Message(t), 0.0)
    assert server.handle(pid(1), Message(MessageType.PING), 0.0) == Message(MessageType.PING)


def test_put_value_needs_a_validator() -> None:
    rec = Record(b"/x/1", b"v1")
    with pytest.raises(ProtocolError):
        make_server().handle(pid(1), Message(MessageType.PUT_VALUE, b"/x/1", rec), 0.0)


def test_put_and_get_value_with_validator() -> None:
    server = make_server(validator=OnlyV())
    put = Message(MessageType.PUT_VALUE, b"/x/1", Record(b"/x/1", b"v1"))
    assert server.handle(pid(1), put, 0.0) == put
    for bad in (
        Message(MessageType.PUT_VALUE, b"/x/1", Record(b"/x/1", b"bad")),  # invalid value
        Message(MessageType.PUT_VALUE, b"/x/1", Record(b"/x/2", b"v2")),  # keys differ
        Message(MessageType.PUT_VALUE, b"/x/1"),  # no record
    ):
        with pytest.raises(ProtocolError):
            server.handle(pid(1), bad, 0.0)
    better = Message(MessageType.PUT_VALUE, b"/x/1", Record(b"/x/1", b"v1-newer"))
    server.handle(pid(2), better, 1.0)
    with pytest.raises(ProtocolError):  # worse than the stored one
        server.handle(pid(2), put, 2.0)
    got = server.handle(pid(3), Message(MessageType.GET_VALUE, b"/x/1"), 3.0)
    assert got.record == Record(b"/x/1", b"v1-newer") and len(got.closer_peers) == 20
    missing = server.handle(pid(3), Message(MessageType.GET_VALUE, b"/x/9"), 3.0)
    assert missing.record is None
