"""Pubsub RPC codec and StrictSign signing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import DecodeError, LimitExceeded
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.limits import (
    PUBSUB_MAX_MESSAGE,
    PUBSUB_MAX_MESSAGE_ID,
    PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC,
    PUBSUB_MAX_TOPIC_LENGTH,
)
from fileshare.protocols.pubsub.rpc import (
    RPC,
    ControlMessage,
    Graft,
    IDontWant,
    IHave,
    IWant,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    decode_message,
    decode_rpc,
    encode_message,
    encode_rpc,
    message_wire_size,
)
from fileshare.protocols.pubsub.signing import (
    SIGN_PREFIX,
    default_message_id,
    sign_message,
    signing_payload,
    verify_strict,
)
from fileshare.wire.protobuf import Writer

KEY = PrivateKey.from_seed(bytes(range(32)))
OTHER = PrivateKey.from_seed(bytes(range(1, 33)))

topics = st.text(max_size=20)
blobs = st.binary(max_size=40)
opt_blobs = st.none() | blobs
messages = st.builds(Message, topics, opt_blobs, opt_blobs, opt_blobs, opt_blobs, opt_blobs)
id_lists = st.lists(blobs, max_size=5).map(tuple)
peer_infos = st.builds(PeerInfo, opt_blobs, opt_blobs)
controls = st.builds(
    ControlMessage,
    st.lists(st.builds(IHave, topics, id_lists), max_size=3).map(tuple),
    st.lists(st.builds(IWant, id_lists), max_size=3).map(tuple),
    st.lists(st.builds(Graft, topics), max_size=3).map(tuple),
    st.lists(
        st.builds(
            Prune,
            topics,
            st.lists(peer_infos, max_size=3).map(tuple),
            st.none() | st.integers(0, 2**64 - 1),
        ),
        max_size=3,
    ).map(tuple),
    st.lists(st.builds(IDontWant, id_lists), max_size=3).map(tuple),
)
rpcs = st.builds(
    RPC,
    st.lists(st.builds(SubOpts, st.booleans(), topics), max_size=4).map(tuple),
    st.lists(messages, max_size=4).map(tuple),
    st.none() | controls,
)


@given(rpcs)
@settings(max_examples=300)
def test_rpc_round_trip(rpc: RPC) -> None:
    data = encode_rpc(rpc)
    assert decode_rpc(data) == rpc
    assert encode_rpc(decode_rpc(data)) == data


@given(messages)
def test_message_wire_size_matches_encoding(msg: Message) -> None:
    inner = encode_message(msg)
    assert message_wire_size(msg) == len(encode_rpc(RPC(publish=(msg,))))
    assert decode_message(inner) == msg


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError, LimitExceeded):
        decode_rpc(data)


@given(rpcs, st.integers(0, 10_000), st.integers(0, 255))
@settings(max_examples=500)
def test_mutated_rpcs_raise_only_codec_errors(rpc: RPC, pos: int, byte: int) -> None:
    data = bytearray(encode_rpc(rpc))
    if data:
        data[pos % len(data)] = byte
    with contextlib.suppress(DecodeError, LimitExceeded):
        decode_rpc(bytes(data))


def test_full_rpc_example() -> None:
    rpc = RPC(
        subscriptions=(SubOpts(True, "fileshare/shares/1"), SubOpts(False, "old")),
        publish=(sign_message(KEY, "fileshare/shares/1", b"hello", 7),),
        control=ControlMessage(
            ihave=(IHave("t", (b"a", b"b")),),
            iwant=(IWant((b"c",)),),
            graft=(Graft("t"),),
            prune=(Prune("t", (PeerInfo(b"\x00\x01x", b"rec"),), 60),),
            idontwant=(IDontWant((b"d",)),),
        ),
    )
    assert decode_rpc(encode_rpc(rpc)) == rpc


def test_known_encoding() -> None:
    rpc = RPC(subscriptions=(SubOpts(True, "t"),), control=ControlMessage(graft=(Graft("t"),)))
    assert encode_rpc(rpc) == bytes.fromhex("0a0508011201741a051a030a0174".replace(" ", ""))


def test_unknown_message_fields_are_kept_and_signed() -> None:
    msg = sign_message(KEY, "t", b"x", 1)
    raw = encode_message(msg) + Writer().uint(50, 9).bytes(51, b"zz").finish()
    decoded = decode_message(raw)
    assert decoded.extra and encode_message(decoded) == raw
    assert not verify_strict(decoded)  # the author did not sign the extra fields
    unsigned = dataclasses.replace(decoded, signature=None)
    resigned = dataclasses.replace(decoded, signature=KEY.sign(signing_payload(unsigned)))
    assert verify_strict(decode_message(encode_message(resigned)))


@pytest.mark.parametrize(
    "data",
    [
        Writer().bytes(2, Writer().bytes(2, b"x").finish()).finish(),  # message without topic
        Writer().bytes(2, Writer().string(4, "t").string(4, "u").finish()).finish(),  # repeated
        Writer().bytes(1, Writer().uint(1, 1).finish()).finish(),  # subopts without topic
        Writer().bytes(1, Writer().uint(1, 2).string(2, "t").finish()).finish(),  # bool 2
        Writer().bytes(3, Writer().bytes(3, b"").finish()).finish(),  # graft without topic
        Writer().bytes(3, Writer().bytes(4, b"").finish()).finish(),  # prune without topic
        Writer().bytes(3, Writer().bytes(1, b"").finish()).finish(),  # ihave without topic
        Writer().uint(2, 5).finish(),  # publish as a varint
        Writer().bytes(1, Writer().string(2, "t").finish()).finish()[:-1],  # truncated
        Writer().bytes(2, Writer().bytes(4, b"\xff").finish()).finish(),  # bad UTF-8 topic
    ],
)
def test_malformed_rpcs(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_rpc(data)


def test_limits() -> None:
    with pytest.raises(LimitExceeded):
        decode_rpc(b"\x00" * (PUBSUB_MAX_MESSAGE + 1))
    with pytest.raises(LimitExceeded):
        encode_rpc(RPC(publish=(Message("t", b"x" * PUBSUB_MAX_MESSAGE),)))
    sub = Writer().bytes(1, Writer().string(2, "t").finish()).finish()
    with pytest.raises(LimitExceeded):
        decode_rpc(sub * (PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC + 1))
    with pytest.raises(LimitExceeded):
        decode_rpc(
            encode_rpc(RPC(subscriptions=(SubOpts(True, "t" * (PUBSUB_MAX_TOPIC_LENGTH + 1)),)))
        )
    long_id = b"i" * (PUBSUB_MAX_MESSAGE_ID + 1)
    with pytest.raises(LimitExceeded):
        decode_rpc(encode_rpc(RPC(control=ControlMessage(iwant=(IWant((long_id,)),)))))
    many = tuple(b"%d" % i for i in range(10_001))
    with pytest.raises(LimitExceeded):
        decode_rpc(encode_rpc(RPC(control=ControlMessage(idontwant=(IDontWant(many),)))))
    prune = Prune("t", tuple(PeerInfo(b"p") for _ in range(65)))
    with pytest.raises(LimitExceeded):
        decode_rpc(encode_rpc(RPC(control=ControlMessage(prune=(prune,)))))


def test_repeated_control_fields_merge() -> None:
    a = Writer().bytes(3, Writer().bytes(3, Writer().string(1, "a").finish()).finish()).finish()
    b = Writer().bytes(3, Writer().bytes(3, Writer().string(1, "b").finish()).finish()).finish()
    rpc = decode_rpc(a + b)
    assert rpc.control is not None
    assert rpc.control.graft == (Graft("a"), Graft("b"))


# --- signing ---


def test_sign_and_verify() -> None:
    msg = sign_message(KEY, "topic", b"payload", 42)
    assert verify_strict(msg)
    assert verify_strict(decode_message(encode_message(msg)))
    assert msg.from_peer == PeerId.from_public_key(KEY.public_key()).bytes
    assert msg.seqno == (42).to_bytes(8, "big")
    assert msg.key is None  # Ed25519 keys are inlined in the PeerId
    assert default_message_id(msg) == msg.from_peer + msg.seqno
    payload = signing_payload(msg)
    assert payload.startswith(SIGN_PREFIX)
    assert KEY.public_key().verify(payload, msg.signature or b"")


@pytest.mark.parametrize(
    "change",
    [
        {"data": b"payload!"},
        {"topic": "other"},
        {"seqno": (43).to_bytes(8, "big")},
        {"seqno": None},
        {"seqno": b"\x00" * 7 + b"\x2a\x00"},
        {"signature": None},
        {"signature": b""},
        {"from_peer": None},
        {"from_peer": PeerId.from_public_key(OTHER.public_key()).bytes},
        {"from_peer": b"\x12\x20" + b"\x00" * 32},  # hashed id without a key field
        {"from_peer": b"garbage"},
        {"key": OTHER.public_key().to_protobuf()},  # key does not match from
        {"key": b"\x08\x01"},  # malformed key
        {"extra": b"\xa0\x06\x01"},
    ],
)
def test_tampering_detected(change: dict[str, object]) -> None:
    msg = sign_message(KEY, "topic", b"payload", 42)
    assert not verify_strict(dataclasses.replace(msg, **change))  # type: ignore[arg-type]


def test_message_signed_by_other_key_rejected() -> None:
    forged = sign_message(OTHER, "topic", b"payload", 1)
    victim = PeerId.from_public_key(KEY.public_key()).bytes
    assert not verify_strict(dataclasses.replace(forged, from_peer=victim))
    assert not verify_strict(
        dataclasses.replace(forged, from_peer=victim, key=OTHER.public_key().to_protobuf())
    )


def test_matching_key_field_accepted() -> None:
    msg = sign_message(KEY, "topic", b"payload", 1)
    assert verify_strict(dataclasses.replace(msg, key=KEY.public_key().to_protobuf()))


def test_py_libp2p_signatures_interoperate() -> None:
    """Messages signed by py-libp2p verify here, and ours verify in py-libp2p."""
    pytest.importorskip("libp2p")
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import signature_validator

    pair = create_new_key_pair(b"\x07" * 32)
    theirs = rpc_pb2.Message(
        data=b"hi",
        topicIDs=["t"],
        from_id=ID.from_pubkey(pair.public_key).to_bytes(),
        seqno=(5).to_bytes(8, "big"),
    )
    theirs.signature = pair.private_key.sign(b"libp2p-pubsub:" + theirs.SerializeToString())
    theirs.key = pair.public_key.serialize()
    decoded = decode_message(theirs.SerializeToString())
    assert verify_strict(decoded)
    assert encode_message(decoded) == theirs.SerializeToString()

    ours = rpc_pb2.Message.FromString(encode_message(sign_message(KEY, "t", b"data", 9)))
    assert signature_validator(ours)
    ours.data = b"date"
    assert not signature_validator(ours)
