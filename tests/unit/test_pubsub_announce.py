"""Share announcement codec: round trips, validation, arbitrary input raises only DecodeError."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content.cid import CID
from fileshare.errors import DecodeError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net.addrs import parse
from fileshare.protocols.pubsub.announce import (
    ANNOUNCE_TOPIC,
    Announcement,
    decode_announcement,
    encode_announcement,
    validate_announcement,
)
from fileshare.protocols.pubsub.router import Validation
from fileshare.protocols.pubsub.signing import sign_message

KEY = PrivateKey.from_seed(b"\x01" * 32)
AUTHOR = PeerId.from_public_key(KEY.public_key())
CID1 = CID.from_data(0x55, b"hello")

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=60,
).filter(lambda s: s not in (".", ".."))

announcements = st.builds(
    Announcement,
    cid=st.just(CID1),
    name=names,
    size=st.integers(0, 2**53),
    hash_name=st.just("blake3"),
    time=st.integers(0, 2**40),
    addrs=st.lists(
        st.integers(1, 65535).map(lambda p: parse(f"/ip4/127.0.0.1/tcp/{p}/p2p/{AUTHOR}")),
        max_size=4,
    ).map(tuple),
    author=st.just(AUTHOR),
)


@given(announcements)
def test_round_trip(a: Announcement) -> None:
    assert decode_announcement(encode_announcement(a), AUTHOR) == a


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_announcement(data)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["v", "cid", "name", "size", "hash", "time", "addrs", "x"]),
        st.one_of(
            st.integers(-5, 2**60),
            st.text(max_size=20),
            st.lists(st.text(max_size=10), max_size=3),
            st.none(),
            st.booleans(),
            st.floats(allow_nan=False),
        ),
    )
)
def test_arbitrary_json_raises_only_decode_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(DecodeError):
        decode_announcement(json.dumps(doc).encode())


def _doc(**changes: object) -> bytes:
    base: dict[str, object] = {
        "v": 1,
        "cid": str(CID1),
        "name": "a.txt",
        "size": 5,
        "hash": "blake3",
        "time": 1,
        "addrs": [],
    }
    base.update(changes)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "../a"},
        {"name": "a/b"},
        {"name": "a\\b"},
        {"name": ".."},
        {"name": "a\x00b"},
        {"name": ""},
        {"name": "x" * 256},
        {"size": -1},
        {"size": True},
        {"size": 1.5},
        {"v": 2},
        {"cid": "not-a-cid"},
        {"hash": "sha2-256"},  # the CID says blake3
        {"addrs": ["/ip4/1.2.3.4/tcp/1"] * 17},
        {"addrs": ["garbage"]},
        {"time": 2**41},
    ],
)
def test_invalid_documents_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_announcement(_doc(**changes))


def test_address_naming_another_peer_rejected() -> None:
    other = PeerId.from_public_key(PrivateKey.generate().public_key())
    data = _doc(addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{other}"])
    decode_announcement(data)  # fine without an author
    with pytest.raises(DecodeError):
        decode_announcement(data, AUTHOR)


def test_duplicate_keys_and_oversize_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_announcement(b'{"v":1,"v":1}')
    with pytest.raises(DecodeError):
        decode_announcement(_doc(pad="x" * 9000))


def test_validator() -> None:
    good = sign_message(KEY, ANNOUNCE_TOPIC, _doc(), 1)
    bad = sign_message(KEY, ANNOUNCE_TOPIC, _doc(name="../x"), 2)
    assert validate_announcement(AUTHOR, good) is Validation.ACCEPT
    assert validate_announcement(AUTHOR, bad) is Validation.REJECT
