"""CIDs (v0 and v1) and the multihashes inside them.

A CID is ``<version><codec><multihash>``; CIDv0 is a bare sha2-256 multihash of a dag-pb block. We
support the hash functions we can verify: blake3 (0x1e, 32-byte digest, our default) and sha2-256
(0x12). Text forms: CIDv1 as multibase base32 lower-case (``b...``), also parsed from base58btc
(``z...``) and base16 (``f...``); CIDv0 as bare base58btc (``Qm...``).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import base58
import blake3
import multihash

from ..errors import DecodeError, VerificationError
from ..limits import MAX_CID_BYTES
from ..wire.varint import decode_varint, encode_varint

RAW = 0x55
DAG_PB = 0x70
LIBP2P_KEY = 0x72

IDENTITY = 0x00
SHA2_256 = 0x12
BLAKE3 = 0x1E

HASH_NAMES: dict[str, int] = {"blake3": BLAKE3, "sha2-256": SHA2_256}
CODEC_NAMES: dict[int, str] = {RAW: "raw", DAG_PB: "dag-pb", LIBP2P_KEY: "libp2p-key"}
DIGEST_SIZES: dict[int, int] = {BLAKE3: 32, SHA2_256: 32}


def hash_name_of(code: int, default: str = "") -> str:
    """The name of a multihash code in ``HASH_NAMES`` (``default`` if it has none)."""
    return next((n for n, c in HASH_NAMES.items() if c == code), default)


MAX_IDENTITY_DIGEST = 128  # UnixFS spec: identity CIDs with a longer digest MUST be rejected

assert multihash.Func.blake3 == BLAKE3 and multihash.Func.sha2_256 == SHA2_256


def hash_digest(hash_code: int, data: bytes | bytearray | memoryview) -> bytes:
    """Digest of ``data`` under a supported multihash function (32 bytes)."""
    if hash_code == BLAKE3:
        # max_threads lets the Rust side hash large buffers on several cores
        h = (
            blake3.blake3(max_threads=blake3.blake3.AUTO)
            if len(data) >= 1 << 17
            else blake3.blake3()
        )
        h.update(data)
        return h.digest()
    if hash_code == SHA2_256:
        return hashlib.sha256(data).digest()
    raise DecodeError(f"unsupported hash function 0x{hash_code:x}")


def encode_multihash(hash_code: int, digest: bytes) -> bytes:
    return encode_varint(hash_code) + encode_varint(len(digest)) + digest


def decode_multihash(data: bytes | memoryview) -> tuple[int, bytes]:
    """Return ``(hash_code, digest)``; the whole buffer must be exactly one multihash."""
    code, pos = decode_varint(data, 0)
    length, pos = decode_varint(data, pos)
    if len(data) - pos != length:
        raise DecodeError("multihash digest length does not match its header")
    return code, bytes(data[pos:])


@dataclass(frozen=True, slots=True, order=True)
class CID:
    """An immutable content identifier. ``multihash`` holds the full multihash bytes."""

    version: int
    codec: int
    multihash: bytes

    # --- construction ---
    @classmethod
    def from_data(
        cls, codec: int, data: bytes | bytearray | memoryview, hash_code: int = BLAKE3
    ) -> CID:
        return cls(1, codec, encode_multihash(hash_code, hash_digest(hash_code, data)))

    @classmethod
    def from_digest(cls, codec: int, hash_code: int, digest: bytes, version: int = 1) -> CID:
        cid = cls(version, codec, encode_multihash(hash_code, digest))
        cid._check()
        return cid

    def _check(self) -> None:
        if self.version == 0:
            if self.codec != DAG_PB or not self.multihash.startswith(b"\x12\x20"):
                raise DecodeError("CIDv0 must be a dag-pb sha2-256 multihash")
        elif self.version != 1:
            raise DecodeError(f"unsupported CID version {self.version}")
        code, digest = decode_multihash(self.multihash)
        if code in DIGEST_SIZES and len(digest) != DIGEST_SIZES[code]:
            raise DecodeError(f"bad digest length {len(digest)} for hash 0x{code:x}")
        if code == IDENTITY and len(digest) > MAX_IDENTITY_DIGEST:
            raise DecodeError(f"identity CID of {len(digest)} bytes exceeds {MAX_IDENTITY_DIGEST}")

    # --- binary form ---
    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> CID:
        """Parse a binary CID (the whole buffer)."""
        data = bytes(data)
        if len(data) > MAX_CID_BYTES:
            raise DecodeError("CID too long")
        if len(data) == 34 and data[:2] == b"\x12\x20":
            return cls(0, DAG_PB, data)
        cid, end = cls.decode_prefix(data)
        if end != len(data):
            raise DecodeError("trailing bytes after CID")
        return cid

    @classmethod
    def decode_prefix(cls, data: bytes | memoryview, pos: int = 0) -> tuple[CID, int]:
        """Parse a CIDv1 at ``data[pos:]`` and return it with the offset just past it."""
        version, p = decode_varint(data, pos)
        if version != 1:
            raise DecodeError(f"unsupported CID version {version}")
        codec, p = decode_varint(data, p)
        start = p
        _code, p = decode_varint(data, p)
        length, p = decode_varint(data, p)
        if length > len(data) - p or length > MAX_CID_BYTES:
            raise DecodeError("truncated CID multihash")
        cid = cls(1, codec, bytes(data[start : p + length]))
        cid._check()
        return cid, p + length

    def encode(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __bytes__(self) -> bytes:
        return self.encode()

    # --- text form ---
    @classmethod
    def parse(cls, text: str) -> CID:
        """Parse a CID string (CIDv0 base58btc, or CIDv1 in base32/base58btc/base16 multibase)."""
        text = text.strip()
        if not text:
            raise DecodeError("empty CID")
        try:
            if len(text) == 46 and text.startswith("Qm"):
                return cls.decode(base58.b58decode(text))
            prefix, body = text[0], text[1:]
            if prefix in "bB":
                body = body.upper()
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            elif prefix == "z":
                raw = base58.b58decode(body)
            elif prefix in "fF":
                raw = bytes.fromhex(body)
            else:
                raise DecodeError(f"unsupported multibase prefix {prefix!r}")
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise DecodeError(f"malformed CID text: {text[:80]!r}") from exc
        if raw[:2] == b"\x12\x20" and len(raw) == 34:
            raise DecodeError("CIDv0 must be written in base58btc without a multibase prefix")
        return cls.decode(raw)

    def __str__(self) -> str:
        if self.version == 0:
            return str(base58.b58encode(self.multihash).decode("ascii"))
        return "b" + base64.b32encode(self.encode()).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    # --- inspection ---
    @property
    def hash_code(self) -> int:
        return decode_varint(self.multihash, 0)[0]

    @property
    def digest(self) -> bytes:
        return decode_multihash(self.multihash)[1]

    def to_v1(self) -> CID:
        return self if self.version == 1 else CID(1, self.codec, self.multihash)

    def verify(self, data: bytes | bytearray | memoryview) -> None:
        """Raise ``VerificationError`` unless ``data`` hashes to this CID's digest."""
        code, digest = decode_multihash(self.multihash)
        if code == IDENTITY:
            ok = bytes(data) == digest
        elif code in DIGEST_SIZES:
            ok = hash_digest(code, data) == digest
        else:
            raise VerificationError(f"cannot verify {self}: unsupported hash 0x{code:x}")
        if not ok:
            raise VerificationError(f"block does not match its CID {self}")

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        try:
            self.verify(data)
        except VerificationError:
            return False
        return True
