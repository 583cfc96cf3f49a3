"""Keys, PeerIds and the identity key file."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from fileshare.errors import DecodeError
from fileshare.identity.keys import (
    ECDSA,
    ED25519,
    RSA,
    SECP256K1,
    PrivateKey,
    PublicKey,
    load_or_create_identity,
)
from fileshare.identity.peerid import PeerId

# test vectors from the peer-ids spec
ED_PRIV = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d1ed1e8fae2c4a144"
    "b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
ED_PUB = bytes.fromhex("080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e")
ED_PEER = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
ED_CID = "bafzaajaiaejcahwr5d5ofrfbis4l5d6uwr57hu5tjodrypfm6yaq6dsc2r2pzyt6"
SECP_PUB = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
ECDSA_PUB = bytes.fromhex(
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83"
    "abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9"
    "f77c409e62"
)


def test_spec_ed25519_vectors() -> None:
    priv = PrivateKey.from_protobuf(ED_PRIV)
    assert priv.public_key().to_protobuf() == ED_PUB
    assert priv.to_protobuf() == ED_PRIV
    pub = PublicKey.from_protobuf(ED_PUB)
    assert pub == priv.public_key()
    assert (pub.key_type, len(pub.data)) == (ED25519, 32)
    peer = PeerId.from_public_key(pub)
    assert str(peer) == peer.to_base58() == ED_PEER
    assert peer.to_cid_string() == ED_CID
    assert PeerId.from_string(ED_PEER) == peer
    assert PeerId.from_string(ED_CID) == peer
    assert PeerId.from_string(ED_CID.upper()) == peer  # upper-case base32 multibase
    assert peer.public_key() == pub
    assert peer.matches(pub)


def test_spec_text_examples() -> None:
    sha = PeerId.from_string("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    assert PeerId.from_string("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe") == sha
    assert sha.to_cid_string() == "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
    assert sha.public_key() is None
    ed = PeerId.from_string("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    assert PeerId.from_string(ed.to_cid_string()) == ed
    assert ed.public_key() is not None


def test_other_spec_public_keys_parse_and_hash() -> None:
    secp = PublicKey.from_protobuf(SECP_PUB)
    assert secp.key_type == SECP256K1 and secp.to_protobuf() == SECP_PUB
    assert PeerId.from_public_key(secp).public_key() == secp  # 37 bytes: identity-hashed
    ecdsa = PublicKey.from_protobuf(ECDSA_PUB)
    assert ecdsa.key_type == ECDSA
    peer = PeerId.from_public_key(ecdsa)  # 95 bytes: sha2-256
    assert peer.bytes[:2] == b"\x12\x20" and peer.public_key() is None
    assert peer.to_base58().startswith("Qm") and peer.matches(ecdsa)


def test_base36_cid_form() -> None:
    peer = PeerId.from_string(ED_PEER)
    raw = b"\x01\x72" + peer.bytes
    n = int.from_bytes(raw, "big")
    digits = ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    assert PeerId.from_string("k" + digits) == peer
    assert PeerId.from_string("z" + __import__("base58").b58encode(raw).decode()) == peer


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "Qm",
        "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3p0",  # '0' not in base58
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # dag-pb CID, not libp2p-key
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxf",  # non-zero pad bits
        "BAFZaajaiaejcahwr5d5ofrfbis4l5d6uwr57hu5tjodrypfm6yaq6dsc2r2pzyt6",  # mixed case
        "x" + "a" * 50,
        "b" + "a" * 300,
    ],
)
def test_bad_peer_id_text(text: str) -> None:
    with pytest.raises(DecodeError):
        PeerId.from_string(text)


def test_peer_id_from_bytes_validates() -> None:
    with pytest.raises(DecodeError):
        PeerId.from_bytes(b"\x12\x10" + b"\0" * 16)  # sha2-256 of the wrong length
    with pytest.raises(DecodeError):
        PeerId.from_bytes(b"\x11\x14" + b"\0" * 20)  # sha1
    with pytest.raises(DecodeError):
        PeerId.from_bytes(b"\x00\x2b" + b"\0" * 43)  # identity over 42 bytes
    with pytest.raises(DecodeError):
        PeerId.from_bytes(b"\x12\x20" + b"\0" * 31)
    p = PeerId.from_bytes(b"\x12\x20" + b"\1" * 32)
    assert p.public_key() is None


@given(st.binary(max_size=80))
def test_peer_id_from_bytes_only_decode_error(data: bytes) -> None:
    try:
        p = PeerId.from_bytes(data)
    except DecodeError:
        return
    assert PeerId.from_bytes(p.bytes) == p
    assert PeerId.from_string(p.to_base58()) == p
    assert PeerId.from_string(p.to_cid_string()) == p


@given(st.text(max_size=120))
def test_peer_id_from_string_only_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        PeerId.from_string(text)


@given(st.binary(max_size=120))
def test_public_key_from_protobuf_only_decode_error(data: bytes) -> None:
    try:
        key = PublicKey.from_protobuf(data)
    except DecodeError:
        return
    assert key.to_protobuf() == data
    assert isinstance(key.verify(b"x", b"y" * 64), bool)


def test_public_key_protobuf_is_strict() -> None:
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(ED_PUB[2:])  # missing Type
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(ED_PUB[2:] + ED_PUB[:2])  # fields out of order
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(ED_PUB + b"\x18\x01")  # extra field
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(b"\x08\x81\x00" + ED_PUB[2:])  # non-minimal varint
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(b"\x08\x07" + ED_PUB[2:])  # unknown key type
    with pytest.raises(DecodeError):
        PrivateKey.from_protobuf(ED_PUB)  # Data of the wrong size


def test_peer_id_ordering_and_hashing() -> None:
    a = PeerId.from_public_key(PrivateKey.generate().public_key())
    b = PeerId.from_public_key(PrivateKey.generate().public_key())
    assert (a < b) == (a.bytes < b.bytes)
    assert len({a, b, PeerId.from_bytes(a.bytes)}) == 2


def test_ed25519_sign_verify() -> None:
    key = PrivateKey.generate()
    sig = key.sign(b"message")
    pub = key.public_key()
    assert pub.verify(b"message", sig)
    assert not pub.verify(b"messagf", sig)
    assert not pub.verify(b"message", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not PrivateKey.generate().public_key().verify(b"message", sig)


def test_legacy_96_byte_private_key() -> None:
    key = PrivateKey.from_protobuf(ED_PRIV)
    data = ED_PRIV[4:] + ED_PRIV[-32:]
    legacy = b"\x08\x01\x12\x60" + data
    assert PrivateKey.from_protobuf(legacy).public_key() == key.public_key()
    bad = b"\x08\x01\x12\x60" + ED_PRIV[4:] + bytes(32)
    with pytest.raises(DecodeError):
        PrivateKey.from_protobuf(bad)


def test_verify_secp256k1() -> None:
    sk = ec.generate_private_key(ec.SECP256K1())
    raw = sk.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    pub = PublicKey(SECP256K1, raw)
    sig = sk.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert pub.verify(b"data", sig)
    assert not pub.verify(b"datb", sig)
    assert PublicKey.from_protobuf(pub.to_protobuf()) == pub


def test_verify_ecdsa_p256() -> None:
    sk = ec.generate_private_key(ec.SECP256R1())
    der = sk.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = PublicKey(ECDSA, der)
    sig = sk.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert pub.verify(b"data", sig)
    assert not pub.verify(b"datb", sig)
    assert not PublicKey(ECDSA, b"\x30\x00").verify(b"data", sig)


def test_verify_rsa() -> None:
    sk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = sk.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = PublicKey(RSA, der)
    sig = sk.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    assert pub.verify(b"data", sig)
    assert not pub.verify(b"datb", sig)
    peer = PeerId.from_public_key(pub)
    assert peer.to_base58().startswith("Qm") and peer.matches(pub)


def test_verify_rejects_mismatched_key_types() -> None:
    sk = ec.generate_private_key(ec.SECP256R1())
    der = sk.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sig = sk.sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert not PublicKey(RSA, der).verify(b"data", sig)  # an EC key labelled RSA
    assert not PublicKey(ED25519, der).verify(b"data", sig)


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.key"
    key = load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(path)
    assert PeerId.from_public_key(again.public_key()) == PeerId.from_public_key(key.public_key())
    assert path.read_bytes() == key.to_protobuf()
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temp files left


def test_corrupt_key_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(b"garbage")
    with pytest.raises(DecodeError):
        load_or_create_identity(path)
