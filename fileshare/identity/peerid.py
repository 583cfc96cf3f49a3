"""PeerIds: the multihash of a peer's ``PublicKey`` protobuf, and their two text forms.

Keys whose protobuf is at most 42 bytes (Ed25519, Secp256k1) are embedded with the identity
multihash (``12D3KooW...`` in base58btc); larger keys are sha2-256 hashed (``Qm...``). The newer
text form is a CIDv1 with the ``libp2p-key`` codec (0x72), base32 by default (``bafz...``).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
from dataclasses import dataclass

import base58

from ..errors import DecodeError
from ..limits import MAX_PEER_ID_TEXT
from ..wire.varint import decode_varint, encode_varint
from .keys import PublicKey

IDENTITY_CODE = 0x00
SHA2_256_CODE = 0x12
LIBP2P_KEY_CODEC = 0x72
MAX_INLINE_KEY_LENGTH = 42

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_SET = frozenset(_B58_ALPHABET)
_B32_SET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_SET = frozenset(_B36_ALPHABET)
_B16_SET = frozenset("0123456789abcdef")


def _b58decode(text: str) -> builtins.bytes:
    if not text or not set(text) <= _B58_SET:
        raise DecodeError("invalid base58btc text")
    raw = base58.b58decode(text)
    if base58.b58encode(raw).decode("ascii") != text:
        raise DecodeError("non-canonical base58btc text")
    return builtins.bytes(raw)


def _b58encode(raw: builtins.bytes) -> str:
    return str(base58.b58encode(raw).decode("ascii"))


def _b32encode(raw: builtins.bytes) -> str:
    return base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _b32decode(text: str) -> builtins.bytes:
    if not text or not set(text) <= _B32_SET:
        raise DecodeError("invalid base32 text")
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise DecodeError("invalid base32 text") from exc
    if _b32encode(raw) != text:
        raise DecodeError("non-canonical base32 text")
    return raw


def _b36encode(raw: builtins.bytes) -> str:
    zeros = len(raw) - len(raw.lstrip(b"\0"))
    n = int.from_bytes(raw, "big")
    digits = []
    while n:
        n, r = divmod(n, 36)
        digits.append(_B36_ALPHABET[r])
    return "0" * zeros + "".join(reversed(digits))


def _b36decode(text: str) -> builtins.bytes:
    if not text or not set(text) <= _B36_SET:
        raise DecodeError("invalid base36 text")
    zeros = len(text) - len(text.lstrip("0"))
    rest = text[zeros:]
    n = int(rest, 36) if rest else 0
    raw = b"\0" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")
    if _b36encode(raw) != text:
        raise DecodeError("non-canonical base36 text")
    return raw


def _multibase_decode(text: str) -> builtins.bytes:
    prefix, body = text[0], text[1:]
    if prefix in "BKF":
        if body != body.upper():
            raise DecodeError("mixed case in an upper-case multibase PeerId")
        prefix, body = prefix.lower(), body.lower()
    if prefix == "b":
        return _b32decode(body)
    if prefix == "k":
        return _b36decode(body)
    if prefix == "z":
        return _b58decode(body)
    if prefix == "f":
        if not body or len(body) % 2 or not set(body) <= _B16_SET:
            raise DecodeError("invalid base16 text")
        return builtins.bytes.fromhex(body)
    raise DecodeError(f"unsupported multibase prefix {prefix!r} in PeerId")


@dataclass(frozen=True, slots=True, order=True)
class PeerId:
    """A peer's identity: the multihash bytes of its public key. Ordered and hashed by ``bytes``."""

    bytes: builtins.bytes

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        encoded = key.to_protobuf()
        if len(encoded) <= MAX_INLINE_KEY_LENGTH:
            mh = encode_varint(IDENTITY_CODE) + encode_varint(len(encoded)) + encoded
        else:
            mh = encode_varint(SHA2_256_CODE) + b"\x20" + hashlib.sha256(encoded).digest()
        return cls(mh)

    @classmethod
    def from_bytes(cls, data: builtins.bytes | bytearray | memoryview) -> PeerId:
        """Validate and wrap multihash bytes (identity of <= 42 bytes, or sha2-256)."""
        raw = builtins.bytes(data)
        code, pos = decode_varint(raw, 0)
        length, pos = decode_varint(raw, pos)
        if len(raw) - pos != length:
            raise DecodeError("PeerId multihash length does not match its header")
        if code == SHA2_256_CODE:
            if length != 32:
                raise DecodeError("sha2-256 PeerId must have a 32-byte digest")
        elif code == IDENTITY_CODE:
            if not 0 < length <= MAX_INLINE_KEY_LENGTH:
                raise DecodeError("identity PeerId must embed a key of 1..42 bytes")
        else:
            raise DecodeError(f"PeerId uses unsupported multihash 0x{code:x}")
        return cls(raw)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc multihash text or a CIDv1 ``libp2p-key`` in multibase text."""
        if not text or len(text) > MAX_PEER_ID_TEXT:
            raise DecodeError("PeerId text is empty or too long")
        if text[0] == "1" or text.startswith("Qm"):
            return cls.from_bytes(_b58decode(text))
        raw = _multibase_decode(text)
        version, pos = decode_varint(raw, 0)
        if version != 1:
            raise DecodeError(f"PeerId CID must be CIDv1, not version {version}")
        codec, pos = decode_varint(raw, pos)
        if codec != LIBP2P_KEY_CODEC:
            raise DecodeError(f"PeerId CID must use the libp2p-key codec, not 0x{codec:x}")
        return cls.from_bytes(raw[pos:])

    def to_base58(self) -> str:
        return _b58encode(self.bytes)

    def to_cid_string(self) -> str:
        """CIDv1 ``libp2p-key`` in base32 (``bafz...``)."""
        return "b" + _b32encode(encode_varint(1) + encode_varint(LIBP2P_KEY_CODEC) + self.bytes)

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()})"

    def public_key(self) -> PublicKey | None:
        """The embedded key of an identity-hashed PeerId; None when hashed or not a valid key."""
        code, pos = decode_varint(self.bytes, 0)
        if code != IDENTITY_CODE:
            return None
        _length, pos = decode_varint(self.bytes, pos)
        try:
            return PublicKey.from_protobuf(self.bytes[pos:])
        except DecodeError:
            return None

    def matches(self, key: PublicKey) -> bool:
        """True if ``key`` is the key this PeerId was derived from."""
        return PeerId.from_public_key(key) == self
