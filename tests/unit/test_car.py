"""CARv1 writer and strict reader: round trips, a hand-checked header, hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content.cid import CID, DAG_PB, RAW, SHA2_256
from fileshare.daemon.car import decode_car, decode_header, encode_header, encode_section
from fileshare.errors import DecodeError

blocks = st.lists(st.binary(max_size=300), min_size=0, max_size=8)


def _cid(data: bytes, kind: int) -> CID:
    if kind == 0:  # CIDv0: written as a bare multihash
        return CID(0, DAG_PB, CID.from_data(DAG_PB, data, SHA2_256).multihash)
    return CID.from_data(RAW if kind == 1 else DAG_PB, data)


def test_header_is_canonical_dag_cbor() -> None:
    cid = CID.from_data(RAW, b"hello")
    header = encode_header([cid])
    raw = b"\x00" + cid.encode()
    body = (
        b"\xa2"  # map(2)
        + b"\x65roots"
        + b"\x81"  # array(1)
        + b"\xd8\x2a"  # tag 42
        + bytes([0x58, len(raw)])  # bytes(n), n >= 24
        + raw
        + b"\x67version\x01"
    )
    assert header == bytes([len(body)]) + body
    assert decode_header(header) == ([cid], len(header))


@given(blocks, st.lists(st.integers(0, 2), min_size=8, max_size=8))
def test_round_trip(datas: list[bytes], kinds: list[int]) -> None:
    cids = [_cid(d, k) for d, k in zip(datas, kinds, strict=False)]
    car = encode_header(cids[:1]) + b"".join(
        encode_section(c, d) for c, d in zip(cids, datas, strict=False)
    )
    roots, got = decode_car(car)
    assert roots == cids[:1]
    assert got == list(zip(cids, datas, strict=False))
    for c, d in got:
        assert c.matches(d)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_car(data)


@given(st.binary(min_size=1, max_size=200), st.integers(0, 400))
def test_truncated_or_corrupted_cars(data: bytes, cut: int) -> None:
    cid = CID.from_data(RAW, data)
    car = encode_header([cid]) + encode_section(cid, data)
    with contextlib.suppress(DecodeError):
        decode_car(car[: cut % len(car)])
    flipped = bytearray(car)
    flipped[cut % len(car)] ^= 0xFF
    with contextlib.suppress(DecodeError):
        decode_car(bytes(flipped))


@pytest.mark.parametrize(
    "body",
    [
        b"\xa1\x67version\x02",  # version 2
        b"\xa1\x67version\x18\x01",  # non-minimal integer
        b"\xa2\x65roots\x80\x65roots\x80",  # duplicate key
        b"\xa2\x65roots\x81\xd8\x2b\x41\x00\x67version\x01",  # wrong tag
        b"\xbf\xff",  # indefinite map
    ],
)
def test_bad_headers(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_header(bytes([len(body)]) + body)
