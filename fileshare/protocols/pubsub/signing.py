"""StrictSign message signing and verification, and message ids (pubsub spec, "Message Signing").

The signature covers ``b"libp2p-pubsub:" + Message`` encoded without its ``signature`` and ``key``
fields (unknown fields included). The author's key is the ``key`` field when present (it must hash
to ``from``), otherwise the key inlined in the identity-multihash ``from`` PeerId.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ...errors import DecodeError
from ...identity.keys import PrivateKey, PublicKey
from ...identity.peerid import PeerId
from .rpc import Message, encode_message

SIGN_PREFIX = b"libp2p-pubsub:"
SEQNO_BYTES = 8

MessageIdFn = Callable[[Message], bytes]


def default_message_id(msg: Message) -> bytes:
    """Origin-stamped id: ``from || seqno`` (empty parts when absent)."""
    return (msg.from_peer or b"") + (msg.seqno or b"")


def signing_payload(msg: Message) -> bytes:
    """The bytes a StrictSign signature covers."""
    return SIGN_PREFIX + encode_message(dataclasses.replace(msg, signature=None, key=None))


def sign_message(key: PrivateKey, topic: str, data: bytes, seqno: int) -> Message:
    """An origin-stamped, signed message from ``key``'s peer (``key`` field only if not inlined)."""
    public = key.public_key()
    peer = PeerId.from_public_key(public)
    unsigned = Message(
        topic=topic,
        data=data,
        from_peer=peer.bytes,
        seqno=(seqno & (1 << 64) - 1).to_bytes(SEQNO_BYTES, "big"),
    )
    signature = key.sign(signing_payload(unsigned))
    key_field = None if peer.public_key() == public else public.to_protobuf()
    return dataclasses.replace(unsigned, signature=signature, key=key_field)


def author_key(msg: Message) -> PublicKey | None:
    """The key that must have signed ``msg``, or None if ``from``/``key`` are missing or disagree."""
    if msg.from_peer is None:
        return None
    try:
        author = PeerId.from_bytes(msg.from_peer)
        if msg.key is not None:
            key = PublicKey.from_protobuf(msg.key)
            return key if author.matches(key) else None
    except DecodeError:
        return None
    return author.public_key()


def verify_strict(msg: Message) -> bool:
    """StrictSign check: from, seqno (8 bytes) and signature present and the signature valid."""
    if msg.seqno is None or len(msg.seqno) != SEQNO_BYTES or not msg.signature:
        return False
    key = author_key(msg)
    if key is None:
        return False
    return key.verify(signing_payload(msg), msg.signature)


def seqno_int(msg: Message) -> int | None:
    return int.from_bytes(msg.seqno, "big") if msg.seqno is not None else None
