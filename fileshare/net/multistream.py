"""multistream-select 1.0: agree on a protocol id over a fresh connection or stream.

Every message is ``uvarint(len) || utf8-text || "\\n"`` (the length includes the newline). Both sides
send the header ``/multistream/1.0.0``; the dialer proposes protocol ids in order, the listener
echoes one it supports or answers ``na``. The cores (``MultistreamDialer``, ``MultistreamListener``)
are sans-io; ``select_outbound`` / ``select_inbound`` drive them over a ``BufferedStream``. Bytes
that arrive after the agreement belong to the next protocol and are pushed back into the stream.
Timeouts are the caller's cancel scope.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from ..errors import DecodeError, ProtocolError
from ..limits import MULTISTREAM_MAX_LINE, MULTISTREAM_MAX_ROUNDS
from ..wire.varint import encode_varint, try_decode_varint
from .buffered import BufferedStream

PROTOCOL_ID = "/multistream/1.0.0"
NA = "na"
LS = "ls"
_READ_SIZE = 4096


class NegotiationError(ProtocolError):
    """multistream-select failed: malformed message, limit exceeded, or no common protocol."""


class NoCommonProtocol(NegotiationError):
    """The peers support no protocol in common."""


def encode_message(text: str) -> bytes:
    """One multistream message: ``uvarint(len) || text || "\\n"``."""
    _check_protocol_id(text)
    body = text.encode("utf-8") + b"\n"
    return encode_varint(len(body)) + body


def _check_protocol_id(text: str) -> None:
    if not text or "\n" in text or len(text.encode("utf-8")) + 1 > MULTISTREAM_MAX_LINE:
        raise ValueError(f"invalid protocol id {text[:80]!r}")


class _LineReader:
    """Splits incoming bytes into validated multistream lines."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_line(self) -> str | None:
        """The next complete line without its newline, or None if more bytes are needed."""
        try:
            head = try_decode_varint(self._buf, 0)
        except DecodeError as exc:
            raise NegotiationError(f"bad multistream length prefix: {exc}") from exc
        if head is None:
            return None
        length, start = head
        if length == 0:
            raise NegotiationError("empty multistream message")
        if length > MULTISTREAM_MAX_LINE:
            raise NegotiationError(f"multistream message of {length} bytes exceeds the limit")
        if len(self._buf) - start < length:
            return None
        body = bytes(self._buf[start : start + length])
        del self._buf[: start + length]
        if body[-1:] != b"\n":
            raise NegotiationError("multistream message does not end with a newline")
        try:
            text = body[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NegotiationError("multistream message is not valid UTF-8") from exc
        if "\n" in text:
            raise NegotiationError("multistream message contains more than one line")
        return text

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _Negotiator:
    """What both sides share: the header, line framing, call-order checks and leftover bytes.

    A subclass adds ``_opening()`` (sent after the header by ``start()``) and ``_on_line(line)``
    (one message after the peer's header -> bytes to send; it may set ``selected``).
    """

    def __init__(self) -> None:
        self._reader = _LineReader()
        self._got_header = False
        self._started = False
        self.selected: str | None = None

    @property
    def done(self) -> bool:
        return self.selected is not None

    def start(self) -> bytes:
        """The opening bytes, which may be sent before anything arrives."""
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        return encode_message(PROTOCOL_ID) + self._opening()

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        if not self._started:
            raise RuntimeError("call start() first")
        if self.selected is not None:
            raise RuntimeError("negotiation already finished")
        self._reader.feed(data)
        out: list[bytes] = []
        while self.selected is None:
            line = self._reader.next_line()
            if line is None:
                break
            if self._got_header:
                out.append(self._on_line(line))
            elif line == PROTOCOL_ID:
                self._got_header = True
            else:
                raise NegotiationError(f"peer does not speak multistream: {line[:80]!r}")
        return b"".join(out)

    def take_unconsumed(self) -> bytes:
        """Bytes received after the agreement: they belong to the selected protocol."""
        return self._reader.take()

    def _opening(self) -> bytes:
        return b""

    def _on_line(self, line: str) -> bytes:
        raise NotImplementedError


class MultistreamDialer(_Negotiator):
    """Sans-io initiator: ``start()`` -> bytes to send; ``receive_data(b)`` -> bytes to send.

    The header and the first proposal go out together. ``selected`` is set once the listener
    echoes a proposal; ``NoCommonProtocol`` is raised when it has refused them all.
    """

    def __init__(self, protocols: Sequence[str]) -> None:
        if not protocols:
            raise ValueError("no protocols to propose")
        if len(protocols) > MULTISTREAM_MAX_ROUNDS:
            raise ValueError(f"more than {MULTISTREAM_MAX_ROUNDS} protocols to propose")
        for p in protocols:
            _check_protocol_id(p)
        super().__init__()
        self._protocols = list(protocols)
        self._index = 0

    def _opening(self) -> bytes:
        return encode_message(self._protocols[0])

    def _on_line(self, line: str) -> bytes:
        proposed = self._protocols[self._index]
        if line == proposed:
            self.selected = proposed
            return b""
        if line != NA:
            raise NegotiationError(f"unexpected multistream reply {line[:80]!r}")
        self._index += 1
        if self._index >= len(self._protocols):
            raise NoCommonProtocol(f"peer supports none of {', '.join(self._protocols)}")
        return encode_message(self._protocols[self._index])


class MultistreamListener(_Negotiator):
    """Sans-io responder: echoes the first supported proposal, answers ``na`` to the rest.

    ``supported`` is a collection of protocol ids or a predicate. ``ls`` is answered with ``na``.
    """

    def __init__(self, supported: Callable[[str], bool] | Collection[str]) -> None:
        super().__init__()
        if callable(supported):
            self._supports: Callable[[str], bool] = supported
        else:
            ids = frozenset(supported)
            self._supports = ids.__contains__
        self._rounds = 0

    def _on_line(self, line: str) -> bytes:
        self._rounds += 1
        if self._rounds > MULTISTREAM_MAX_ROUNDS:
            raise NegotiationError(f"more than {MULTISTREAM_MAX_ROUNDS} proposals")
        if line not in (NA, LS, PROTOCOL_ID) and self._supports(line):
            self.selected = line
            return encode_message(line)
        return encode_message(NA)


async def _drive(stream: BufferedStream, core: _Negotiator) -> str:
    await stream.send_all(core.start())
    while core.selected is None:
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            raise NegotiationError("connection closed during multistream negotiation")
        out = core.receive_data(data)
        if out:
            await stream.send_all(out)
    stream.unread(core.take_unconsumed())
    return core.selected


async def select_outbound(stream: BufferedStream, protocols: Sequence[str]) -> str:
    """Propose ``protocols`` in order; return the one the peer accepted."""
    return await _drive(stream, MultistreamDialer(protocols))


async def select_inbound(
    stream: BufferedStream, supported: Callable[[str], bool] | Collection[str]
) -> str:
    """Answer the peer's proposals; return the first supported one (already echoed)."""
    return await _drive(stream, MultistreamListener(supported))
