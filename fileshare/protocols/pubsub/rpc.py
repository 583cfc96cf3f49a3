"""The pubsub ``RPC`` protobuf (pubsub spec + gossipsub v1.0/v1.1/v1.2 control), hand-written.

Wire schema::

    RPC            { subscriptions=1 (SubOpts*), publish=2 (Message*), control=3 (ControlMessage) }
    SubOpts        { subscribe=1 (bool), topicid=2 (string) }
    Message        { from=1, data=2, seqno=3 (bytes), topic=4 (string), signature=5, key=6 (bytes) }
    ControlMessage { ihave=1, iwant=2, graft=3, prune=4, idontwant=5 (repeated) }
    ControlIHave   { topicID=1, messageIDs=2* }   ControlIWant / ControlIDontWant { messageIDs=1* }
    ControlGraft   { topicID=1 }                  ControlPrune { topicID=1, peers=2*, backoff=3 }
    PeerInfo       { peerID=1, signedPeerRecord=2 }

``Message`` keeps proto2 presence (``None`` = absent) and its unknown fields (``extra``), so a
message we forward re-encodes to the bytes its author signed. Decoding enforces the ``PUBSUB_*``
limits and raises only ``DecodeError`` or ``LimitExceeded``; unknown fields elsewhere are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DecodeError, LimitExceeded
from ...limits import (
    PUBSUB_MAX_CONTROL_ENTRIES,
    PUBSUB_MAX_IDS_PER_RPC,
    PUBSUB_MAX_MESSAGE,
    PUBSUB_MAX_MESSAGE_ID,
    PUBSUB_MAX_MESSAGES_PER_RPC,
    PUBSUB_MAX_PEER_ID,
    PUBSUB_MAX_PEER_RECORD,
    PUBSUB_MAX_PX_PEERS,
    PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC,
    PUBSUB_MAX_TOPIC_LENGTH,
)
from ...wire.protobuf import (
    I64,
    LEN,
    VARINT,
    FieldValue,
    Writer,
    expect_bytes,
    expect_int,
    iter_fields,
)
from ...wire.varint import encode_varint

FLOODSUB_ID = "/floodsub/1.0.0"
MESHSUB_V10 = "/meshsub/1.0.0"
MESHSUB_V11 = "/meshsub/1.1.0"
MESHSUB_V12 = "/meshsub/1.2.0"
PROTOCOLS = (MESHSUB_V12, MESHSUB_V11, MESHSUB_V10, FLOODSUB_ID)  # preference order


@dataclass(frozen=True, slots=True)
class SubOpts:
    subscribe: bool
    topic: str


@dataclass(frozen=True, slots=True)
class Message:
    """A pubsub message. ``None`` means the field is absent on the wire."""

    topic: str
    data: bytes | None = None
    from_peer: bytes | None = None
    seqno: bytes | None = None
    signature: bytes | None = None
    key: bytes | None = None
    extra: bytes = b""  # unknown fields, re-emitted verbatim after the known ones


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: bytes | None = None
    signed_peer_record: bytes | None = None


@dataclass(frozen=True, slots=True)
class IHave:
    topic: str
    message_ids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class IWant:
    message_ids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Graft:
    topic: str


@dataclass(frozen=True, slots=True)
class Prune:
    topic: str
    peers: tuple[PeerInfo, ...] = ()
    backoff: int | None = None  # seconds (v1.1)


@dataclass(frozen=True, slots=True)
class IDontWant:
    message_ids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ControlMessage:
    ihave: tuple[IHave, ...] = ()
    iwant: tuple[IWant, ...] = ()
    graft: tuple[Graft, ...] = ()
    prune: tuple[Prune, ...] = ()
    idontwant: tuple[IDontWant, ...] = ()

    def is_empty(self) -> bool:
        return not (self.ihave or self.iwant or self.graft or self.prune or self.idontwant)


@dataclass(frozen=True, slots=True)
class RPC:
    subscriptions: tuple[SubOpts, ...] = ()
    publish: tuple[Message, ...] = ()
    control: ControlMessage | None = None

    def is_empty(self) -> bool:
        return (
            not self.subscriptions
            and not self.publish
            and (self.control is None or self.control.is_empty())
        )


# --- encoding ---


def encode_message(msg: Message) -> bytes:
    """Serialize one ``Message`` (fields in number order, then ``extra``)."""
    w = Writer()
    if msg.from_peer is not None:
        w.bytes(1, msg.from_peer)
    if msg.data is not None:
        w.bytes(2, msg.data)
    if msg.seqno is not None:
        w.bytes(3, msg.seqno)
    w.string(4, msg.topic)
    if msg.signature is not None:
        w.bytes(5, msg.signature)
    if msg.key is not None:
        w.bytes(6, msg.key)
    return w.finish() + msg.extra


def _encode_ids(field: int, ids: tuple[bytes, ...], w: Writer) -> None:
    for mid in ids:
        w.bytes(field, mid)


def encode_control(ctl: ControlMessage) -> bytes:
    w = Writer()
    for ih in ctl.ihave:
        sub = Writer().string(1, ih.topic)
        _encode_ids(2, ih.message_ids, sub)
        w.bytes(1, sub.finish())
    for iw in ctl.iwant:
        sub = Writer()
        _encode_ids(1, iw.message_ids, sub)
        w.bytes(2, sub.finish())
    for g in ctl.graft:
        w.bytes(3, Writer().string(1, g.topic).finish())
    for p in ctl.prune:
        sub = Writer().string(1, p.topic)
        for info in p.peers:
            pw = Writer()
            if info.peer_id is not None:
                pw.bytes(1, info.peer_id)
            if info.signed_peer_record is not None:
                pw.bytes(2, info.signed_peer_record)
            sub.bytes(2, pw.finish())
        if p.backoff is not None:
            sub.uint(3, p.backoff)
        w.bytes(4, sub.finish())
    for dw in ctl.idontwant:
        sub = Writer()
        _encode_ids(1, dw.message_ids, sub)
        w.bytes(5, sub.finish())
    return w.finish()


def encode_rpc(rpc: RPC) -> bytes:
    """Serialize an RPC (no length prefix); ``LimitExceeded`` past ``PUBSUB_MAX_MESSAGE``."""
    w = Writer()
    for s in rpc.subscriptions:
        w.bytes(1, Writer().bool(1, s.subscribe).string(2, s.topic).finish())
    for m in rpc.publish:
        w.bytes(2, encode_message(m))
    if rpc.control is not None:
        w.bytes(3, encode_control(rpc.control))
    data = w.finish()
    if len(data) > PUBSUB_MAX_MESSAGE:
        raise LimitExceeded(f"pubsub RPC of {len(data)} bytes exceeds {PUBSUB_MAX_MESSAGE}")
    return data


def message_wire_size(msg: Message) -> int:
    """Bytes ``msg`` takes inside an RPC (field key + length prefix + body), without encoding it."""
    body = 2 + len(msg.topic.encode("utf-8")) + len(msg.extra)
    for part in (msg.from_peer, msg.data, msg.seqno, msg.signature, msg.key):
        if part is not None:
            body += 1 + len(encode_varint(len(part))) + len(part)
    return 1 + len(encode_varint(body)) + body


# --- decoding ---


def _topic(wt: int, value: FieldValue, what: str) -> str:
    raw = expect_bytes(wt, value, what)
    if len(raw) > PUBSUB_MAX_TOPIC_LENGTH:
        raise LimitExceeded(f"{what} of {len(raw)} bytes exceeds {PUBSUB_MAX_TOPIC_LENGTH}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: invalid UTF-8") from exc


def _bool(wt: int, value: FieldValue, what: str) -> bool:
    n = expect_int(wt, value, what)
    if n > 1:
        raise DecodeError(f"{what}: bool out of range")
    return n == 1


def _decode_subopts(data: memoryview) -> SubOpts:
    subscribe = False
    topic: str | None = None
    for field, wt, value in iter_fields(data):
        if field == 1:
            subscribe = _bool(wt, value, "SubOpts.subscribe")
        elif field == 2:
            topic = _topic(wt, value, "SubOpts.topicid")
    if topic is None:
        raise DecodeError("SubOpts without a topicid")
    return SubOpts(subscribe, topic)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse one ``Message``; each known field at most once, topic required."""
    vals: dict[int, bytes] = {}
    topic: str | None = None
    extra = Writer()
    for field, wt, value in iter_fields(data):
        if field in vals or (field == 4 and topic is not None):
            raise DecodeError(f"Message field {field} repeated")
        if field == 4:
            topic = _topic(wt, value, "Message.topic")
        elif 1 <= field <= 6:
            vals[field] = expect_bytes(wt, value, f"Message field {field}")
        else:
            _reencode(extra, field, wt, value)
    if topic is None:
        raise DecodeError("Message without a topic")
    from_peer = vals.get(1)
    if from_peer is not None and len(from_peer) > PUBSUB_MAX_PEER_ID:
        raise LimitExceeded(f"Message.from exceeds {PUBSUB_MAX_PEER_ID} bytes")
    return Message(
        topic, vals.get(2), from_peer, vals.get(3), vals.get(5), vals.get(6), extra.finish()
    )


def _reencode(w: Writer, field: int, wt: int, value: FieldValue) -> None:
    """Write an unknown field back (minimal varints; the original bytes in the usual case)."""
    if isinstance(value, memoryview):
        w.bytes(field, value)
    elif wt == VARINT:
        w.uint(field, value)
    elif wt == I64:
        w.fixed64(field, value)
    else:
        w.fixed32(field, value)


class _Budget:
    """Counts control entries and message ids across one RPC."""

    __slots__ = ("entries", "ids")

    def __init__(self) -> None:
        self.entries = 0
        self.ids = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > PUBSUB_MAX_CONTROL_ENTRIES:
            raise LimitExceeded(f"more than {PUBSUB_MAX_CONTROL_ENTRIES} control entries in an RPC")

    def message_id(self, wt: int, value: FieldValue) -> bytes:
        self.ids += 1
        if self.ids > PUBSUB_MAX_IDS_PER_RPC:
            raise LimitExceeded(f"more than {PUBSUB_MAX_IDS_PER_RPC} message ids in an RPC")
        mid = expect_bytes(wt, value, "messageID")
        if len(mid) > PUBSUB_MAX_MESSAGE_ID:
            raise LimitExceeded(f"message id of {len(mid)} bytes exceeds {PUBSUB_MAX_MESSAGE_ID}")
        return mid


def _decode_ids(
    data: memoryview, id_field: int, budget: _Budget
) -> tuple[str | None, tuple[bytes, ...]]:
    topic: str | None = None
    ids: list[bytes] = []
    for field, wt, value in iter_fields(data):
        if field == id_field:
            ids.append(budget.message_id(wt, value))
        elif field == 1:
            topic = _topic(wt, value, "topicID")
    return topic, tuple(ids)


def _decode_peer_info(data: memoryview) -> PeerInfo:
    peer_id: bytes | None = None
    record: bytes | None = None
    for field, wt, value in iter_fields(data):
        if field == 1:
            peer_id = expect_bytes(wt, value, "PeerInfo.peerID")
            if len(peer_id) > PUBSUB_MAX_PEER_ID:
                raise LimitExceeded(f"PeerInfo.peerID exceeds {PUBSUB_MAX_PEER_ID} bytes")
        elif field == 2:
            record = expect_bytes(wt, value, "PeerInfo.signedPeerRecord")
            if len(record) > PUBSUB_MAX_PEER_RECORD:
                raise LimitExceeded(f"signedPeerRecord exceeds {PUBSUB_MAX_PEER_RECORD} bytes")
    return PeerInfo(peer_id, record)


def _decode_prune(data: memoryview) -> Prune:
    topic: str | None = None
    peers: list[PeerInfo] = []
    backoff: int | None = None
    for field, wt, value in iter_fields(data):
        if field == 1:
            topic = _topic(wt, value, "ControlPrune.topicID")
        elif field == 2:
            if len(peers) >= PUBSUB_MAX_PX_PEERS:
                raise LimitExceeded(f"more than {PUBSUB_MAX_PX_PEERS} PX peers in a PRUNE")
            peers.append(_decode_peer_info(_view(wt, value, "ControlPrune.peers")))
        elif field == 3:
            backoff = expect_int(wt, value, "ControlPrune.backoff")
    if topic is None:
        raise DecodeError("PRUNE without a topicID")
    return Prune(topic, tuple(peers), backoff)


def _view(wt: int, value: FieldValue, what: str) -> memoryview:
    if wt != LEN or isinstance(value, int):
        raise DecodeError(f"{what}: expected a length-delimited field")
    return value


def _decode_control(data: memoryview, budget: _Budget) -> ControlMessage:
    ihave: list[IHave] = []
    iwant: list[IWant] = []
    graft: list[Graft] = []
    prune: list[Prune] = []
    idontwant: list[IDontWant] = []
    for field, wt, value in iter_fields(data):
        if not 1 <= field <= 5:
            continue
        budget.entry()
        sub = _view(wt, value, f"ControlMessage field {field}")
        if field == 1:
            topic, ids = _decode_ids(sub, 2, budget)
            if topic is None:
                raise DecodeError("IHAVE without a topicID")
            ihave.append(IHave(topic, ids))
        elif field == 2:
            iwant.append(IWant(_decode_ids(sub, 1, budget)[1]))
        elif field == 3:
            topic = None
            for f, w2, v2 in iter_fields(sub):
                if f == 1:
                    topic = _topic(w2, v2, "ControlGraft.topicID")
            if topic is None:
                raise DecodeError("GRAFT without a topicID")
            graft.append(Graft(topic))
        elif field == 4:
            prune.append(_decode_prune(sub))
        else:
            idontwant.append(IDontWant(_decode_ids(sub, 1, budget)[1]))
    return ControlMessage(tuple(ihave), tuple(iwant), tuple(graft), tuple(prune), tuple(idontwant))


def decode_rpc(data: bytes | bytearray | memoryview) -> RPC:
    """Parse one RPC (without its length prefix); raises only ``DecodeError``/``LimitExceeded``."""
    if len(data) > PUBSUB_MAX_MESSAGE:
        raise LimitExceeded(f"pubsub RPC of {len(data)} bytes exceeds {PUBSUB_MAX_MESSAGE}")
    subs: list[SubOpts] = []
    msgs: list[Message] = []
    control: ControlMessage | None = None
    budget = _Budget()
    for field, wt, value in iter_fields(data):
        if field == 1:
            if len(subs) >= PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC:
                raise LimitExceeded(f"more than {PUBSUB_MAX_SUBSCRIPTIONS_PER_RPC} subscriptions")
            subs.append(_decode_subopts(_view(wt, value, "RPC.subscriptions")))
        elif field == 2:
            if len(msgs) >= PUBSUB_MAX_MESSAGES_PER_RPC:
                raise LimitExceeded(f"more than {PUBSUB_MAX_MESSAGES_PER_RPC} messages in an RPC")
            msgs.append(decode_message(_view(wt, value, "RPC.publish")))
        elif field == 3:
            ctl = _decode_control(_view(wt, value, "RPC.control"), budget)
            control = ctl if control is None else _merge(control, ctl)
    return RPC(tuple(subs), tuple(msgs), control)


def _merge(a: ControlMessage, b: ControlMessage) -> ControlMessage:
    """Protobuf semantics: a repeated embedded message field seen twice is merged."""
    return ControlMessage(
        a.ihave + b.ihave,
        a.iwant + b.iwant,
        a.graft + b.graft,
        a.prune + b.prune,
        a.idontwant + b.idontwant,
    )
