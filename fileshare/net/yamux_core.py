"""Sans-io yamux 1.0.0 core (spec: shared/specs/libp2p/yamux_README.md).

``YamuxSession`` takes received bytes (``feed``) and returns events; commands (``open_stream``,
``send_data``, ``consumed`` ...) return the bytes to write. Frames the session must send on its own
(ping replies, RSTs for unknown streams, GoAway on a protocol error) collect in ``data_to_send()``.
No sockets, clocks or tasks: callers pass ``now`` where window auto-tuning needs a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FileshareError, LimitExceeded, ProtocolError
from ..limits import (
    YAMUX_INITIAL_WINDOW,
    YAMUX_MAX_FRAME_PAYLOAD,
    YAMUX_MAX_STREAMS,
    YAMUX_MAX_UNACKED_INBOUND,
    YAMUX_MAX_WINDOW,
    YAMUX_WINDOW_GROWTH_RTTS,
)

YAMUX_PROTOCOL_ID = "/yamux/1.0.0"

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = 12
VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

_U32 = 0xFFFFFFFF
_SPEC_WINDOW = 256 * 1024  # both sides assume this window before any update (spec)


class YamuxError(ProtocolError):
    """The peer broke the yamux protocol; the session is over (a GoAway is queued)."""


class StreamReset(FileshareError):
    """The stream was reset (by the peer, by us, or because the connection closed)."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN); accept it with ``YamuxSession.accept_stream``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Payload bytes for a stream (a frame may arrive as several of these)."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN): no more data will come."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWasReset:
    """The peer reset the stream (RST), or sent data after its FIN (we reset it)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SendWindowUpdated:
    """The peer granted more send window for the stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """Answer to one of our pings, carrying the opaque value we sent."""

    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer ended the session with ``code`` (0 normal, 1 protocol error, 2 internal)."""

    code: int


Event = (
    StreamOpened
    | DataReceived
    | StreamEnded
    | StreamWasReset
    | SendWindowUpdated
    | PongReceived
    | GoAwayReceived
)


def encode_header(typ: int, flags: int, stream_id: int, length: int) -> bytes:
    """Pack one 12-byte yamux header."""
    return HEADER.pack(VERSION, typ, flags, stream_id, length)


class _Stream:
    __slots__ = (
        "acked",
        "epoch",
        "inbound",
        "local_fin",
        "recv_credit",
        "recv_window",
        "remote_fin",
        "send_window",
        "unacked_consumed",
    )

    def __init__(self, *, inbound: bool, recv_window: int, now: float) -> None:
        self.inbound = inbound
        self.acked = False  # inbound: we sent ACK; outbound: the peer answered
        self.send_window = _SPEC_WINDOW
        self.recv_window = recv_window  # current receive window size (grows)
        self.recv_credit = _SPEC_WINDOW  # bytes the peer may still send us
        self.unacked_consumed = 0  # bytes the app consumed that we have not credited back
        self.epoch = now
        self.local_fin = False
        self.remote_fin = False


class YamuxSession:
    """One yamux session. ``is_initiator`` (client) opens odd stream ids, the responder even ones."""

    def __init__(
        self,
        *,
        is_initiator: bool,
        initial_window: int = YAMUX_INITIAL_WINDOW,
        max_window: int = YAMUX_MAX_WINDOW,
        max_streams: int = YAMUX_MAX_STREAMS,
        max_unacked_inbound: int = YAMUX_MAX_UNACKED_INBOUND,
        max_frame_payload: int = YAMUX_MAX_FRAME_PAYLOAD,
    ) -> None:
        if not _SPEC_WINDOW <= initial_window <= max_window <= _U32:
            raise ValueError("need 256 KiB <= initial_window <= max_window < 4 GiB")
        self.is_initiator = is_initiator
        self.rtt = 0.0  # seconds, set by the driver from pings; 0 disables window growth
        self._initial_window = initial_window
        self._max_window = max_window
        self._max_streams = max_streams
        self._max_unacked_inbound = max_unacked_inbound
        self._max_frame_payload = max_frame_payload
        self._next_id = 1 if is_initiator else 2
        self._streams: dict[int, _Stream] = {}
        self._unacked_inbound = 0
        self._unacked_outbound = 0
        self._out: list[bytes] = []
        self._hdr = bytearray()  # a partial header carried between feeds
        self._payload_left = 0  # bytes of the current data frame still to come
        self._payload_sid = 0  # 0: discard the payload
        self._payload_fin = False
        self._terminated = False
        self.goaway_sent = False
        self.goaway_received = False
        self.rejected_streams = 0  # inbound streams we reset because of a limit

    # --- introspection ---
    @property
    def terminated(self) -> bool:
        """True after a protocol error, a GoAway received, or ``go_away``."""
        return self._terminated or self.goaway_received

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def unacked_inbound(self) -> int:
        return self._unacked_inbound

    @property
    def unacked_outbound(self) -> int:
        return self._unacked_outbound

    @property
    def pending_payload(self) -> int:
        """Bytes of the current data frame not received yet (0 at a frame boundary)."""
        return self._payload_left

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.send_window if st is not None else 0

    def recv_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.recv_window if st is not None else 0

    def data_to_send(self) -> bytes:
        """Frames the session queued on its own (pongs, RSTs, GoAway); empties the queue."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # --- commands ---
    def open_stream(self, now: float = 0.0) -> tuple[int, bytes]:
        """Allocate an outbound stream; returns its id and the SYN frame."""
        if self.terminated or self.goaway_sent:
            raise YamuxError("session is closed")
        if len(self._streams) >= self._max_streams:
            raise LimitExceeded(f"yamux: {len(self._streams)} streams open (limit)")
        sid = self._next_id
        if sid > _U32:
            raise YamuxError("yamux stream ids exhausted")
        self._next_id += 2
        self._streams[sid] = _Stream(inbound=False, recv_window=self._initial_window, now=now)
        self._unacked_outbound += 1
        return sid, self._grant(self._streams[sid], sid, FLAG_SYN)

    def accept_stream(self, stream_id: int, now: float = 0.0) -> bytes:
        """Acknowledge an inbound stream (ACK frame); b"" if it is gone or already acked."""
        st = self._streams.get(stream_id)
        if st is None or not st.inbound or st.acked:
            return b""
        st.acked = True
        st.epoch = now
        self._unacked_inbound -= 1
        return self._grant(st, stream_id, FLAG_ACK)

    def _grant(self, st: _Stream, sid: int, flag: int) -> bytes:
        delta = st.recv_window - _SPEC_WINDOW
        st.recv_credit += delta
        return HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, flag, sid, delta)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """One data frame; ``len(data)`` must not exceed ``send_window(stream_id)``."""
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamReset(f"yamux stream {stream_id} is not open")
        if st.local_fin:
            raise YamuxError(f"yamux stream {stream_id} already sent FIN")
        n = len(data)
        if n > st.send_window:
            raise YamuxError(f"{n} bytes exceed the send window {st.send_window}")
        st.send_window -= n
        return HEADER.pack(VERSION, TYPE_DATA, 0, stream_id, n) + data

    def close_stream(self, stream_id: int) -> bytes:
        """Half-close our side (FIN); b"" if already closed or gone."""
        st = self._streams.get(stream_id)
        if st is None or st.local_fin:
            return b""
        st.local_fin = True
        if st.remote_fin:
            self._remove(stream_id, st)
        return HEADER.pack(VERSION, TYPE_DATA, FLAG_FIN, stream_id, 0)

    def reset_stream(self, stream_id: int) -> bytes:
        """Reset the stream (RST) and forget it; b"" if it is already gone."""
        st = self._streams.get(stream_id)
        if st is None:
            return b""
        self._remove(stream_id, st)
        return HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)

    def consumed(self, stream_id: int, n: int, now: float = 0.0) -> bytes:
        """The app took ``n`` bytes; returns a window update once half the window is consumed.

        Auto-tuning: if the last half window was consumed faster than the round trip allows
        (``YAMUX_WINDOW_GROWTH_RTTS`` x RTT for a whole window), the window doubles up to the max.
        """
        st = self._streams.get(stream_id)
        if st is None or st.remote_fin:
            return b""
        pending = st.unacked_consumed + n
        window = st.recv_window
        if pending < window >> 1:
            st.unacked_consumed = pending
            return b""
        delta = pending
        rtt = self.rtt
        if (
            rtt > 0.0
            and window < self._max_window
            and 2.0 * (now - st.epoch) < YAMUX_WINDOW_GROWTH_RTTS * rtt
        ):
            grown = min(window * 2, self._max_window)
            delta += grown - window
            st.recv_window = grown
        st.epoch = now
        st.unacked_consumed = 0
        st.recv_credit += delta
        return HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, 0, stream_id, delta)

    def ping(self, opaque: int) -> bytes:
        return HEADER.pack(VERSION, TYPE_PING, FLAG_SYN, 0, opaque & _U32)

    def go_away(self, code: int = GO_AWAY_NORMAL) -> bytes:
        """End the session: new inbound streams are refused from now on."""
        self.goaway_sent = True
        return HEADER.pack(VERSION, TYPE_GO_AWAY, 0, 0, code)

    # --- input ---
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse received bytes. Raises ``YamuxError`` (and queues GoAway) on a protocol error."""
        if self._terminated:
            raise YamuxError("yamux session already failed")
        if self.goaway_received:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        events: list[Event] = []
        try:
            self._feed(data, events)
        except YamuxError:
            self._terminated = True
            self._out.append(self.go_away(GO_AWAY_PROTOCOL_ERROR))
            raise
        return events

    def _feed(self, data: bytes, events: list[Event]) -> None:
        n = len(data)
        pos = 0
        hdr = self._hdr
        while pos < n:
            left = self._payload_left
            if left:
                take = n - pos
                if take > left:
                    take = left
                sid = self._payload_sid
                if sid:
                    chunk = data if take == n else data[pos : pos + take]
                    events.append(DataReceived(sid, chunk))
                pos += take
                left -= take
                self._payload_left = left
                if not left:
                    self._end_payload(events)
                continue
            if hdr:
                need = HEADER_SIZE - len(hdr)
                hdr += data[pos : pos + need]
                pos += need
                if len(hdr) < HEADER_SIZE:
                    return
                version, typ, flags, sid, length = HEADER.unpack(hdr)
                hdr.clear()
            elif n - pos >= HEADER_SIZE:
                version, typ, flags, sid, length = HEADER.unpack_from(data, pos)
                pos += HEADER_SIZE
            else:
                hdr += data[pos:]
                return
            if version != VERSION:
                raise YamuxError(f"yamux: unsupported version {version}")
            if typ == TYPE_DATA:
                self._on_data(flags, sid, length, events)
            elif typ == TYPE_WINDOW_UPDATE:
                self._on_window_update(flags, sid, length, events)
            elif typ == TYPE_PING:
                if sid != 0:
                    raise YamuxError(f"yamux: ping on stream {sid}")
                if flags & FLAG_SYN:
                    self._out.append(HEADER.pack(VERSION, TYPE_PING, FLAG_ACK, 0, length))
                elif flags & FLAG_ACK:
                    events.append(PongReceived(length))
            elif typ == TYPE_GO_AWAY:
                if sid != 0:
                    raise YamuxError(f"yamux: GoAway on stream {sid}")
                self.goaway_received = True
                events.append(GoAwayReceived(length))
                return
            else:
                raise YamuxError(f"yamux: unknown frame type {typ}")

    def _end_payload(self, events: list[Event]) -> None:
        sid = self._payload_sid
        if sid and self._payload_fin:
            st = self._streams.get(sid)
            if st is not None:
                self._remote_fin(sid, st, events)
        self._payload_sid = 0
        self._payload_fin = False

    def _stream_for(self, flags: int, sid: int, events: list[Event]) -> _Stream | None:
        """The stream a data/window-update frame addresses; opens it on SYN. None: ignore it."""
        if sid == 0:
            raise YamuxError("yamux: data or window update on stream 0")
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            if (sid & 1) == (1 if self.is_initiator else 0):
                raise YamuxError(f"yamux: peer opened stream {sid} with our parity")
            if st is not None:
                raise YamuxError(f"yamux: SYN for open stream {sid}")
            if flags & FLAG_RST:
                return None
            if (
                self.goaway_sent
                or len(self._streams) >= self._max_streams
                or self._unacked_inbound >= self._max_unacked_inbound
            ):
                self.rejected_streams += 1
                self._out.append(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
                return None
            st = _Stream(inbound=True, recv_window=self._initial_window, now=0.0)
            self._streams[sid] = st
            self._unacked_inbound += 1
            events.append(StreamOpened(sid))
            return st
        if st is None:
            return None
        if not st.inbound and not st.acked:
            st.acked = True  # any answer counts: some peers only ACK with their first frame
            self._unacked_outbound -= 1
        if flags & FLAG_RST:
            self._remove(sid, st)
            events.append(StreamWasReset(sid))
            return None
        return st

    def _on_data(self, flags: int, sid: int, length: int, events: list[Event]) -> None:
        if length > self._max_frame_payload:
            raise YamuxError(f"yamux: data frame of {length} bytes (limit)")
        known = sid in self._streams
        st = self._stream_for(flags, sid, events)
        self._payload_left = length
        self._payload_sid = 0
        self._payload_fin = False
        if st is None:
            if not known and not flags & (FLAG_RST | FLAG_SYN):
                # data for a stream we do not know (never opened, or closed): reset it
                self._out.append(HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return
        if length > st.recv_credit:
            raise YamuxError(
                f"yamux: {length} bytes on stream {sid} exceed the receive window "
                f"({st.recv_credit} left)"
            )
        if st.remote_fin and length:
            self._out.append(self.reset_stream(sid))
            events.append(StreamWasReset(sid))
            return
        st.recv_credit -= length
        self._payload_sid = sid
        self._payload_fin = bool(flags & FLAG_FIN)
        if not length:
            self._end_payload(events)

    def _on_window_update(self, flags: int, sid: int, delta: int, events: list[Event]) -> None:
        st = self._stream_for(flags, sid, events)
        if st is None:
            return
        if delta:
            window = st.send_window + delta
            if window > _U32:
                raise YamuxError(f"yamux: send window of stream {sid} overflows")
            st.send_window = window
            events.append(SendWindowUpdated(sid))
        if flags & FLAG_FIN:
            self._remote_fin(sid, st, events)

    def _remote_fin(self, sid: int, st: _Stream, events: list[Event]) -> None:
        if st.remote_fin:
            return
        st.remote_fin = True
        events.append(StreamEnded(sid))
        if st.local_fin:
            self._remove(sid, st)

    def _remove(self, sid: int, st: _Stream) -> None:
        del self._streams[sid]
        if st.inbound and not st.acked:
            self._unacked_inbound -= 1
        elif not st.inbound and not st.acked:
            self._unacked_outbound -= 1
