"""Sans-io core of libp2p mDNS discovery (libp2p specs ``discovery/mdns.md``, RFC 6762).

Query: ``_p2p._udp.local PTR``. Response (QR and AA set)::

    answer:     _p2p._udp.local PTR <peer-name>._p2p._udp.local
    additional: <peer-name>._p2p._udp.local TXT "dnsaddr=/ip4/.../tcp/.../p2p/<PeerId>" ...

``peer-name`` is a random 32-character lower-case alphanumeric label chosen at start (the spec
says not to use the PeerId, which may outgrow a 63-byte label). One TXT string per address; a
string over 255 bytes cannot be carried and is skipped; addresses are dropped from the end
until the response fits ``MDNS_MAX_SEND`` bytes.

Choices, documented here:

- We never announce loopback, unspecified, multicast or IPv6 link-local addresses (nobody else
  on the link can dial them). A node listening only on loopback therefore announces nothing and answers no
  query: there is nothing useful to tell the LAN.
- A query with the unicast-response (QU) bit is answered by multicast (the querier listens on the
  group too). A query from a port other than 5353 (a "legacy" resolver, RFC 6762 s6.7) is
  answered by unicast, with its id and question echoed and TTLs capped at 10 s.
- Multicast responses are sent at most once per ``min_response_interval`` (RFC 6762 s6): a query
  inside that window gets one reply deferred to its end (further queries meanwhile share it).
  Unicast replies are rate-limited the same way, and dropped rather than deferred (they could be
  used for reflection). A query whose known answers already hold our PTR with at least half its
  TTL left is not answered (s7.1).
- From responses we take only the TXT records of the instances named by a PTR of
  ``_p2p._udp.local`` in the same message, only ``dnsaddr=`` strings whose multiaddr ends in
  ``/p2p/<PeerId>`` and is a TCP address, at most ``MDNS_MAX_ADDRS_PER_PEER`` per peer; our own
  PeerId and records with TTL 0 (goodbyes) are ignored. Messages with a non-zero opcode or rcode
  are ignored (s18.3, s18.11).
"""

from __future__ import annotations

import ipaddress
import secrets
import string
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from ...errors import FileshareError
from ...identity.peerid import PeerId
from ...limits import (
    MDNS_MAX_ADDRS_ANNOUNCED,
    MDNS_MAX_ADDRS_PER_PEER,
    MDNS_MAX_PEERS,
    MDNS_MAX_SEND,
    MDNS_MIN_RESPONSE_INTERVAL,
    MDNS_RECORD_TTL,
    MDNS_REDIAL_INTERVAL,
)
from ...net import addrs as _addrs
from .dns import (
    CLASS_IN,
    FLAG_AA,
    FLAG_QR,
    Message,
    Name,
    PtrData,
    Question,
    Record,
    RRType,
    TxtData,
    decode_message,
    encode_message,
    same_name,
)

__all__ = [
    "MDNS_GROUP_V4",
    "MDNS_GROUP_V6",
    "MDNS_PORT",
    "SERVICE_NAME",
    "DiscoveryTable",
    "Handled",
    "MdnsCore",
    "Reply",
    "announceable",
    "build_query",
    "build_response",
    "parse_response",
    "random_peer_name",
]

MDNS_GROUP_V4 = "224.0.0.251"
MDNS_GROUP_V6 = "ff02::fb"
MDNS_PORT = 5353
SERVICE_NAME: Name = (b"_p2p", b"_udp", b"local")
DNSADDR_PREFIX = b"dnsaddr="
LEGACY_UNICAST_TTL = 10  # RFC 6762 s6.7
_CLASS_ANY = 255
_ALPHABET = string.ascii_lowercase + string.digits


def random_peer_name(length: int = 32) -> str:
    """A random lower-case alphanumeric instance label (the spec's ``peer-name``)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def announceable(addr: Multiaddr) -> bool:
    """True for a TCP address another host on the link could dial.

    Not loopback, unspecified or multicast, and not IPv6 link-local (a multiaddr carries no zone
    id); IPv4 link-local (169.254/16) is fine: mDNS never leaves the link.
    """
    transport, _ = _addrs.split_peer(addr)
    if transport is None or not _addrs.is_tcp(transport):
        return False
    host, _port, _family = _addrs.tcp_endpoint(transport)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # a DNS name: let the other side resolve it
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return False
    return ip.version == 4 or not ip.is_link_local  # fe80::/10 needs a zone id to be dialled


def build_query() -> bytes:
    """A "find all peers" query: ``_p2p._udp.local PTR``."""
    return encode_message(Message(questions=(Question(SERVICE_NAME, RRType.PTR),)))


def build_response(
    peer_name: str,
    full_addrs: Sequence[Multiaddr],
    *,
    ttl: int = MDNS_RECORD_TTL,
    ident: int = 0,
    questions: tuple[Question, ...] = (),
    max_size: int = MDNS_MAX_SEND,
) -> bytes | None:
    """Our response (PTR answer + dnsaddr TXT), or None when no address can be carried."""
    instance = (peer_name.encode("ascii"), *SERVICE_NAME)
    strings = [DNSADDR_PREFIX + str(a).encode("ascii") for a in full_addrs]
    strings = [s for s in strings if len(s) <= 255][:MDNS_MAX_ADDRS_ANNOUNCED]
    while strings:
        msg = Message(
            id=ident,
            flags=FLAG_QR | FLAG_AA,
            questions=questions,
            answers=(Record(SERVICE_NAME, RRType.PTR, ttl, PtrData(instance)),),
            additionals=(Record(instance, RRType.TXT, ttl, TxtData(tuple(strings))),),
        )
        data = encode_message(msg)
        if len(data) <= max_size:
            return data
        strings.pop()
    return None


def _is_service(n: Name) -> bool:
    return same_name(n, SERVICE_NAME)


def _is_instance(n: Name) -> bool:
    return len(n) == len(SERVICE_NAME) + 1 and same_name(n[1:], SERVICE_NAME)


def is_find_all_query(msg: Message) -> bool:
    """A query (opcode 0) asking for PTR (or ANY) records of ``_p2p._udp.local``."""
    if msg.is_response or msg.opcode != 0:
        return False
    return any(
        _is_service(q.name)
        and q.qtype in (RRType.PTR, RRType.ANY)
        and q.qclass in (CLASS_IN, _CLASS_ANY)
        for q in msg.questions
    )


def _dnsaddr(raw: bytes) -> tuple[PeerId, Multiaddr] | None:
    if not raw.startswith(DNSADDR_PREFIX):
        return None
    try:
        text = raw[len(DNSADDR_PREFIX) :].decode("ascii")
        addr = _addrs.parse(text)
        transport, peer = _addrs.split_peer(addr)
    except (UnicodeDecodeError, FileshareError):
        return None
    if peer is None or transport is None or not _addrs.is_tcp(transport):
        return None
    return peer, transport


def parse_response(msg: Message, own: PeerId | None = None) -> dict[PeerId, list[Multiaddr]]:
    """Peers and their TCP transport addresses announced in a response (see module notes)."""
    if not msg.is_response or msg.opcode != 0 or msg.rcode != 0:
        return {}
    records = msg.records()
    instances: list[Name] = []
    for r in records:
        if (
            r.rtype == RRType.PTR
            and r.ttl > 0
            and _is_service(r.name)
            and isinstance(r.data, PtrData)
            and _is_instance(r.data.target)
        ):
            instances.append(r.data.target)
    found: dict[PeerId, list[Multiaddr]] = {}
    for r in records:
        if r.rtype != RRType.TXT or r.ttl == 0 or not isinstance(r.data, TxtData):
            continue
        if not any(same_name(r.name, inst) for inst in instances):
            continue
        for raw in r.data.strings:
            parsed = _dnsaddr(raw)
            if parsed is None or parsed[0] == own:
                continue
            peer, addr = parsed
            known = found.setdefault(peer, [])
            if addr not in known and len(known) < MDNS_MAX_ADDRS_PER_PEER:
                known.append(addr)
    return found


@dataclass
class Reply:
    """Bytes to send: to the mDNS group, or (``unicast``) back to the query's source.

    ``at``: the earliest time to send it (a multicast reply deferred by the rate limit).
    """

    data: bytes
    unicast: bool = False
    at: float = 0.0


@dataclass
class Handled:
    """The outcome of one datagram: a reply to send and/or peers discovered."""

    reply: Reply | None = None
    discovered: dict[PeerId, list[Multiaddr]] = field(default_factory=dict)


@dataclass
class _Entry:
    addrs: list[Multiaddr]
    last_seen: float
    last_dial: float | None = None


class DiscoveryTable:
    """Discovered peers (at most ``max_peers``, least recently seen dropped) and dial pacing."""

    def __init__(
        self, max_peers: int = MDNS_MAX_PEERS, redial_interval: float = MDNS_REDIAL_INTERVAL
    ) -> None:
        self.max_peers = max_peers
        self.redial_interval = redial_interval
        self._peers: OrderedDict[PeerId, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def peers(self) -> list[PeerId]:
        return list(self._peers)

    def addrs(self, peer: PeerId) -> list[Multiaddr]:
        entry = self._peers.get(peer)
        return list(entry.addrs) if entry else []

    def observe(self, peer: PeerId, addrs: Iterable[Multiaddr], now: float) -> bool:
        """Record a sighting; True if the peer was not in the table."""
        entry = self._peers.pop(peer, None)
        new = entry is None
        if entry is None:
            entry = _Entry([], now)
            while len(self._peers) >= self.max_peers:
                self._peers.popitem(last=False)
        for addr in addrs:
            if addr in entry.addrs:
                entry.addrs.remove(addr)
            entry.addrs.insert(0, addr)
        del entry.addrs[MDNS_MAX_ADDRS_PER_PEER:]
        entry.last_seen = now
        self._peers[peer] = entry
        return new

    def take_dial(self, peer: PeerId, now: float) -> bool:
        """True (and remember the attempt) if ``peer`` may be dialled now."""
        entry = self._peers.get(peer)
        if entry is None:
            return False
        if entry.last_dial is not None and now - entry.last_dial < self.redial_interval:
            return False
        entry.last_dial = now
        return True


class MdnsCore:
    """Decides what to answer and what was discovered; the driver owns sockets and clocks."""

    def __init__(
        self,
        peer_id: PeerId,
        *,
        peer_name: str | None = None,
        ttl: int = MDNS_RECORD_TTL,
        min_response_interval: float = MDNS_MIN_RESPONSE_INTERVAL,
    ) -> None:
        self.peer_id = peer_id
        self.peer_name = peer_name or random_peer_name()
        self.instance: Name = (self.peer_name.encode("ascii"), *SERVICE_NAME)
        self.ttl = ttl
        self.min_response_interval = min_response_interval
        self._addrs: list[Multiaddr] = []
        self._last_multicast: float | None = None
        self._last_unicast: float | None = None

    def set_addrs(self, addrs: Iterable[Multiaddr]) -> None:
        """Our addresses; only announceable ones are kept, each with ``/p2p/<our PeerId>``."""
        out: list[Multiaddr] = []
        for addr in addrs:
            if announceable(addr):
                full = _addrs.with_peer(addr, self.peer_id)
                if full not in out:
                    out.append(full)
        self._addrs = out

    @property
    def addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    def query(self) -> bytes:
        return build_query()

    def response(self) -> bytes | None:
        """Our multicast response, or None with nothing to announce."""
        return build_response(self.peer_name, self._addrs, ttl=self.ttl)

    def announcement(self, now: float) -> bytes | None:
        """An unsolicited response (RFC 6762 s8.3), counted against the response rate limit."""
        if self._last_multicast is not None and (
            now - self._last_multicast < self.min_response_interval
        ):
            return None
        data = self.response()
        if data is not None:
            self._last_multicast = now
        return data

    def _known_answer(self, msg: Message) -> bool:
        return any(
            r.rtype == RRType.PTR
            and _is_service(r.name)
            and isinstance(r.data, PtrData)
            and same_name(r.data.target, self.instance)
            and r.ttl * 2 >= self.ttl
            for r in msg.answers
        )

    def handle_datagram(self, data: bytes, source_port: int, now: float) -> Handled:
        """Process one received datagram; undecodable input yields an empty ``Handled``."""
        try:
            msg = decode_message(data)
        except FileshareError:
            return Handled()
        if msg.is_response:
            if source_port != MDNS_PORT:
                return Handled()  # RFC 6762 s6: responses not from port 5353 are ignored
            return Handled(discovered=parse_response(msg, self.peer_id))
        if not is_find_all_query(msg) or not self._addrs or self._known_answer(msg):
            return Handled()
        if source_port != MDNS_PORT:
            if self._last_unicast is not None and (
                now - self._last_unicast < self.min_response_interval
            ):
                return Handled()
            questions = tuple(q for q in msg.questions if _is_service(q.name))
            reply = build_response(
                self.peer_name,
                self._addrs,
                ttl=min(self.ttl, LEGACY_UNICAST_TTL),
                ident=msg.id,
                questions=questions,
            )
            if reply is None:
                return Handled()
            self._last_unicast = now
            return Handled(reply=Reply(reply, unicast=True))
        at = now
        if self._last_multicast is not None:
            if self._last_multicast > now:
                return Handled()  # a deferred reply is already scheduled: it answers this too
            at = max(now, self._last_multicast + self.min_response_interval)
        reply = self.response()
        if reply is None:
            return Handled()
        self._last_multicast = at
        return Handled(reply=Reply(reply, at=at))
