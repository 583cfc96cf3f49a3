"""CIDs: known vectors, binary and text round trips, and decoding of arbitrary input."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256, hash_digest
from fileshare.errors import DecodeError, VerificationError

EMPTY_SHA256 = hashlib.sha256(b"").digest()


def test_raw_vector_from_unixfs_spec() -> None:
    # spec "Simple raw Example": raw block "test" with sha2-256
    cid = CID.from_data(RAW, b"test", SHA2_256)
    assert cid.encode().hex() == (
        "015512209f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )
    assert CID.parse("f" + cid.encode().hex()) == cid


def test_zero_length_dag_pb_vectors() -> None:
    # dag-pb spec: the empty block's CIDs
    v1 = CID.from_data(DAG_PB, b"", SHA2_256)
    assert str(v1) == "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    v0 = CID(0, DAG_PB, v1.multihash)
    assert str(v0) == "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
    assert CID.parse(str(v0)) == v0
    assert CID.decode(v0.encode()) == v0
    assert v0.to_v1() == v1
    assert v0.hash_code == SHA2_256 and v0.digest == EMPTY_SHA256


def test_empty_raw_vector() -> None:
    cid = CID.from_data(RAW, b"", SHA2_256)
    assert str(cid) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_blake3_cid() -> None:
    cid = CID.from_data(RAW, b"abc")
    assert cid.hash_code == BLAKE3
    assert cid.digest == hash_digest(BLAKE3, b"abc")
    assert str(cid).startswith("bafkr4i")  # raw + blake3 prefix
    assert CID.parse(str(cid)) == cid


def test_verify() -> None:
    cid = CID.from_data(RAW, b"hello", SHA2_256)
    cid.verify(b"hello")
    assert cid.matches(b"hello")
    with pytest.raises(VerificationError):
        cid.verify(b"hellO")
    assert not cid.matches(b"")


def test_parse_other_bases() -> None:
    cid = CID.from_data(DAG_PB, b"x", BLAKE3)
    import base58

    assert CID.parse("z" + base58.b58encode(cid.encode()).decode()) == cid
    assert CID.parse(str(cid).upper()) == cid  # "B" + upper-case base32


@pytest.mark.parametrize(
    "text",
    ["", "Qm", "bafy!!!", "x123", "f0", "f" + "12" * 17, "zzz0OIl", "b" + "a" * 100],
)
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(DecodeError):
        CID.parse(text)


def test_decode_prefix_and_trailing_bytes() -> None:
    cid = CID.from_data(RAW, b"data")
    buf = b"\xff" + cid.encode() + b"tail"
    got, end = CID.decode_prefix(buf, 1)
    assert got == cid and buf[end:] == b"tail"
    with pytest.raises(DecodeError):
        CID.decode(cid.encode() + b"\x00")


digests = st.binary(min_size=32, max_size=32)
codecs = st.sampled_from([RAW, DAG_PB, 0x71, 0x72, 0x300])


@given(codecs, st.sampled_from([SHA2_256, BLAKE3]), digests)
def test_v1_round_trip(codec: int, hash_code: int, digest: bytes) -> None:
    cid = CID.from_digest(codec, hash_code, digest)
    assert CID.decode(cid.encode()) == cid
    assert CID.parse(str(cid)) == cid
    assert cid.digest == digest and cid.hash_code == hash_code


@given(digests)
def test_v0_round_trip(digest: bytes) -> None:
    cid = CID.from_digest(DAG_PB, SHA2_256, digest, version=0)
    assert str(cid).startswith("Qm")
    assert CID.parse(str(cid)) == cid
    assert CID.decode(cid.encode()) == cid


@given(st.binary(max_size=80))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        cid = CID.decode(data)
    except DecodeError:
        return
    assert cid.encode() == data  # whatever decodes is in canonical form


@given(st.text(max_size=80))
def test_parse_arbitrary_text(text: str) -> None:
    with contextlib.suppress(DecodeError):
        CID.parse(text)


def test_identity_cid_size_limit() -> None:
    # UnixFS spec vector: a 129-byte identity digest MUST be rejected; 128 is fine
    too_big = CID(1, RAW, b"\x00\x81\x01" + b"A" * 129)
    assert str(too_big).startswith("bafkqbaibifaucqkbifaucq")
    with pytest.raises(DecodeError, match="identity"):
        CID.parse(str(too_big))
    ok = CID(1, RAW, b"\x00\x80\x01" + b"A" * 128)
    assert CID.decode(ok.encode()) == ok
    ok.verify(b"A" * 128)
    assert CID.parse("bafkqaaa") == CID(1, RAW, b"\x00\x00")  # the inlined empty raw block
