"""Bitswap wire messages: round trips, limits, hostile input, prefix -> CID reconstruction."""

from __future__ import annotations

import contextlib
import hashlib

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256
from fileshare.errors import DecodeError, LimitExceeded
from fileshare.limits import (
    BITSWAP_MAX_MESSAGE,
    BITSWAP_MAX_PRESENCES,
    BITSWAP_MAX_WANTLIST_ENTRIES,
    MAX_BLOCK_SIZE,
)
from fileshare.protocols.bitswap import (
    BlockPresence,
    Message,
    Payload,
    Prefix,
    PresenceType,
    WantEntry,
    Wantlist,
    WantType,
    decode_message,
    encode_message,
)
from fileshare.wire.protobuf import Writer


def cid_of(data: bytes, codec: int = RAW, hash_code: int = BLAKE3) -> CID:
    return CID.from_data(codec, data, hash_code)


def v0(data: bytes) -> CID:
    return CID(0, DAG_PB, b"\x12\x20" + hashlib.sha256(data).digest())


cids = st.one_of(
    st.builds(cid_of, st.binary(max_size=16), st.sampled_from([RAW, DAG_PB]),
              st.sampled_from([BLAKE3, SHA2_256])),
    st.builds(v0, st.binary(max_size=16)),
)  # fmt: skip
entries = st.builds(
    WantEntry,
    cids,
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.booleans(),
    st.sampled_from(WantType),
    st.booleans(),
)
payloads = st.builds(lambda cid, data: Payload.of(cid, data), cids, st.binary(max_size=64))
messages = st.builds(
    Message,
    st.one_of(st.none(), st.builds(Wantlist, st.lists(entries, max_size=5).map(tuple),
                                   st.booleans())),
    st.lists(st.binary(max_size=32), max_size=3).map(tuple),
    st.lists(payloads, max_size=3).map(tuple),
    st.lists(st.builds(BlockPresence, cids, st.sampled_from(PresenceType)), max_size=4).map(tuple),
    st.integers(0, (1 << 31) - 1),
)  # fmt: skip


@given(messages)
@settings(max_examples=300, deadline=None)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=512))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError, LimitExceeded):
        decode_message(data)


@given(messages, st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_messages_raise_only_codec_errors(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    with contextlib.suppress(DecodeError, LimitExceeded):
        decode_message(bytes(raw))


def test_wire_layout_matches_schema() -> None:
    """Hand-built bytes per the spec's field numbers decode as expected."""
    cid = cid_of(b"x")
    entry = Writer().bytes(1, cid.encode()).uint(2, 7).uint(4, 1).bool(5, True).finish()
    wl = Writer().bytes(1, entry).bool(2, True).finish()
    block = Writer().bytes(1, bytes([1, RAW, BLAKE3, 32])).bytes(2, b"x").finish()
    presence = Writer().bytes(1, cid.encode()).uint(2, 1).finish()
    raw = Writer().bytes(1, wl).bytes(3, block).bytes(4, presence).uint(5, 99).finish()
    msg = decode_message(raw)
    assert msg.wantlist == Wantlist((WantEntry(cid, 7, False, WantType.HAVE, True),), True)
    assert msg.payload == (Payload(Prefix(1, RAW, BLAKE3, 32), b"x"),)
    assert msg.payload[0].cid() == cid
    assert msg.presences == (BlockPresence(cid, PresenceType.DONT_HAVE),)
    assert msg.pending_bytes == 99
    # proto3 defaults are omitted; an absent priority decodes as 0
    assert (
        encode_message(Message(wantlist=Wantlist((WantEntry(cid),))))
        == Writer()
        .bytes(1, Writer().bytes(1, Writer().bytes(1, cid.encode()).uint(2, 1).finish()).finish())
        .finish()
    )
    bare = Writer().bytes(1, Writer().bytes(1, Writer().bytes(1, cid.encode()).finish()).finish())
    assert decode_message(bare.finish()).wantlist == Wantlist((WantEntry(cid, 0),))


def test_unknown_fields_are_skipped() -> None:
    cid = cid_of(b"y")
    raw = Writer().uint(15, 3).bytes(4, Writer().bytes(1, cid.encode()).finish()).finish()
    assert decode_message(raw).presences == (BlockPresence(cid, PresenceType.HAVE),)


@pytest.mark.parametrize("codec", [RAW, DAG_PB])
@pytest.mark.parametrize("hash_code", [SHA2_256, BLAKE3])
def test_prefix_reconstructs_cid(codec: int, hash_code: int) -> None:
    data = b"some block bytes" * 100
    cid = CID.from_data(codec, data, hash_code)
    prefix = Prefix.of(cid)
    assert prefix == Prefix(1, codec, hash_code, 32)
    assert Prefix.decode(prefix.encode()) == prefix
    assert prefix.encode() == bytes([1, codec, hash_code, 32])
    assert prefix.cid_for(data) == cid
    assert Payload.of(cid, data).cid() == cid
    digest = (hashlib.sha256 if hash_code == SHA2_256 else blake3.blake3)(data).digest()
    assert prefix.cid_for(data).digest == digest
    assert prefix.cid_for(data + b"!") != cid  # corrupt data gives another CID


def test_prefix_reconstructs_cidv0_and_legacy_blocks_field() -> None:
    data = b"\x0a\x02\x08\x02"  # a dag-pb node
    cid = v0(data)
    assert Prefix.of(cid) == Prefix(0, DAG_PB, SHA2_256, 32)
    assert Payload.of(cid, data).cid() == cid
    msg = decode_message(encode_message(Message(blocks=(data,))))
    assert [p.cid() for p in msg.all_payloads()] == [cid]


@pytest.mark.parametrize(
    "raw",
    [
        bytes([2, RAW, BLAKE3, 32]),  # version 2
        bytes([0, RAW, SHA2_256, 32]),  # v0 must be dag-pb
        bytes([1, RAW, BLAKE3]),  # truncated
        bytes([1, RAW, BLAKE3, 32, 0]),  # trailing byte
        bytes([1, RAW, BLAKE3, 0x80, 0x80, 0x04]),  # digest length too large
    ],
)
def test_bad_prefixes(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        Prefix.decode(raw)


def test_unhashable_prefix_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        Prefix(1, RAW, 0x13, 64).cid_for(b"x")  # sha2-512: we cannot verify it
    with pytest.raises(DecodeError):
        Prefix(1, RAW, BLAKE3, 16).cid_for(b"x")  # truncated digest


def test_limits() -> None:
    big = b"\0" * (MAX_BLOCK_SIZE + 1)
    prefix = Prefix(1, RAW, BLAKE3, 32)
    for msg in (Message(blocks=(big,)), Message(payload=(Payload(prefix, big),))):
        with pytest.raises(LimitExceeded):
            encode_message(msg)
    raw = Writer().bytes(3, Writer().bytes(1, prefix.encode()).bytes(2, big).finish()).finish()
    with pytest.raises(LimitExceeded):
        decode_message(raw)
    with pytest.raises(LimitExceeded):
        decode_message(Writer().bytes(2, big).finish())
    with pytest.raises(LimitExceeded):
        decode_message(b"\0" * (BITSWAP_MAX_MESSAGE + 1))
    two = Payload(prefix, b"\0" * MAX_BLOCK_SIZE)
    with pytest.raises(LimitExceeded):  # 4 MiB + framing
        encode_message(Message(payload=(two, two)))
    cid = cid_of(b"z")
    entry = Writer().bytes(1, cid.encode()).finish()
    wl = Writer()
    for _ in range(BITSWAP_MAX_WANTLIST_ENTRIES + 1):
        wl.bytes(1, entry)
    with pytest.raises(LimitExceeded):
        decode_message(Writer().bytes(1, wl.finish()).finish())
    pres = Writer()
    for _ in range(BITSWAP_MAX_PRESENCES + 1):
        pres.bytes(4, Writer().bytes(1, cid.encode()).finish())
    with pytest.raises(LimitExceeded):
        decode_message(pres.finish())


@pytest.mark.parametrize(
    "raw",
    [
        Writer().bytes(1, Writer().bytes(1, Writer().uint(2, 1).finish()).finish()).finish(),
        Writer().bytes(4, Writer().uint(2, 1).finish()).finish(),  # presence without CID
        Writer().bytes(3, Writer().bytes(2, b"x").finish()).finish(),  # payload without prefix
        Writer().bytes(1, b"").bytes(1, b"").finish(),  # two wantlists
        Writer().uint(1, 5).finish(),  # wantlist as a varint
        Writer().bytes(4, Writer().bytes(1, cid_of(b"a").encode()).uint(2, 7).finish()).finish(),
    ],
)
def test_malformed_messages(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(raw)


def test_unknown_want_type_refused() -> None:
    entry = Writer().bytes(1, cid_of(b"a").encode()).uint(4, 9).finish()
    with pytest.raises(DecodeError):
        decode_message(Writer().bytes(1, Writer().bytes(1, entry).finish()).finish())


def test_negative_priority_round_trips() -> None:
    msg = Message(wantlist=Wantlist((WantEntry(cid_of(b"a"), -5),)))
    assert decode_message(encode_message(msg)) == msg
