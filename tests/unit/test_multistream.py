"""multistream-select: sans-io cores and the trio drivers, plus BufferedStream."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from fileshare.errors import ProtocolError
from fileshare.limits import MULTISTREAM_MAX_LINE, MULTISTREAM_MAX_ROUNDS
from fileshare.net.buffered import BufferedStream
from fileshare.net.multistream import (
    PROTOCOL_ID,
    MultistreamDialer,
    MultistreamListener,
    NegotiationError,
    NoCommonProtocol,
    encode_message,
    select_inbound,
    select_outbound,
)
from fileshare.wire.varint import encode_varint

HEADER = encode_message(PROTOCOL_ID)


def pair() -> tuple[BufferedStream, BufferedStream]:
    a, b = trio.testing.memory_stream_pair()
    return BufferedStream(a), BufferedStream(b)


def test_wire_format() -> None:
    assert encode_message("na") == b"\x03na\n"
    assert HEADER == b"\x13/multistream/1.0.0\n"
    with pytest.raises(ValueError):
        encode_message("a\nb")
    with pytest.raises(ValueError):
        encode_message("x" * MULTISTREAM_MAX_LINE)


async def test_negotiate_over_memory_streams() -> None:
    a, b = pair()
    results: dict[str, str] = {}

    async def listener() -> None:
        results["in"] = await select_inbound(b, {"/noise", "/yamux/1.0.0"})

    async with trio.open_nursery() as n:
        n.start_soon(listener)
        results["out"] = await select_outbound(a, ["/noise"])
    assert results == {"in": "/noise", "out": "/noise"}


async def test_na_fallback_to_second_protocol_and_leftover_kept() -> None:
    a, b = pair()
    results: dict[str, str] = {}

    async def listener() -> None:
        results["in"] = await select_inbound(b, lambda p: p == "/plain/2")
        await b.send_all(b"payload-after-echo")

    async with trio.open_nursery() as n:
        n.start_soon(listener)
        results["out"] = await select_outbound(a, ["/tls/1.0.0", "/plain/2"])
        assert await a.receive_exactly(18) == b"payload-after-echo"
    assert results == {"in": "/plain/2", "out": "/plain/2"}


async def test_nothing_in_common() -> None:
    a, b = pair()

    async def listener() -> None:
        with pytest.raises(NegotiationError):
            await select_inbound(b, ["/c"])

    async with trio.open_nursery() as n:
        n.start_soon(listener)
        with pytest.raises(NoCommonProtocol):
            await select_outbound(a, ["/a", "/b"])
        await a.aclose()


async def test_peer_closing_is_negotiation_error() -> None:
    a, b = pair()
    await b.aclose()
    with pytest.raises((NegotiationError, trio.BrokenResourceError)):
        await select_outbound(a, ["/a"])


async def test_over_real_loopback_socket() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: list[str] = []

    async def serve() -> None:
        s = BufferedStream(await listeners[0].accept())
        got.append(await select_inbound(s, ["/x/1"]))
        await s.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(serve)
        s = BufferedStream(await trio.open_tcp_stream("127.0.0.1", port))
        got.append(await select_outbound(s, ["/y", "/x/1"]))
        await s.aclose()
    await listeners[0].aclose()
    assert got == ["/x/1", "/x/1"]


# --- sans-io cores ---


def test_listener_core_pipelined_and_byte_by_byte() -> None:
    data = HEADER + encode_message("/nope") + encode_message("/yes") + b"rest"
    lst = MultistreamListener(["/yes"])
    assert lst.start() == HEADER
    out = b""
    for i in range(len(data)):
        if lst.done:
            break
        out += lst.receive_data(data[i : i + 1])
    assert lst.selected == "/yes"
    assert out == encode_message("na") + encode_message("/yes")
    assert lst.take_unconsumed() == b""  # fed byte by byte: nothing past the proposal yet
    lst2 = MultistreamListener(["/yes"])
    lst2.start()
    lst2.receive_data(data)
    assert lst2.take_unconsumed() == b"rest"


def test_listener_answers_ls_with_na() -> None:
    lst = MultistreamListener(["/a"])
    lst.start()
    assert lst.receive_data(HEADER + encode_message("ls")) == encode_message("na")
    assert not lst.done


def test_dialer_core() -> None:
    d = MultistreamDialer(["/a", "/b"])
    assert d.start() == HEADER + encode_message("/a")
    assert d.receive_data(HEADER) == b""
    assert d.receive_data(encode_message("na")) == encode_message("/b")
    assert d.receive_data(encode_message("/b") + b"xyz") == b""
    assert d.selected == "/b"
    assert d.take_unconsumed() == b"xyz"


def test_dialer_rejects_wrong_echo() -> None:
    d = MultistreamDialer(["/a"])
    d.start()
    with pytest.raises(NegotiationError):
        d.receive_data(HEADER + encode_message("/other"))


def _listener() -> MultistreamListener:
    lst = MultistreamListener(["/a"])
    lst.start()
    return lst


def test_bad_header() -> None:
    with pytest.raises(NegotiationError):
        _listener().receive_data(encode_message("/multistream/2.0.0"))
    d = MultistreamDialer(["/a"])
    d.start()
    with pytest.raises(NegotiationError):
        d.receive_data(encode_message("na"))


def test_bad_header_message_same_on_both_sides() -> None:
    d = MultistreamDialer(["/a"])
    d.start()
    for core in (_listener(), d):
        with pytest.raises(NegotiationError, match="peer does not speak multistream: '/a'"):
            core.receive_data(encode_message("/a"))


def test_call_order_checked_on_both_sides() -> None:
    for core in (MultistreamDialer(["/a"]), MultistreamListener(["/a"])):
        with pytest.raises(RuntimeError, match="call start"):
            core.receive_data(HEADER)
        core.start()
        with pytest.raises(RuntimeError, match="called twice"):
            core.start()
        core.receive_data(HEADER + encode_message("/a"))
        assert core.done and core.selected == "/a"
        with pytest.raises(RuntimeError, match="already finished"):
            core.receive_data(b"")


def test_listener_never_selects_reserved_ids() -> None:
    lst = MultistreamListener(lambda p: True)
    lst.start()
    data = HEADER + encode_message("na") + encode_message("ls") + encode_message(PROTOCOL_ID)
    assert lst.receive_data(data) == encode_message("na") * 3
    assert not lst.done


@pytest.mark.parametrize(
    "raw",
    [
        b"\x05hello",  # no newline at the end
        b"\x04\xff\xfe\xfd\n",  # not UTF-8
        b"\x00",  # empty message
        b"\x04a\nb\n",  # two lines in one message
        encode_varint(MULTISTREAM_MAX_LINE + 1),  # over-long, refused before the body arrives
        b"\x80\x00",  # non-minimal varint
        b"\xff" * 10,  # varint too long
    ],
)
def test_garbage_lines(raw: bytes) -> None:
    with pytest.raises(NegotiationError):
        _listener().receive_data(raw)
    with pytest.raises(NegotiationError):
        _listener().receive_data(HEADER + raw)


def test_line_at_the_limit_is_accepted() -> None:
    proto = "/" + "p" * (MULTISTREAM_MAX_LINE - 2)
    lst = MultistreamListener([proto])
    lst.start()
    lst.receive_data(HEADER + encode_message(proto))
    assert lst.selected == proto


def test_too_many_rounds() -> None:
    lst = _listener()
    data = HEADER + b"".join(encode_message(f"/p{i}") for i in range(MULTISTREAM_MAX_ROUNDS))
    assert lst.receive_data(data) == encode_message("na") * MULTISTREAM_MAX_ROUNDS
    with pytest.raises(NegotiationError):
        lst.receive_data(encode_message("/a"))
    with pytest.raises(ValueError):
        MultistreamDialer([f"/p{i}" for i in range(MULTISTREAM_MAX_ROUNDS + 1)])


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_listener_arbitrary_bytes_only_protocol_error(chunks: list[bytes]) -> None:
    lst = _listener()
    try:
        for chunk in chunks:
            if lst.done:
                break
            lst.receive_data(chunk)
    except ProtocolError:
        pass


@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_after_header_only_protocol_error(data: bytes, dialer: bool) -> None:
    core: MultistreamDialer | MultistreamListener
    core = MultistreamDialer(["/a"]) if dialer else MultistreamListener(["/a"])
    core.start()
    with contextlib.suppress(ProtocolError):
        core.receive_data(HEADER + data)


# --- BufferedStream ---


async def test_buffered_stream_exact_uvarint_unread_eof() -> None:
    a, b = trio.testing.memory_stream_pair()
    s = BufferedStream(b)
    await a.send_all(encode_varint(300) + b"hello world")
    assert await s.receive_uvarint() == 300
    assert await s.receive_exactly(5) == b"hello"
    s.unread(b"XY")
    assert await s.receive_some(3) == b"XY "
    assert await s.receive_exactly(5) == b"world"
    await a.send_all(b"\x80\x00")
    with pytest.raises(ProtocolError):
        await s.receive_uvarint()  # non-minimal
    await a.send_all(b"abc")
    await a.send_eof()
    with pytest.raises(ProtocolError, match="unexpected EOF"):
        await s.receive_exactly(4)
    assert await s.receive_some() == b"abc"  # kept after the error
    assert await s.receive_some() == b""
