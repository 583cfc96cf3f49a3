"""yamux 1.0.0 over any ``trio.abc.Stream``: a thin trio driver around ``YamuxSession``.

``YamuxConnection.run()`` owns two tasks: a read loop that feeds the sans-io core and a write pump
that batches every queued frame into one ``send_all``. Stream writers wait for send window and for
room in the bounded write queue; control frames (window updates, pongs, RSTs) never wait, so the read
loop can not deadlock against the writer.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque

import trio
from trio.lowlevel import (
    ParkingLot,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

from ..errors import ProtocolError
from ..limits import (
    YAMUX_CLOSE_TIMEOUT,
    YAMUX_INITIAL_WINDOW,
    YAMUX_MAX_CONTROL_BACKLOG,
    YAMUX_MAX_SEND_FRAME,
    YAMUX_MAX_STREAMS,
    YAMUX_MAX_UNACKED_INBOUND,
    YAMUX_MAX_WINDOW,
    YAMUX_SEND_BUFFER,
)
from .yamux_core import (
    GO_AWAY_NORMAL,
    YAMUX_PROTOCOL_ID,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    SendWindowUpdated,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamWasReset,
    YamuxError,
    YamuxSession,
)

__all__ = [
    "YAMUX_PROTOCOL_ID",
    "StreamReset",
    "YamuxConnection",
    "YamuxError",
    "YamuxSession",
    "YamuxStream",
]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024  # bytes asked of the transport per read
_DIRECT_READ = 64 * 1024  # inside a payload at least this big, read only that payload
_SEND_ALONE = 64 * 1024  # frames at least this big are written without coalescing


def _batches(frames: list[bytes]) -> list[bytes]:
    """Coalesce small frames into one write; big frames go alone (joining them would copy)."""
    if len(frames) == 1:
        return frames
    out: list[bytes] = []
    small: list[bytes] = []
    for frame in frames:
        if len(frame) < _SEND_ALONE:
            small.append(frame)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(frame)
    if small:
        out.append(b"".join(small))
    return out


class YamuxStream(trio.abc.HalfCloseableStream):
    """One yamux stream. ``receive_some`` returns b"" after the peer's FIN; a reset (either side,
    or the connection closing before the peer's FIN) raises ``StreamReset``."""

    def __init__(self, conn: YamuxConnection, stream_id: int) -> None:
        self.stream_id = stream_id
        self.protocol: str | None = None  # free slot for the host (negotiated protocol)
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._window = conn._session.recv_window(stream_id)
        self._eof = False  # peer sent FIN
        self._reset: str | None = None  # reason, once reset
        self._fin_sent = False
        self._closed = False  # aclose() called
        self._recv_lot = ParkingLot()
        self._send_lot = ParkingLot()
        self._receiving = False
        self._sending = False

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} protocol={self.protocol!r}>"

    @property
    def receive_window(self) -> int:
        """Current (or last known) receive window; grows with auto-tuning."""
        return self._window

    @property
    def buffered(self) -> int:
        """Received bytes not yet read by the application."""
        return self._buffered

    def _wake(self) -> None:
        if self._recv_lot:
            self._recv_lot.unpark_all()
        if self._send_lot:
            self._send_lot.unpark_all()

    def _set_reset(self, reason: str, *, drop: bool = True) -> None:
        if self._reset is None:
            self._reset = reason
            if drop:
                self._chunks.clear()
                self._buffered = 0
        self._wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        await checkpoint_if_cancelled()
        self._receiving = True
        parked = False
        try:
            chunks = self._chunks
            while not chunks:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                if self._reset is not None:
                    raise StreamReset(f"yamux stream {self.stream_id}: {self._reset}")
                if self._eof:
                    chunk = b""
                    break
                parked = True
                await self._recv_lot.park()
            else:
                chunk = chunks[0]
                n = len(chunk)
                if max_bytes is None or n <= max_bytes:
                    chunks.popleft()
                else:
                    chunks[0] = chunk[max_bytes:]
                    chunk = chunk[:max_bytes]
                    n = max_bytes
                self._buffered -= n
                self._conn._consumed(self, n)
        finally:
            self._receiving = False
        if not parked:
            await cancel_shielded_checkpoint()
        return chunk

    def _check_send(self) -> None:
        if self._closed or self._fin_sent:
            raise trio.ClosedResourceError("stream is closed for sending")
        if self._reset is not None:
            raise StreamReset(f"yamux stream {self.stream_id}: {self._reset}")
        if self._conn._closed:
            raise StreamReset(f"yamux stream {self.stream_id}: connection closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await checkpoint_if_cancelled()
        self._check_send()
        self._sending = True
        conn = self._conn
        session = conn._session
        sid = self.stream_id
        try:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            total = len(view)
            pos = 0
            while pos < total:
                while True:
                    self._check_send()
                    window = session.send_window(sid)
                    if window and conn._out_data < YAMUX_SEND_BUFFER:
                        break
                    await (self._send_lot if not window else conn._space_lot).park()
                n = min(window, total - pos, YAMUX_MAX_SEND_FRAME)
                conn._enqueue_data(session.send_data(sid, view[pos : pos + n]))
                pos += n
                await checkpoint()
            if not total:
                await cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        conn = self._conn
        while True:
            self._check_send()
            if not conn._session.send_window(self.stream_id):
                await self._send_lot.park()
            elif conn._out_data >= YAMUX_SEND_BUFFER:
                await conn._space_lot.park()
            else:
                await checkpoint()
                return

    async def send_eof(self) -> None:
        """Half-close (FIN). Idempotent."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._reset is not None or self._conn._closed:
            raise StreamReset(
                f"yamux stream {self.stream_id}: {self._reset or 'connection closed'}"
            )
        if not self._fin_sent:
            self._fin_sent = True
            self._conn._enqueue_control(self._conn._session.close_stream(self.stream_id))
            self._conn._forget_if_done(self)
        await cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        """Send FIN (if not sent) and stop reading: data still arriving is discarded but credited,
        so the peer is not stalled. Never raises for a reset or closed connection."""
        if not self._closed:
            self._closed = True
            conn = self._conn
            if self._reset is None and not conn._closed:
                if self._buffered:
                    n = self._buffered
                    self._chunks.clear()
                    self._buffered = 0
                    conn._consumed(self, n)
                if not self._fin_sent:
                    self._fin_sent = True
                    conn._enqueue_control(conn._session.close_stream(self.stream_id))
                conn._forget_if_done(self)
            self._wake()
        await checkpoint()

    async def reset(self) -> None:
        """Reset the stream (RST): both directions end now, buffered data is dropped."""
        conn = self._conn
        if self._reset is None:
            conn._enqueue_control(conn._session.reset_stream(self.stream_id))
            conn._streams.pop(self.stream_id, None)
            self._set_reset("reset locally")
        await checkpoint()


class _PingWaiter:
    __slots__ = ("answered", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answered = False


class YamuxConnection:
    """A yamux session over ``stream``. Start ``run()`` in a nursery before using streams."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        is_initiator: bool,
        initial_window: int = YAMUX_INITIAL_WINDOW,
        max_window: int = YAMUX_MAX_WINDOW,
        max_streams: int = YAMUX_MAX_STREAMS,
        max_unacked_inbound: int = YAMUX_MAX_UNACKED_INBOUND,
    ) -> None:
        self._transport = stream
        self._session = YamuxSession(
            is_initiator=is_initiator,
            initial_window=initial_window,
            max_window=max_window,
            max_streams=max_streams,
            max_unacked_inbound=max_unacked_inbound,
        )
        self._streams: dict[int, YamuxStream] = {}
        self._accept_send, self._accept_recv = trio.open_memory_channel[YamuxStream](math.inf)
        self._out: list[bytes] = []
        self._out_data = 0  # data-frame bytes queued (writers wait above YAMUX_SEND_BUFFER)
        self._out_ctrl = 0  # control bytes queued (never wait; capped)
        self._writing = False
        self._writer_lot = ParkingLot()
        self._space_lot = ParkingLot()
        self._flush_lot = ParkingLot()
        self._open_lot = ParkingLot()
        self._pings: dict[int, _PingWaiter] = {}
        self._ping_seq = 0
        self._closed = False
        self._started = False
        self._run_scope: trio.CancelScope | None = None
        self._done = trio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def session(self) -> YamuxSession:
        """The sans-io core (read-only use: counters, windows, rtt)."""
        return self._session

    @property
    def is_initiator(self) -> bool:
        return self._session.is_initiator

    # --- public API ---
    async def run(self) -> None:
        """Read and write until EOF, GoAway, a transport error or ``aclose``; then close every
        stream and the transport. Protocol errors are logged (and answered with GoAway), not raised."""
        if self._started:
            raise RuntimeError("YamuxConnection.run() called twice")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                self._run_scope = nursery.cancel_scope
                if self._closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._write_pump)
                nursery.start_soon(self._measure_rtt)
                await self._read_loop()
                with trio.move_on_after(YAMUX_CLOSE_TIMEOUT):
                    await self._wait_flushed()
                nursery.cancel_scope.cancel()
        finally:
            self._shutdown()
            await self._close_transport()
            self._done.set()

    async def open_stream(self) -> YamuxStream:
        """Open an outbound stream (SYN is sent at once). Waits while 256 of our streams are
        unacknowledged; raises ``LimitExceeded`` at YAMUX_MAX_STREAMS and ``YamuxError`` once
        the connection is closed."""
        await checkpoint_if_cancelled()
        session = self._session
        parked = False
        while True:
            if self._closed or session.terminated or session.goaway_sent:
                raise YamuxError("yamux connection is closed")
            if session.unacked_outbound < YAMUX_MAX_UNACKED_INBOUND:
                break
            parked = True
            await self._open_lot.park()
        sid, frame = session.open_stream(trio.current_time())
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        self._enqueue_control(frame)
        if not parked:
            await cancel_shielded_checkpoint()
        return stream

    async def accept_stream(self) -> YamuxStream:
        """Next inbound stream (ACKed now). Raises ``trio.EndOfChannel`` once the connection is
        closed and no accepted-but-unread streams remain."""
        while True:
            stream = await self._accept_recv.receive()
            if stream._reset is not None and not stream._chunks:
                continue  # reset by the peer before we got to it
            frame = self._session.accept_stream(stream.stream_id, trio.current_time())
            if frame:
                self._enqueue_control(frame)
            return stream

    async def ping(self) -> float:
        """Round-trip time in seconds, measured with a yamux ping; raises ``YamuxError`` if the
        connection closes first."""
        if self._closed:
            raise YamuxError("yamux connection is closed")
        self._ping_seq = (self._ping_seq + 1) & 0xFFFFFFFF
        opaque = self._ping_seq
        waiter = _PingWaiter()
        self._pings[opaque] = waiter
        start = trio.current_time()
        self._enqueue_control(self._session.ping(opaque))
        try:
            await waiter.event.wait()
        finally:
            self._pings.pop(opaque, None)
        if not waiter.answered:
            raise YamuxError("yamux connection closed before the ping was answered")
        rtt = trio.current_time() - start
        self._session.rtt = rtt
        return rtt

    async def aclose(self) -> None:
        """Send GoAway (normal), flush briefly, close every stream and the transport."""
        if self._closed:
            await checkpoint()
            return
        session = self._session
        if not session.terminated and not session.goaway_sent:
            self._enqueue_control(session.go_away(GO_AWAY_NORMAL))
        if self._started and not self._done.is_set():
            with trio.move_on_after(YAMUX_CLOSE_TIMEOUT):
                await self._wait_flushed()
            self._closed = True
            if self._run_scope is not None:
                self._run_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(YAMUX_CLOSE_TIMEOUT):
                await self._done.wait()
        else:
            self._shutdown()
            await self._close_transport()
        await checkpoint()

    # --- internals used by YamuxStream ---
    def _enqueue_data(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_data += len(frame)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def _enqueue_control(self, frame: bytes) -> None:
        if not frame or self._closed:
            return
        self._out.append(frame)
        self._out_ctrl += len(frame)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def _consumed(self, stream: YamuxStream, n: int) -> None:
        frame = self._session.consumed(stream.stream_id, n, trio.current_time())
        if frame:
            self._enqueue_control(frame)
            window = self._session.recv_window(stream.stream_id)
            if window:
                stream._window = window

    def _forget_if_done(self, stream: YamuxStream) -> None:
        if not self._session.has_stream(stream.stream_id):
            self._streams.pop(stream.stream_id, None)

    # --- tasks ---
    async def _wait_flushed(self) -> None:
        while self._out or self._writing:
            await self._flush_lot.park()

    async def _write_pump(self) -> None:
        transport = self._transport
        while True:
            if not self._out:
                if self._flush_lot:
                    self._flush_lot.unpark_all()
                await self._writer_lot.park()
                continue
            out = self._out
            self._out = []
            self._out_data = 0
            self._out_ctrl = 0
            if self._space_lot:
                self._space_lot.unpark_all()
            self._writing = True
            try:
                for buf in _batches(out):
                    await transport.send_all(buf)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError) as exc:
                log.debug("yamux: transport write failed: %r", exc)
                self._writing = False
                self._stop()
                return
            self._writing = False

    async def _measure_rtt(self) -> None:
        """One ping at start so window auto-tuning knows the round-trip time."""
        with trio.move_on_after(30.0):
            with contextlib.suppress(YamuxError):
                await self.ping()

    async def _read_loop(self) -> None:
        session = self._session
        streams = self._streams
        transport = self._transport
        while True:
            size = session.pending_payload
            if size < _DIRECT_READ or size > _READ_SIZE:
                size = _READ_SIZE
            try:
                data = await transport.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError) as exc:
                log.debug("yamux: transport read failed: %r", exc)
                return
            if not data:
                return
            try:
                events = session.feed(data)
            except YamuxError as exc:
                log.warning("yamux: protocol error, closing connection: %s", exc)
                self._enqueue_control(session.data_to_send())
                return
            for ev in events:
                if isinstance(ev, DataReceived):
                    stream = streams.get(ev.stream_id)
                    if stream is None:
                        continue
                    if stream._closed:
                        self._consumed(stream, len(ev.data))
                        continue
                    stream._chunks.append(ev.data)
                    stream._buffered += len(ev.data)
                    if stream._recv_lot:
                        stream._recv_lot.unpark_all()
                elif isinstance(ev, SendWindowUpdated):
                    stream = streams.get(ev.stream_id)
                    if stream is not None and stream._send_lot:
                        stream._send_lot.unpark_all()
                else:
                    self._on_event(ev)
            out = session.data_to_send()
            if out:
                self._enqueue_control(out)
            if self._open_lot and session.unacked_outbound < YAMUX_MAX_UNACKED_INBOUND:
                self._open_lot.unpark_all()
            if session.goaway_received:
                return
            if self._out_ctrl > YAMUX_MAX_CONTROL_BACKLOG:
                log.warning("yamux: peer does not read our control frames, closing connection")
                return

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, StreamOpened):
            stream = YamuxStream(self, ev.stream_id)
            self._streams[ev.stream_id] = stream
            self._accept_send.send_nowait(stream)
        elif isinstance(ev, StreamEnded):
            ended = self._streams.get(ev.stream_id)
            if ended is not None:
                ended._eof = True
                ended._wake()
                self._forget_if_done(ended)
        elif isinstance(ev, StreamWasReset):
            reset = self._streams.pop(ev.stream_id, None)
            if reset is not None:
                reset._set_reset("reset by peer")
        elif isinstance(ev, PongReceived):
            waiter = self._pings.get(ev.opaque)
            if waiter is not None:
                waiter.answered = True
                waiter.event.set()
        elif isinstance(ev, GoAwayReceived):
            log.debug("yamux: peer sent GoAway (code %d)", ev.code)

    async def _close_transport(self) -> None:
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(YAMUX_CLOSE_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self._transport.aclose()

    def _stop(self) -> None:
        self._closed = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    def _shutdown(self) -> None:
        """Mark closed and wake every waiter: unfinished streams now raise ``StreamReset``."""
        self._closed = True
        for stream in list(self._streams.values()):
            if stream._eof:
                stream._wake()  # buffered data and EOF stay readable; sends raise StreamReset
            else:
                stream._set_reset("connection closed", drop=False)  # buffered data stays
        self._streams.clear()
        self._accept_send.close()
        for waiter in self._pings.values():
            waiter.event.set()
        for lot in (self._open_lot, self._space_lot, self._flush_lot, self._writer_lot):
            lot.unpark_all()
