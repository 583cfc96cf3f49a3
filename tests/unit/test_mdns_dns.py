"""mDNS: the DNS message codec (RFC 1035 / RFC 6762) and the sans-io discovery core."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import DecodeError, LimitExceeded
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.limits import (
    MDNS_MAX_ADDRS_PER_PEER,
    MDNS_MAX_MESSAGE,
    MDNS_MAX_POINTER_JUMPS,
    MDNS_MAX_RECORDS,
)
from fileshare.net.addrs import parse
from fileshare.net.host import open_host
from fileshare.protocols.mdns import (
    SERVICE_NAME,
    DiscoveryTable,
    MdnsCore,
    MdnsService,
    announceable,
    build_query,
    build_response,
    parse_response,
)
from fileshare.protocols.mdns.dns import (
    FLAG_AA,
    FLAG_QR,
    AaaaData,
    AData,
    Message,
    Name,
    PtrData,
    Question,
    RawData,
    Record,
    RRType,
    SrvData,
    TxtData,
    decode_message,
    encode_message,
    name,
    name_text,
    same_name,
)

# --- known byte vectors (built by hand from RFC 1035 s4.1 and RFC 6762 s18) ---------------------

SERVICE_WIRE = b"\x04_p2p\x04_udp\x05local\x00"

# "find all peers" query: id 0, flags 0, QDCOUNT 1; QTYPE PTR (12), QCLASS IN (1).
QUERY_VECTOR = (
    b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + SERVICE_WIRE + b"\x00\x0c\x00\x01"
)

TXT_STRING = b"dnsaddr=/ip4/198.18.0.1/tcp/4001/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
# Response: id 0, flags QR|AA (0x8400), ANCOUNT 1, ARCOUNT 1.
#  answer @12:  _p2p._udp.local PTR, class IN, TTL 120, rdata "abc" + pointer to 12 (0xc00c)
#  additional:  pointer to the rdata at offset 39 (0xc027) = abc._p2p._udp.local, TXT,
#               class IN with the cache-flush bit (0x8001), TTL 120, one character-string.
RESPONSE_VECTOR = (
    b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x01"
    + SERVICE_WIRE
    + b"\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x06"
    + b"\x03abc\xc0\x0c"
    + b"\xc0\x27\x00\x10\x80\x01\x00\x00\x00\x78"
    + (len(TXT_STRING) + 1).to_bytes(2, "big")
    + bytes([len(TXT_STRING)])
    + TXT_STRING
)
INSTANCE: Name = (b"abc", *SERVICE_NAME)


def test_name_helpers() -> None:
    assert name("_p2p._udp.local") == SERVICE_NAME == name("_p2p._udp.local.")
    assert name("") == ()
    assert name_text(SERVICE_NAME) == "_p2p._udp.local"
    assert same_name(name("_P2P._UDP.Local"), SERVICE_NAME)
    assert not same_name(name("_p2p._udp"), SERVICE_NAME)
    with pytest.raises(LimitExceeded):
        name("a" * 64 + ".local")
    with pytest.raises(LimitExceeded):
        name("a..b")
    with pytest.raises(LimitExceeded):
        name(".".join(["abcdefg"] * 40))  # 321 bytes on the wire


def test_query_vector() -> None:
    assert build_query() == QUERY_VECTOR
    msg = decode_message(QUERY_VECTOR)
    assert msg == Message(questions=(Question(SERVICE_NAME, RRType.PTR),))
    assert not msg.is_response and msg.opcode == 0


def test_response_vector_with_compression() -> None:
    msg = decode_message(RESPONSE_VECTOR)
    assert msg.is_response and msg.flags == FLAG_QR | FLAG_AA
    assert msg.answers == (Record(SERVICE_NAME, RRType.PTR, 120, PtrData(INSTANCE)),)
    assert msg.additionals == (
        Record(INSTANCE, RRType.TXT, 120, TxtData((TXT_STRING,)), cache_flush=True),
    )
    # our encoder compresses the same names the same way
    assert encode_message(msg) == RESPONSE_VECTOR


def test_rfc1035_compression_example() -> None:
    """RFC 1035 s4.1.4: F.ISI.ARPA, FOO.F.ISI.ARPA (pointer to F.ISI.ARPA), ARPA (pointer)."""
    header = b"\x00\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00"
    q1 = b"\x01F\x03ISI\x04ARPA\x00" + b"\x00\x01\x00\x01"  # at 12; ARPA label at 18
    q2 = b"\x03FOO\xc0\x0c" + b"\x00\x01\x00\x01"
    q3 = b"\xc0\x12" + b"\x00\x01\x00\x01"
    msg = decode_message(header + q1 + q2 + q3)
    assert [q.name for q in msg.questions] == [
        (b"F", b"ISI", b"ARPA"),
        (b"FOO", b"F", b"ISI", b"ARPA"),
        (b"ARPA",),
    ]
    assert encode_message(msg) == header + q1 + q2 + q3


def test_other_record_types_vector() -> None:
    header = b"\x00\x00\x84\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    host = b"\x04host\x05local\x00"  # at 12
    a = host + b"\x00\x01\x00\x01\x00\x00\x00\x0a\x00\x04\xc6\x12\x00\x01"
    aaaa = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x0a\x00\x10" + bytes(15) + b"\x01"
    srv = b"\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x0a\x00\x08\x00\x0a\x00\x01\x0f\xa1\xc0\x0c"
    raw = b"\xc0\x0c\x00\x63\x00\x01\x00\x00\x00\x0a\x00\x02\xbe\xef"
    msg = decode_message(header + a + aaaa + srv + raw)
    hostname = (b"host", b"local")
    assert [r.data for r in msg.answers] == [
        AData(ipaddress.IPv4Address("198.18.0.1")),
        AaaaData(ipaddress.IPv6Address("::1")),
        SrvData(10, 1, 4001, hostname),
        RawData(b"\xbe\xef"),
    ]
    assert all(r.name == hostname and r.ttl == 10 for r in msg.answers)


HEADER_1Q = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        HEADER_1Q,  # question missing
        HEADER_1Q + b"\xc0\x0c\x00\x0c\x00\x01",  # pointer to itself (loop)
        HEADER_1Q + b"\x01a\xc0\x0c\x00\x0c\x00\x01",  # pointer back into the same name
        HEADER_1Q + b"\xc0\x20\x00\x0c\x00\x01" + b"\x00" * 20,  # forward pointer
        HEADER_1Q + b"\xc0",  # truncated pointer
        HEADER_1Q + b"\x40abc\x00\x00\x0c\x00\x01",  # reserved label type 01
        HEADER_1Q + b"\x80abc\x00\x00\x0c\x00\x01",  # reserved label type 10
        HEADER_1Q + b"\x05ab\x00",  # label past the end
        HEADER_1Q + b"\x00\x00\x0c\x00\x01\x00",  # trailing byte
        HEADER_1Q + b"\x00\x00\x0c",  # truncated question
        # an A record with 3 bytes of rdata
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00"
        b"\x00\x03\x01\x02\x03",
        # rdlength past the end
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x10\x00\x01\x00\x00\x00\x00"
        b"\x00\x09\x01a",
        # TXT string longer than its rdata
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x10\x00\x01\x00\x00\x00\x00"
        b"\x00\x02\x05a",
        # PTR whose name runs past its rdlength (into the next bytes)
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x00"
        b"\x00\x02\x01a\x00",
        # PTR with trailing bytes after its name
        b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x00"
        b"\x00\x03\x00\xff\xff",
    ],
)
def test_malformed_vectors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


def test_pointer_jump_bound_and_long_names() -> None:
    # One raw record whose rdata is a chain of backward pointers ending at a root label, then a
    # question... a record whose owner name enters the chain at its far end.
    jumps = MDNS_MAX_POINTER_JUMPS + 5
    rdata_start = 12 + 1 + 10  # root owner name, fixed fields
    rdata = bytearray(b"\x00")
    for i in range(jumps):
        target = rdata_start + (0 if i == 0 else 1 + 2 * (i - 1))
        rdata += (0xC000 | target).to_bytes(2, "big")
    last = rdata_start + 1 + 2 * (jumps - 1)
    header = b"\x00\x00\x84\x00\x00\x00\x00\x02\x00\x00\x00\x00"
    rec1 = b"\x00\x00\x63\x00\x01\x00\x00\x00\x00" + len(rdata).to_bytes(2, "big") + rdata
    rec2 = (0xC000 | last).to_bytes(2, "big") + b"\x00\x63\x00\x01\x00\x00\x00\x00\x00\x00"
    with pytest.raises(DecodeError, match="pointers"):
        decode_message(header + rec1 + rec2)
    # within the bound the same chain decodes (to the root name)
    short = (0xC000 | (rdata_start + 1 + 2 * 5)).to_bytes(2, "big")
    rec2 = short + b"\x00\x63\x00\x01\x00\x00\x00\x00\x00\x00"
    assert decode_message(header + rec1 + rec2).answers[1].name == ()
    # a name of more than 255 bytes assembled through pointers
    label = b"\x3f" + b"x" * 63
    chunk = label + label + label + b"\x00"  # 193 bytes at 12
    qs = chunk + b"\x00\x01\x00\x01" + label + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    data = b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00" + qs
    with pytest.raises(DecodeError):
        decode_message(data)


def test_limits() -> None:
    with pytest.raises(DecodeError, match="exceeds"):
        decode_message(b"\x00" * (MDNS_MAX_MESSAGE + 1))
    too_many = MDNS_MAX_RECORDS + 1
    with pytest.raises(DecodeError, match="more than"):
        decode_message(b"\x00\x00\x00\x00" + too_many.to_bytes(2, "big") + b"\x00" * 6)
    with pytest.raises(LimitExceeded):
        encode_message(Message(answers=(Record((), RRType.TXT, 1, TxtData((b"x" * 256,))),)))
    with pytest.raises(LimitExceeded):
        encode_message(Message(answers=(Record((), RRType.A, -1, RawData(b"")),)))
    with pytest.raises(LimitExceeded):
        encode_message(Message(questions=(Question((), 1, qclass=0x8000),)))


# --- property tests -----------------------------------------------------------------------------

labels = st.binary(min_size=1, max_size=63)
names = st.lists(labels, max_size=5).map(tuple).filter(lambda n: sum(len(x) + 1 for x in n) < 255)
u16 = st.integers(0, 0xFFFF)
ttls = st.integers(0, 0xFFFFFFFF)
classes = st.integers(0, 0x7FFF)
_KNOWN = {int(t) for t in RRType if t != RRType.ANY}


def _records() -> st.SearchStrategy[Record]:
    def rec(
        rtype: st.SearchStrategy[int], data: st.SearchStrategy[object]
    ) -> st.SearchStrategy[Record]:
        return st.builds(Record, names, rtype, ttls, data, classes, st.booleans())

    return st.one_of(
        rec(st.just(int(RRType.PTR)), st.builds(PtrData, names)),
        rec(
            st.just(int(RRType.TXT)),
            st.builds(TxtData, st.lists(st.binary(max_size=255), max_size=4).map(tuple)),
        ),
        rec(st.just(int(RRType.A)), st.builds(AData, st.ip_addresses(v=4))),
        rec(st.just(int(RRType.AAAA)), st.builds(AaaaData, st.ip_addresses(v=6))),
        rec(st.just(int(RRType.SRV)), st.builds(SrvData, u16, u16, u16, names)),
        rec(u16.filter(lambda t: t not in _KNOWN), st.builds(RawData, st.binary(max_size=40))),
    )


messages = st.builds(
    Message,
    u16,
    u16,
    st.lists(st.builds(Question, names, u16, classes, st.booleans()), max_size=3).map(tuple),
    st.lists(_records(), max_size=4).map(tuple),
    st.lists(_records(), max_size=2).map(tuple),
    st.lists(_records(), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = encode_message(msg)
    if len(data) <= MDNS_MAX_MESSAGE:
        assert decode_message(data) == msg


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([QUERY_VECTOR, RESPONSE_VECTOR]), st.data())
def test_mutated_vectors_raise_only_decode_error(base: bytes, data: st.DataObject) -> None:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    for candidate in (bytes(buf), bytes(buf[:cut])):
        try:
            msg = decode_message(candidate)
        except DecodeError:
            continue
        parse_response(msg)  # must not raise either
        MdnsCore(_peer()).handle_datagram(candidate, 5353, 0.0)


# --- the discovery core -------------------------------------------------------------------------


def _peer() -> PeerId:
    return PeerId.from_public_key(PrivateKey.generate().public_key())


def test_announceable() -> None:
    assert announceable(parse("/ip4/198.18.0.1/tcp/4001"))
    assert announceable(parse("/ip6/2001:db8::1/tcp/4001"))
    assert announceable(parse("/dns4/example.com/tcp/4001"))
    assert announceable(parse("/ip4/169.254.1.1/tcp/4001"))
    for text in (
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/tcp/4001",
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/224.0.0.251/tcp/4001",
        "/ip6/fe80::1/tcp/4001",
        "/ip4/198.18.0.1/udp/4001",
    ):
        assert not announceable(parse(text)), text


def test_query_answered_and_parsed_by_another_core() -> None:
    a, b = _peer(), _peer()
    core_a, core_b = MdnsCore(a), MdnsCore(b)
    assert len(core_a.peer_name) == 32 and core_a.peer_name.isalnum()
    assert core_a.peer_name == core_a.peer_name.lower()
    core_a.set_addrs(
        [
            parse("/ip4/127.0.0.1/tcp/4001"),
            parse("/ip4/198.18.0.1/tcp/4001"),
            parse("/ip6/2001:db8::1/tcp/4001"),
        ]
    )
    assert [str(x) for x in core_a.addrs] == [
        f"/ip4/198.18.0.1/tcp/4001/p2p/{a}",
        f"/ip6/2001:db8::1/tcp/4001/p2p/{a}",
    ]
    handled = core_a.handle_datagram(core_b.query(), 5353, 10.0)
    assert handled.reply is not None and not handled.reply.unicast
    msg = decode_message(handled.reply.data)
    assert msg.flags == FLAG_QR | FLAG_AA and msg.id == 0 and not msg.questions
    assert msg.answers[0].data == PtrData(core_a.instance)
    txt = msg.additionals[0]
    assert same_name(txt.name, core_a.instance) and isinstance(txt.data, TxtData)
    assert txt.data.strings == tuple(b"dnsaddr=" + str(x).encode() for x in core_a.addrs)
    got = core_b.handle_datagram(handled.reply.data, 5353, 10.0)
    assert got.reply is None
    assert got.discovered == {
        a: [parse("/ip4/198.18.0.1/tcp/4001"), parse("/ip6/2001:db8::1/tcp/4001")]
    }
    # our own response is not a discovery; responses not from port 5353 are ignored
    assert core_a.handle_datagram(handled.reply.data, 5353, 10.0).discovered == {}
    assert core_b.handle_datagram(handled.reply.data, 40000, 10.0).discovered == {}


def test_rate_limit_known_answer_and_loopback_only() -> None:
    core = MdnsCore(_peer(), min_response_interval=1.0)
    query = build_query()
    assert core.handle_datagram(query, 5353, 0.0).reply is None  # nothing to announce yet
    core.set_addrs([parse("/ip4/127.0.0.1/tcp/1"), parse("/ip6/::1/tcp/1")])
    assert core.response() is None
    assert core.handle_datagram(query, 5353, 0.0).reply is None
    core.set_addrs([parse("/ip4/198.18.0.1/tcp/1")])
    first = core.handle_datagram(query, 5353, 5.0).reply
    assert first is not None and first.at == 5.0
    deferred = core.handle_datagram(query, 5353, 5.5).reply  # inside the 1 s window
    assert deferred is not None and deferred.at == 6.0
    assert core.handle_datagram(query, 5353, 5.7).reply is None  # shares the deferred one
    assert core.announcement(5.9) is None
    later = core.handle_datagram(query, 5353, 7.5).reply
    assert later is not None and later.at == 7.5
    assert core.announcement(9.0) is not None
    assert core.handle_datagram(query, 5353, 9.2).reply is not None
    known = Message(
        questions=(Question(SERVICE_NAME, RRType.PTR),),
        answers=(Record(SERVICE_NAME, RRType.PTR, core.ttl, PtrData(core.instance)),),
    )
    assert core.handle_datagram(encode_message(known), 5353, 20.0).reply is None
    # other questions are not ours to answer
    other = Message(questions=(Question(name("_http._tcp.local"), RRType.PTR),))
    assert core.handle_datagram(encode_message(other), 5353, 30.0).reply is None
    assert core.handle_datagram(b"\xff\x00garbage", 5353, 40.0).reply is None


def test_legacy_unicast_query() -> None:
    core = MdnsCore(_peer())
    core.set_addrs([parse("/ip4/198.18.0.1/tcp/1")])
    query = Message(id=0x1234, questions=(Question(SERVICE_NAME, RRType.PTR),))
    handled = core.handle_datagram(encode_message(query), 51000, 0.0)
    assert handled.reply is not None and handled.reply.unicast
    reply = decode_message(handled.reply.data)
    assert reply.id == 0x1234 and reply.questions == query.questions
    assert all(r.ttl == 10 for r in reply.records())


def _response(instance: Name, strings: list[bytes], *, ptr: bool = True, ttl: int = 120) -> Message:
    answers = (Record(SERVICE_NAME, RRType.PTR, ttl, PtrData(instance)),) if ptr else ()
    return Message(
        flags=FLAG_QR | FLAG_AA,
        answers=answers,
        additionals=(Record(instance, RRType.TXT, ttl, TxtData(tuple(strings))),),
    )


def test_parse_response_filters() -> None:
    peer, other = _peer(), _peer()
    inst = (b"Zz9", *SERVICE_NAME)
    good = f"dnsaddr=/ip4/198.18.0.2/tcp/4001/p2p/{peer}".encode()
    assert parse_response(_response(inst, [good])) == {peer: [parse("/ip4/198.18.0.2/tcp/4001")]}
    assert parse_response(_response(inst, [good], ptr=False)) == {}
    assert parse_response(_response(inst, [good], ttl=0)) == {}
    assert parse_response(_response(inst, [good]), own=peer) == {}
    bad = [
        b"dnsaddr=/ip4/198.18.0.2/tcp/4001",  # no /p2p
        f"dnsaddr=/ip4/198.18.0.2/udp/4001/quic-v1/p2p/{peer}".encode(),  # not TCP
        b"dnsaddr=not a multiaddr",
        b"dnsaddr=\xff\xfe",
        f"other=/ip4/198.18.0.2/tcp/4001/p2p/{peer}".encode(),
        b"",
    ]
    assert parse_response(_response(inst, bad)) == {}
    many = [f"dnsaddr=/ip4/198.18.1.{i}/tcp/4001/p2p/{other}".encode() for i in range(40)]
    found = parse_response(_response(inst, [good, *many]))
    assert len(found[other]) == MDNS_MAX_ADDRS_PER_PEER and len(found[peer]) == 1
    # a TXT record of another instance than the PTR names is ignored
    msg = _response(inst, [good])
    stray = Record((b"stray", *SERVICE_NAME), RRType.TXT, 120, TxtData((good,)))
    msg = Message(flags=msg.flags, answers=msg.answers, additionals=(stray,))
    assert parse_response(msg) == {}
    # a query is never parsed as a response
    assert parse_response(Message(answers=msg.answers, additionals=(stray,))) == {}


def test_build_response_fits_size_and_skips_long_addrs() -> None:
    peer = _peer()
    addrs = [parse(f"/ip4/198.18.0.{i}/tcp/4001/p2p/{peer}") for i in range(1, 15)]
    data = build_response("p" * 32, addrs, max_size=400)
    assert data is not None and len(data) <= 400
    txt = decode_message(data).additionals[0].data
    assert isinstance(txt, TxtData) and 1 <= len(txt.strings) < len(addrs)
    assert build_response("p" * 32, addrs, max_size=50) is None
    long_dns = parse(f"/dns4/{'a' * 60}.{'b' * 60}.{'c' * 60}.example/tcp/1/p2p/{peer}")
    assert build_response("p" * 32, [long_dns]) is None


def test_discovery_table_bounds_and_redial() -> None:
    table = DiscoveryTable(max_peers=3, redial_interval=60.0)
    peers = [_peer() for _ in range(5)]
    addr = parse("/ip4/198.18.0.1/tcp/1")
    assert all(table.observe(p, [addr], float(i)) for i, p in enumerate(peers))
    assert table.peers() == peers[2:] and len(table) == 3
    assert not table.observe(peers[2], [addr], 10.0)
    assert table.peers() == [peers[3], peers[4], peers[2]]
    assert table.take_dial(peers[2], 10.0)
    assert not table.take_dial(peers[2], 69.0)
    assert table.take_dial(peers[2], 70.0)
    assert not table.take_dial(peers[0], 10.0)  # evicted


async def test_service_stays_dormant_on_loopback_and_when_disabled() -> None:
    key = PrivateKey.generate()
    async with open_host(key, listen=[parse("/ip4/127.0.0.1/tcp/0")]) as host:
        on = MdnsService(host, interval=0.2)
        off = MdnsService(host, enabled=False)
        await trio.sleep(1.2)
        assert not on.active and not off.active
        assert on.interfaces == [] and on.discovered() == []
