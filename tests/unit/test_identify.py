"""identify codec: round trips, framing, arbitrary bytes raise only DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileshare.errors import DecodeError
from fileshare.identity.keys import PrivateKey
from fileshare.net import addrs
from fileshare.protocols.identify import IdentifyMessage, decode_response, encode_response
from fileshare.wire.protobuf import Writer

messages = st.builds(
    IdentifyMessage,
    protocol_version=st.none() | st.text(max_size=20),
    agent_version=st.none() | st.text(max_size=20),
    public_key=st.none() | st.binary(max_size=40),
    listen_addrs=st.lists(st.binary(max_size=20), max_size=4).map(tuple),
    observed_addr=st.none() | st.binary(max_size=20),
    protocols=st.lists(st.text(max_size=20), max_size=4).map(tuple),
)


@given(messages)
def test_round_trip(msg: IdentifyMessage) -> None:
    assert IdentifyMessage.decode(msg.encode()) == msg
    assert decode_response(encode_response(msg)) == msg


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_response(data)


def test_split_messages_merge_and_bare_protobuf() -> None:
    key = PrivateKey.generate().public_key().to_protobuf()
    a = IdentifyMessage(agent_version="x/1", protocols=("/a",), public_key=key)
    b = IdentifyMessage(
        protocols=("/b",), listen_addrs=(addrs.parse("/ip4/1.2.3.4/tcp/1").to_bytes(),)
    )
    merged = decode_response(encode_response(a) + encode_response(b))
    assert merged.protocols == ("/a", "/b")
    assert merged.agent_version == "x/1"
    assert [str(x) for x in merged.listen_multiaddrs()] == ["/ip4/1.2.3.4/tcp/1"]
    assert merged.public_key_object() is not None
    assert decode_response(a.encode()) == a  # old peers send the protobuf without a length prefix


def test_unknown_fields_skipped_and_bad_addrs_ignored() -> None:
    raw = Writer().string(6, "agent").bytes(8, b"signed record").bytes(2, b"\xff\xff").finish()
    msg = IdentifyMessage.decode(raw)
    assert msg.agent_version == "agent"
    assert msg.listen_multiaddrs() == []
    with pytest.raises(DecodeError):
        IdentifyMessage.decode(Writer().uint(6, 5).finish())  # agentVersion must be a string
