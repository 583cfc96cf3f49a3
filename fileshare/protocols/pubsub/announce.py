"""Share announcements: a small versioned JSON document inside a signed gossipsub message.

    {"v":1,"cid":"bafk...","name":"a.txt","size":123,"hash":"blake3","time":1764000000,
     "addrs":["/ip4/1.2.3.4/tcp/4001/p2p/12D3..."]}

The sharer is the message's author (StrictSign), so the document does not repeat it; an address
that names a peer must name the author. Receivers validate the schema and every size before the
message is delivered or forwarded (``validate_announcement`` is the topic validator).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from multiaddr import Multiaddr

from ...content.cid import CID
from ...errors import DecodeError, LimitExceeded
from ...identity.peerid import PeerId
from ...limits import (
    ANNOUNCE_MAX_ADDR_LENGTH,
    ANNOUNCE_MAX_ADDRS,
    ANNOUNCE_MAX_BYTES,
    ANNOUNCE_MAX_NAME,
)
from ...net import addrs as _addrs
from .router import Delivered, Validation
from .rpc import Message

if TYPE_CHECKING:
    from ...node import Node
    from .service import PubsubService

__all__ = [
    "ANNOUNCE_TOPIC",
    "ANNOUNCE_VERSION",
    "Announcement",
    "announce_share",
    "decode_announcement",
    "encode_announcement",
    "received_announcement",
    "subscribe_announcements",
    "validate_announcement",
]

ANNOUNCE_TOPIC = "fileshare/shares/1"
ANNOUNCE_VERSION = 1
MAX_SIZE = 2**53  # bytes in an announced file (JSON-safe integer)
MAX_TIME = 2**40  # seconds since the epoch
MAX_CID_LENGTH = 256  # characters in the CID string
_HASH_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_HASH_CODES = {"blake3": 0x1E, "sha2-256": 0x12}  # names whose multihash code we check
_FIELDS = ("v", "cid", "name", "size", "hash", "time", "addrs")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One shared file. ``author`` is filled from the signed message on receipt."""

    cid: CID
    name: str
    size: int
    hash_name: str
    time: int
    addrs: tuple[Multiaddr, ...] = ()
    author: PeerId | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": str(self.cid),
            "name": self.name,
            "size": self.size,
            "hash": self.hash_name,
            "time": self.time,
            "addrs": [str(a) for a in self.addrs],
            "from": str(self.author) if self.author is not None else None,
        }


def check_name(name: str) -> None:
    """A bare file name: no path parts, NUL or control characters, at most 255 UTF-8 bytes."""
    if not name or name in (".", ".."):
        raise DecodeError(f"announced name {name!r} is not a file name")
    if any(c in name for c in "/\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise DecodeError(f"announced name {name!r} contains a path separator or control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("announced name is not valid UTF-8") from None
    if len(encoded) > ANNOUNCE_MAX_NAME:
        raise DecodeError(f"announced name longer than {ANNOUNCE_MAX_NAME} bytes")


def _check(a: Announcement) -> None:
    check_name(a.name)
    if not 0 <= a.size <= MAX_SIZE:
        raise DecodeError(f"announced size {a.size} out of range")
    if not 0 <= a.time <= MAX_TIME:
        raise DecodeError(f"announced time {a.time} out of range")
    if not _HASH_NAME.fullmatch(a.hash_name):
        raise DecodeError(f"announced hash function {a.hash_name!r} is not a valid name")
    code = _HASH_CODES.get(a.hash_name)
    if code is not None and code != a.cid.hash_code:
        raise DecodeError(f"CID hash function does not match {a.hash_name}")
    if len(a.addrs) > ANNOUNCE_MAX_ADDRS:
        raise DecodeError(f"more than {ANNOUNCE_MAX_ADDRS} addresses announced")
    for addr in a.addrs:
        if len(str(addr)) > ANNOUNCE_MAX_ADDR_LENGTH:
            raise DecodeError("announced address too long")
        if a.author is not None:
            _, named = _addrs.split_peer(addr)
            if named is not None and named != a.author:
                raise DecodeError(f"announced address {addr} names another peer than the author")


def encode_announcement(a: Announcement) -> bytes:
    """The document's bytes (compact, sorted keys); ``LimitExceeded`` if over the size limit."""
    try:
        _check(a)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
    doc = {
        "v": ANNOUNCE_VERSION,
        "cid": str(a.cid),
        "name": a.name,
        "size": a.size,
        "hash": a.hash_name,
        "time": a.time,
        "addrs": [str(x) for x in a.addrs],
    }
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    if len(data) > ANNOUNCE_MAX_BYTES:
        raise LimitExceeded(f"announcement exceeds {ANNOUNCE_MAX_BYTES} bytes")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"duplicate key {k!r} in announcement")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not allowed in an announcement")


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if type(value) is not int:
        raise DecodeError(f"announcement field {key!r} must be an integer")
    return value


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise DecodeError(f"announcement field {key!r} must be a string")
    return value


def decode_announcement(
    data: bytes | bytearray | memoryview, author: PeerId | None = None
) -> Announcement:
    """Parse and validate a document; raises only ``DecodeError`` (unknown keys are ignored)."""
    if len(data) > ANNOUNCE_MAX_BYTES:
        raise DecodeError(f"announcement exceeds {ANNOUNCE_MAX_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"announcement is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("announcement must be a JSON object")
    if _int(doc, "v") != ANNOUNCE_VERSION:
        raise DecodeError(f"unsupported announcement version {doc['v']}")
    cid_text = _str(doc, "cid")
    if len(cid_text) > MAX_CID_LENGTH:
        raise DecodeError("announced CID too long")
    try:
        cid = CID.parse(cid_text)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise DecodeError(f"announced CID is invalid: {exc}") from None
    raw_addrs = doc.get("addrs", [])
    if not isinstance(raw_addrs, list) or not all(isinstance(x, str) for x in raw_addrs):
        raise DecodeError("announcement field 'addrs' must be a list of strings")
    if len(raw_addrs) > ANNOUNCE_MAX_ADDRS:
        raise DecodeError(f"more than {ANNOUNCE_MAX_ADDRS} addresses announced")
    parsed: list[Multiaddr] = []
    for text_addr in raw_addrs:
        if len(text_addr) > ANNOUNCE_MAX_ADDR_LENGTH:
            raise DecodeError("announced address too long")
        parsed.append(_addrs.parse(text_addr))
    a = Announcement(
        cid=cid,
        name=_str(doc, "name"),
        size=_int(doc, "size"),
        hash_name=_str(doc, "hash"),
        time=_int(doc, "time"),
        addrs=tuple(parsed),
        author=author,
    )
    _check(a)
    return a


def _author(msg: Message) -> PeerId:
    return PeerId.from_bytes(msg.from_peer or b"")  # raises only DecodeError


def validate_announcement(src: PeerId, msg: Message) -> Validation:
    """Topic validator: REJECT (and penalise the forwarder) unless ``msg`` is a valid announcement."""
    try:
        decode_announcement(msg.data or b"", _author(msg))
    except DecodeError:
        return Validation.REJECT
    return Validation.ACCEPT


def received_announcement(delivered: Delivered) -> Announcement:
    """The announcement in a delivered message (already validated; raises ``DecodeError`` if not)."""
    return decode_announcement(delivered.data, _author(delivered.message))


def subscribe_announcements(
    pubsub: PubsubService, topic: str = ANNOUNCE_TOPIC
) -> trio.MemoryReceiveChannel[Delivered]:
    """Install the validator on ``topic`` and subscribe to it."""
    pubsub.set_validator(topic, validate_announcement)
    return pubsub.subscribe(topic)


async def announce_share(
    node: Node,
    root_cid: CID,
    name: str,
    size: int,
    hash_name: str,
    *,
    topic: str = ANNOUNCE_TOPIC,
    wait_for_peers: float = 5.0,
    addrs: Sequence[Multiaddr] | None = None,
) -> bytes:
    """Publish a signed announcement of a shared file on ``topic``; returns the message id.

    Waits up to ``wait_for_peers`` seconds for a peer subscribed to the topic (announcing to nobody
    is not an error). ``addrs`` defaults to the node's own full addresses.
    """
    if addrs is None:
        addrs = node.full_addrs()
    a = Announcement(
        cid=root_cid,
        name=name,
        size=size,
        hash_name=hash_name,
        time=int(time.time()),
        addrs=tuple(addrs)[:ANNOUNCE_MAX_ADDRS],
        author=node.peer_id,
    )
    data = encode_announcement(a)
    node.pubsub.set_validator(topic, validate_announcement)
    if wait_for_peers > 0:
        await node.pubsub.wait_for_topic_peers(topic, 1, wait_for_peers)
    return await node.pubsub.publish(topic, data)
