"""libp2p identity keys: the ``PublicKey`` / ``PrivateKey`` protobufs, signatures, the key file.

Our own identity is always Ed25519. Remote peers may present any of the four libp2p key types, so
``PublicKey.verify`` handles RSA, Ed25519, Secp256k1 and ECDSA (P-256) as the peer-ids spec defines.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ..errors import DecodeError
from ..limits import MAX_PUBLIC_KEY_BYTES, RSA_MAX_BITS, RSA_MIN_BITS
from ..wire.protobuf import VARINT, Writer, iter_fields

RSA = 0
ED25519 = 1
SECP256K1 = 2
ECDSA = 3
KEY_TYPE_NAMES: dict[int, str] = {
    RSA: "RSA",
    ED25519: "Ed25519",
    SECP256K1: "Secp256k1",
    ECDSA: "ECDSA",
}

_VerifyKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _encode_key_message(key_type: int, data: bytes) -> bytes:
    return Writer().uint(1, key_type).bytes(2, data).finish()


def _decode_key_message(data: bytes | bytearray | memoryview, what: str) -> tuple[int, bytes]:
    """Parse ``{1: Type, 2: Data}`` strictly: both fields, in order, once, minimal, nothing else."""
    raw = bytes(data)
    fields = list(iter_fields(raw))
    if len(fields) != 2:
        raise DecodeError(f"{what}: expected exactly the Type and Data fields")
    (f1, w1, key_type), (f2, _w2, value) = fields
    if f1 != 1 or w1 != VARINT or not isinstance(key_type, int):
        raise DecodeError(f"{what}: first field must be the Type varint")
    if f2 != 2 or isinstance(value, int):
        raise DecodeError(f"{what}: second field must be the Data bytes")
    if key_type not in KEY_TYPE_NAMES:
        raise DecodeError(f"{what}: unknown key type {key_type}")
    body = bytes(value)
    if _encode_key_message(key_type, body) != raw:
        raise DecodeError(f"{what}: not deterministically encoded")
    return key_type, body


@lru_cache(maxsize=1024)
def _load_verify_key(key_type: int, data: bytes) -> _VerifyKey | None:
    """The `cryptography` key object for a libp2p public key, or None if it is not a valid key."""
    try:
        if key_type == ED25519:
            if len(data) != 32:
                return None
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        if key_type == SECP256K1:
            if len(data) not in (33, 65):
                return None
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        if key_type == ECDSA:
            ec_key = serialization.load_der_public_key(data)
            if not isinstance(ec_key, ec.EllipticCurvePublicKey):
                return None
            return ec_key
        if key_type == RSA:
            rsa_key = serialization.load_der_public_key(data)
            if not isinstance(rsa_key, rsa.RSAPublicKey):
                return None
            if not RSA_MIN_BITS <= rsa_key.key_size <= RSA_MAX_BITS:
                return None
            return rsa_key
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return None


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A libp2p public key: protobuf ``KeyType`` and the type-specific encoded key bytes."""

    key_type: int
    data: bytes

    def to_protobuf(self) -> bytes:
        """Deterministic ``PublicKey`` protobuf (Type then Data, minimal varints)."""
        return _encode_key_message(self.key_type, self.data)

    @classmethod
    def from_protobuf(cls, data: bytes | bytearray | memoryview) -> PublicKey:
        """Parse a ``PublicKey`` protobuf; ``DecodeError`` unless it is canonical and of a known type."""
        if len(data) > MAX_PUBLIC_KEY_BYTES:
            raise DecodeError("public key protobuf too long")
        key_type, body = _decode_key_message(data, "PublicKey")
        if key_type == ED25519 and len(body) != 32:
            raise DecodeError("Ed25519 public key must be 32 bytes")
        return cls(key_type, body)

    def verify(self, data: bytes | bytearray | memoryview, signature: bytes) -> bool:
        """True if ``signature`` is valid over ``data`` under this key's signing rules."""
        key = _load_verify_key(self.key_type, self.data)
        if key is None:
            return False
        msg = bytes(data)
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, msg)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, msg, ec.ECDSA(hashes.SHA256()))
            else:
                key.verify(signature, msg, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    @property
    def type_name(self) -> str:
        return KEY_TYPE_NAMES.get(self.key_type, str(self.key_type))


class PrivateKey:
    """Our Ed25519 identity key."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public = PublicKey(ED25519, raw)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """Build from a 32-byte Ed25519 seed."""
        if len(seed) != 32:
            raise DecodeError("Ed25519 seed must be 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._key.sign(bytes(data))

    def public_key(self) -> PublicKey:
        return self._public

    def _seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_protobuf(self) -> bytes:
        """``PrivateKey`` protobuf with Data = seed || public key (64 bytes)."""
        return _encode_key_message(ED25519, self._seed() + self._public.data)

    @classmethod
    def from_protobuf(cls, data: bytes | bytearray | memoryview) -> PrivateKey:
        """Parse an Ed25519 ``PrivateKey`` protobuf (64-byte or legacy 96-byte Data)."""
        key_type, body = _decode_key_message(data, "PrivateKey")
        if key_type != ED25519:
            raise DecodeError(f"only Ed25519 identity keys are supported, not type {key_type}")
        if len(body) == 96:
            if body[32:64] != body[64:96]:
                raise DecodeError("legacy Ed25519 private key has mismatched public keys")
            body = body[:64]
        if len(body) != 64:
            raise DecodeError("Ed25519 private key Data must be 64 bytes")
        key = cls.from_seed(body[:32])
        if key.public_key().data != body[32:]:
            raise DecodeError("Ed25519 private key does not match its public key")
        return key

    def __repr__(self) -> str:
        return f"PrivateKey(Ed25519, public={self._public.data.hex()})"


def load_or_create_identity(path: pathlib.Path) -> PrivateKey:
    """Load the identity key at ``path``, or create it (mode 0600, temp file + link/rename)."""
    path = pathlib.Path(path)
    try:
        return PrivateKey.from_protobuf(path.read_bytes())
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = PrivateKey.generate()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_protobuf())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # never overwrites a key another process created meanwhile
        except FileExistsError:
            return PrivateKey.from_protobuf(path.read_bytes())
        except OSError:
            os.replace(tmp, path)  # filesystem without hard links
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return key


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
