"""Sans-io Noise_XX_25519_ChaChaPoly_SHA256 handshake with the libp2p handshake payload.

    XX:  -> e
         <- e, ee, s, es
         -> s, se

Messages travel as ``uint16_be(len) || noise_message``. Messages 2 and 3 carry an encrypted
``NoiseHandshakePayload`` (identity_key=1, identity_sig=2, extensions=4) whose signature, made
with the libp2p identity key, covers ``b"noise-libp2p-static-key:" + static X25519 public key``.
``NoiseHandshake`` takes received bytes and returns bytes to send; when ``complete`` it yields a
``HandshakeResult`` with the two transport ``CipherState`` objects and the verified remote identity.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import DecodeError, ProtocolError
from ..identity.keys import PrivateKey, PublicKey
from ..identity.peerid import PeerId
from ..limits import NOISE_MAX_FRAME
from ..wire.protobuf import Writer, expect_bytes, expect_str, iter_fields

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
DH_LEN = 32
TAG_LEN = 16
HASH_LEN = 32
MAX_NONCE = (1 << 64) - 1  # reserved by the Noise spec; reaching it ends the session
_NONCE = struct.Struct("<4xQ")


class HandshakeError(ProtocolError):
    """The Noise handshake failed: bad message, bad signature, wrong peer, decrypt failure."""


class NoiseError(ProtocolError):
    """A Noise transport message could not be authenticated or framed."""


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """The Noise spec's HKDF (HMAC-SHA256), 2 or 3 outputs of 32 bytes."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


class CipherState:
    """A ChaCha20-Poly1305 key with its 64-bit message counter (nonce = 4 zero bytes + u64 le)."""

    __slots__ = ("aead", "key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self.aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self.aead is not None

    def next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("Noise nonce space exhausted")
        nonce = _NONCE.pack(self.n)
        self.n += 1
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        if self.aead is None:
            return bytes(plaintext)
        return self.aead.encrypt(self.next_nonce(), plaintext, ad or None)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        if self.aead is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise NoiseError("Noise nonce space exhausted")
        try:
            out = self.aead.decrypt(_NONCE.pack(self.n), ciphertext, ad or None)
        except InvalidTag as exc:
            raise NoiseError("Noise message failed authentication") from exc
        self.n += 1
        return out


class SymmetricState:
    """Noise SymmetricState: chaining key, handshake hash, and the handshake CipherState."""

    __slots__ = ("ck", "cs", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\0")
        else:
            self.h = _sha256(protocol_name)
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


# --- libp2p handshake payload ---


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """``NoiseHandshakePayload``; ``stream_muxers`` comes from the optional ``extensions``."""

    identity_key: bytes
    identity_sig: bytes
    stream_muxers: tuple[str, ...] = ()
    webtransport_certhashes: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        w = Writer().bytes(1, self.identity_key).bytes(2, self.identity_sig)
        if self.stream_muxers or self.webtransport_certhashes:
            ext = Writer()
            for h in self.webtransport_certhashes:
                ext.bytes(1, h)
            for m in self.stream_muxers:
                ext.string(2, m)
            w.bytes(4, ext.finish())
        return w.finish()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> HandshakePayload:
        key = sig = b""
        muxers: list[str] = []
        certhashes: list[bytes] = []
        for num, wt, value in iter_fields(data):
            if num == 1:
                key = expect_bytes(wt, value, "identity_key")
            elif num == 2:
                sig = expect_bytes(wt, value, "identity_sig")
            elif num == 4:
                ext = expect_bytes(wt, value, "extensions")
                for enum, ewt, evalue in iter_fields(ext):
                    if enum == 1:
                        certhashes.append(expect_bytes(ewt, evalue, "webtransport_certhashes"))
                    elif enum == 2:
                        muxers.append(expect_str(ewt, evalue, "stream_muxers"))
        if not key or not sig:
            raise DecodeError("handshake payload lacks identity_key or identity_sig")
        return cls(key, sig, tuple(muxers), tuple(certhashes))


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a completed handshake yields to the transport layer."""

    send_cipher: CipherState
    recv_cipher: CipherState
    remote_public_key: PublicKey
    remote_peer: PeerId
    remote_static: bytes
    remote_muxers: tuple[str, ...] = field(default=())
    handshake_hash: bytes = b""


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise HandshakeError("invalid X25519 public key from peer") from exc


class NoiseHandshake:
    """Sans-io XX handshake for either role.

    ``start()`` returns the initiator's first frame (b"" for the responder). ``receive_data(b)``
    buffers bytes, processes every complete frame and returns the frames to send in reply.
    After ``complete``, ``result`` holds the session and ``take_unconsumed()`` any bytes that
    followed the last handshake message (they are transport frames).
    """

    def __init__(
        self,
        initiator: bool,
        identity: PrivateKey,
        *,
        expected_peer: PeerId | None = None,
        muxers: Sequence[str] = (),
        static_key: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._identity = identity
        self._expected = expected_peer
        self._muxers = tuple(muxers)
        self._s = static_key or X25519PrivateKey.generate()
        self._s_pub = _x25519_public(self._s)
        self._e = X25519PrivateKey.generate()
        self._e_pub = _x25519_public(self._e)
        self._re = b""
        self._rs = b""
        self._ss = SymmetricState()
        self._ss.mix_hash(b"")  # empty prologue
        self._buf = bytearray()
        self._step = 0  # index of the next message (0, 1, 2) in the XX pattern
        self._started = False
        self._remote: tuple[PublicKey, PeerId, tuple[str, ...]] | None = None
        self.result: HandshakeResult | None = None

    @property
    def complete(self) -> bool:
        return self.result is not None

    # --- payload ---
    def _our_payload(self) -> bytes:
        sig = self._identity.sign(SIGNATURE_PREFIX + self._s_pub)
        return HandshakePayload(
            self._identity.public_key().to_protobuf(), sig, self._muxers
        ).encode()

    def _check_payload(self, plaintext: bytes) -> None:
        try:
            payload = HandshakePayload.decode(plaintext)
            key = PublicKey.from_protobuf(payload.identity_key)
        except DecodeError as exc:
            raise HandshakeError(f"bad handshake payload: {exc}") from exc
        if not key.verify(SIGNATURE_PREFIX + self._rs, payload.identity_sig):
            raise HandshakeError("handshake payload signature does not verify")
        peer = PeerId.from_public_key(key)
        if self._expected is not None and peer != self._expected:
            raise HandshakeError(f"expected peer {self._expected} but the remote is {peer}")
        self._remote = (key, peer, payload.stream_muxers)

    # --- messages ---
    @staticmethod
    def _frame(message: bytes) -> bytes:
        if len(message) > NOISE_MAX_FRAME:
            raise HandshakeError("handshake message too large")
        return len(message).to_bytes(2, "big") + message

    def _write_msg1(self) -> bytes:
        self._ss.mix_hash(self._e_pub)
        return self._frame(self._e_pub + self._ss.encrypt_and_hash(b""))

    def _read_msg1(self, msg: bytes) -> None:
        if len(msg) < DH_LEN:
            raise HandshakeError("handshake message 1 too short")
        self._re = msg[:DH_LEN]
        self._ss.mix_hash(self._re)
        self._ss.decrypt_and_hash(msg[DH_LEN:])  # plaintext payload, ignored

    def _write_msg2(self) -> bytes:
        ss = self._ss
        ss.mix_hash(self._e_pub)
        ss.mix_key(_dh(self._e, self._re))
        enc_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        return self._frame(self._e_pub + enc_s + ss.encrypt_and_hash(self._our_payload()))

    def _read_msg2(self, msg: bytes) -> None:
        ss = self._ss
        if len(msg) < DH_LEN + DH_LEN + TAG_LEN + TAG_LEN:
            raise HandshakeError("handshake message 2 too short")
        self._re = msg[:DH_LEN]
        ss.mix_hash(self._re)
        ss.mix_key(_dh(self._e, self._re))
        self._rs = ss.decrypt_and_hash(msg[DH_LEN : 2 * DH_LEN + TAG_LEN])
        ss.mix_key(_dh(self._e, self._rs))
        self._check_payload(ss.decrypt_and_hash(msg[2 * DH_LEN + TAG_LEN :]))

    def _write_msg3(self) -> bytes:
        ss = self._ss
        enc_s = ss.encrypt_and_hash(self._s_pub)
        ss.mix_key(_dh(self._s, self._re))
        return self._frame(enc_s + ss.encrypt_and_hash(self._our_payload()))

    def _read_msg3(self, msg: bytes) -> None:
        ss = self._ss
        if len(msg) < DH_LEN + TAG_LEN + TAG_LEN:
            raise HandshakeError("handshake message 3 too short")
        self._rs = ss.decrypt_and_hash(msg[: DH_LEN + TAG_LEN])
        ss.mix_key(_dh(self._e, self._rs))
        self._check_payload(ss.decrypt_and_hash(msg[DH_LEN + TAG_LEN :]))

    def _finish(self) -> None:
        assert self._remote is not None
        c1, c2 = self._ss.split()
        send, recv = (c1, c2) if self.initiator else (c2, c1)
        key, peer, muxers = self._remote
        self.result = HandshakeResult(send, recv, key, peer, self._rs, muxers, self._ss.h)
        # drop secrets we no longer need
        del self._e, self._s

    # --- driver interface ---
    def start(self) -> bytes:
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        if self.initiator:
            self._step = 1
            return self._write_msg1()
        return b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed received bytes; return handshake frames to send (possibly b"")."""
        if not self._started:
            raise RuntimeError("call start() first")
        if self.result is not None:
            raise RuntimeError("handshake already complete")
        self._buf += data
        out: list[bytes] = []
        while self.result is None and len(self._buf) >= 2:
            length = (self._buf[0] << 8) | self._buf[1]
            if len(self._buf) - 2 < length:
                break
            msg = bytes(self._buf[2 : 2 + length])
            del self._buf[: 2 + length]
            try:
                out.append(self._process(msg))
            except NoiseError as exc:
                raise HandshakeError(f"handshake decryption failed: {exc}") from exc
        return b"".join(out)

    def _process(self, msg: bytes) -> bytes:
        if self.initiator:
            self._read_msg2(msg)
            reply = self._write_msg3()
            self._finish()
            return reply
        if self._step == 0:
            self._read_msg1(msg)
            self._step = 2
            return self._write_msg2()
        self._read_msg3(msg)
        self._finish()
        return b""

    def take_unconsumed(self) -> bytes:
        """Bytes received after the final handshake message."""
        out = bytes(self._buf)
        self._buf.clear()
        return out
