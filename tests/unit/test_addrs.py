"""Multiaddr helpers: parsing, TCP endpoints, /p2p suffix, wildcard expansion."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileshare.errors import DecodeError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net import addrs

PEER = PeerId.from_public_key(PrivateKey.generate().public_key())


def test_parse_and_tcp_endpoint() -> None:
    assert addrs.tcp_endpoint(addrs.parse("/ip4/127.0.0.1/tcp/4001")) == (
        "127.0.0.1",
        4001,
        socket.AF_INET,
    )
    assert addrs.tcp_endpoint(addrs.parse("/ip6/::1/tcp/0")) == ("::1", 0, socket.AF_INET6)
    host, port, family = addrs.tcp_endpoint(addrs.parse(f"/dns4/localhost/tcp/5/p2p/{PEER}"))
    assert (host, port, family) == ("localhost", 5, socket.AF_INET)


@pytest.mark.parametrize(
    "text",
    ["", "ip4/1.2.3.4", "/ip4/1.2.3/tcp/1", "/ip4/1.2.3.4/tcp/99999", "/p2p/notapeer", "/nope"],
)
def test_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(DecodeError):
        addrs.parse(text)


def test_not_tcp() -> None:
    for text in ("/ip4/1.2.3.4/udp/1", "/ip4/1.2.3.4", f"/p2p/{PEER}"):
        addr = addrs.parse(text)
        assert not addrs.is_tcp(addr)
        with pytest.raises(DecodeError):
            addrs.tcp_endpoint(addr)


def test_peer_suffix_round_trip() -> None:
    base = addrs.parse("/ip4/127.0.0.1/tcp/4001")
    full = addrs.with_peer(base, PEER)
    assert str(full) == f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
    assert addrs.split_peer(full) == (base, PEER)
    assert addrs.split_peer(base) == (base, None)
    assert addrs.split_peer(addrs.parse(f"/p2p/{PEER}")) == (None, PEER)
    other = PeerId.from_public_key(PrivateKey.generate().public_key())
    assert addrs.split_peer(addrs.with_peer(full, other))[1] == other


def test_peer_suffix_cid_form() -> None:
    addr = addrs.parse(f"/ip4/127.0.0.1/tcp/1/p2p/{PEER.to_cid_string()}")
    assert addrs.split_peer(addr)[1] == PEER


def test_binary_round_trip() -> None:
    addr = addrs.parse(f"/ip6/::1/tcp/4001/p2p/{PEER}")
    assert addrs.from_bytes(addr.to_bytes()) == addr


@given(st.binary(max_size=64))
def test_from_bytes_only_raises_decode_error(data: bytes) -> None:
    try:
        addr = addrs.from_bytes(data)
    except DecodeError:
        return
    assert addrs.from_bytes(addr.to_bytes()) == addr


def test_from_sockaddr() -> None:
    assert str(addrs.from_sockaddr(("127.0.0.1", 80))) == "/ip4/127.0.0.1/tcp/80"
    assert str(addrs.from_sockaddr(("::1", 80, 0, 0))) == "/ip6/::1/tcp/80"
    assert str(addrs.from_sockaddr(("::ffff:10.0.0.1", 7, 0, 0))) == "/ip4/10.0.0.1/tcp/7"


def test_expand_wildcard() -> None:
    v4 = addrs.expand_wildcard(addrs.parse("/ip4/0.0.0.0/tcp/4001"))
    assert str(v4[0]) == "/ip4/127.0.0.1/tcp/4001"
    assert all(not addrs.is_wildcard(a) and addrs.is_tcp(a) for a in v4)
    assert len(set(v4)) == len(v4)
    v6 = addrs.expand_wildcard(addrs.parse("/ip6/::/tcp/4001"))
    assert str(v6[0]) == "/ip6/::1/tcp/4001"
    assert all("fe80" not in str(a) for a in v6)
    fixed = addrs.parse("/ip4/10.1.2.3/tcp/1")
    assert addrs.expand_wildcard(fixed) == [fixed]
