"""The Host: listens, dials (one reused connection per peer), opens and routes streams.

Every task (accept loops, connection runners, stream handlers, connect/disconnect callbacks) runs
in the host's nursery. A failing handler or a misbehaving peer is logged and closes only its
stream or connection; the host keeps serving everyone else.

    async with open_host(key, listen=[parse("/ip4/127.0.0.1/tcp/0")]) as host:
        host.set_stream_handler("/echo/1.0.0", echo)
        stream, proto = await host.new_stream(peer_addr, ["/echo/1.0.0"])

A handler's stream is closed when the handler returns (reset if it raised).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import trio
from multiaddr import Multiaddr

from ..errors import FileshareError, ProtocolError
from ..identity.keys import PrivateKey, PublicKey
from ..identity.peerid import PeerId
from ..limits import DIAL_TIMEOUT, MAX_CONNECTIONS, NEGOTIATION_TIMEOUT
from . import addrs as _addrs
from .multistream import select_inbound
from .peerstore import PeerStore
from .tcp import DialError, ListenError, dial_tcp, listen_tcp, stream_addrs
from .upgrade import Connection, NetStream, PeerIdMismatch, UpgradeError, upgrade

__all__ = [
    "Connection",
    "ConnectionCallback",
    "DialError",
    "Host",
    "ListenError",
    "NetStream",
    "PeerIdMismatch",
    "StreamHandler",
    "open_host",
]

log = logging.getLogger("fileshare.net.host")

StreamHandler = Callable[[NetStream, Connection], Awaitable[None]]
ConnectionCallback = Callable[[Connection], Awaitable[None]]

_CLOSED_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    OSError,
    EOFError,
)
_CLOSE_GRACE = 1.0  # seconds we wait for a polite close before dropping a connection


class _PendingDial:
    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: FileshareError | None = None


def _expected_end(exc: BaseException) -> bool:
    """A stream handler's exception that a peer can cause (a closed or reset stream or
    connection, a protocol error), also when a handler's nursery wraps it in a group."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_expected_end(e) for e in exc.exceptions)
    return isinstance(exc, (*_CLOSED_ERRORS, FileshareError))


class Host:
    """A libp2p host over TCP + Noise + yamux. Create it with ``open_host``."""

    def __init__(
        self,
        key: PrivateKey,
        nursery: trio.Nursery,
        *,
        max_connections: int = MAX_CONNECTIONS,
        dial_timeout: float = DIAL_TIMEOUT,
        negotiation_timeout: float = NEGOTIATION_TIMEOUT,
    ) -> None:
        self.key = key
        self.public_key: PublicKey = key.public_key()
        self.peer_id: PeerId = PeerId.from_public_key(self.public_key)
        self.peerstore = PeerStore()
        self.max_connections = max_connections
        self.dial_timeout = dial_timeout
        self.negotiation_timeout = negotiation_timeout
        self._nursery = nursery
        self._handlers: dict[str, StreamHandler] = {}
        self._conns: dict[PeerId, list[Connection]] = {}
        self._listeners: list[tuple[trio.SocketListener, Multiaddr]] = []
        self._pending_dials: dict[PeerId, _PendingDial] = {}
        self._pending_inbound = 0
        self._connect_callbacks: list[ConnectionCallback] = []
        self._disconnect_callbacks: list[ConnectionCallback] = []
        self._closed = False

    # --- introspection -------------------------------------------------------------------------

    @property
    def nursery(self) -> trio.Nursery:
        """The host's nursery: services may start their own long-running tasks here."""
        return self._nursery

    @property
    def connections(self) -> list[Connection]:
        return [c for conns in self._conns.values() for c in conns if not c.closed]

    def connection_to(self, peer: PeerId) -> Connection | None:
        for conn in self._conns.get(peer, ()):
            if not conn.closed:
                return conn
        return None

    def is_connected(self, peer: PeerId) -> bool:
        return self.connection_to(peer) is not None

    def protocols(self) -> list[str]:
        """Protocol ids we accept inbound streams for."""
        return sorted(self._handlers)

    def listen_addrs(self) -> list[Multiaddr]:
        """The bound listen addresses (wildcards as bound, ports resolved)."""
        return [addr for _, addr in self._listeners]

    def advertised_addrs(self) -> list[Multiaddr]:
        """Listen addresses with wildcards expanded to loopback and interface addresses."""
        out: list[Multiaddr] = []
        for addr in self.listen_addrs():
            for expanded in _addrs.expand_wildcard(addr):
                if expanded not in out:
                    out.append(expanded)
        return out

    # --- registration --------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

    def on_connect(self, callback: ConnectionCallback) -> None:
        """Run ``callback(conn)`` in the host nursery for every new connection."""
        self._connect_callbacks.append(callback)

    def on_disconnect(self, callback: ConnectionCallback) -> None:
        """Run ``callback(conn)`` in the host nursery when a connection has closed."""
        self._disconnect_callbacks.append(callback)

    # --- listening -----------------------------------------------------------------------------

    async def listen(self, addrs: Sequence[Multiaddr]) -> list[Multiaddr]:
        """Listen on every address (all or none); return the actual bound addresses."""
        opened: list[tuple[trio.SocketListener, Multiaddr]] = []
        try:
            for addr in addrs:
                opened.append(await listen_tcp(addr))
        except BaseException:
            for listener, _ in opened:
                await listener.aclose()
            raise
        for listener, bound in opened:
            self._listeners.append((listener, bound))
            self._nursery.start_soon(self._accept_loop, listener, bound)
            log.debug("listening on %s", bound)
        return [bound for _, bound in opened]

    def _connection_count(self) -> int:
        return len(self.connections) + self._pending_inbound + len(self._pending_dials)

    async def _accept_loop(self, listener: trio.SocketListener, addr: Multiaddr) -> None:
        while True:
            try:
                sock = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:
                log.warning("accept on %s failed: %s", addr, exc)
                await trio.sleep(0.1)
                continue
            if self._closed or self._connection_count() >= self.max_connections:
                _, remote = stream_addrs(sock)
                log.warning(
                    "refusing inbound connection from %s: limit of %d connections reached",
                    remote,
                    self.max_connections,
                )
                await trio.aclose_forcefully(sock)
                continue
            self._pending_inbound += 1
            self._nursery.start_soon(self._handle_inbound, sock)

    async def _handle_inbound(self, sock: trio.SocketStream) -> None:
        local, remote = stream_addrs(sock)
        try:
            conn = await upgrade(
                sock,
                self.key,
                "inbound",
                local_addr=local,
                remote_addr=remote,
                timeout=self.negotiation_timeout,
            )
        except UpgradeError as exc:
            log.warning("closed inbound connection from %s: %s", remote, exc)
            return
        except Exception as exc:
            log.warning("closed inbound connection from %s: unexpected %r", remote, exc)
            return
        finally:
            self._pending_inbound -= 1
        self._add_connection(conn)

    # --- dialling ------------------------------------------------------------------------------

    async def dial(
        self, target: PeerId | Multiaddr, addrs: Iterable[Multiaddr] | None = None
    ) -> Connection:
        """Connect to a peer (or return the open connection to it).

        ``target`` is a PeerId (addresses from ``addrs`` or the peer store) or a multiaddr; a
        ``/p2p/<PeerId>`` suffix makes the handshake refuse any other identity.
        """
        candidates: list[Multiaddr] = []
        if isinstance(target, PeerId):
            peer: PeerId | None = target
        else:
            transport, peer = _addrs.split_peer(target)
            if transport is not None:
                candidates.append(transport)
        for addr in addrs or ():
            transport, named = _addrs.split_peer(addr)
            if named is not None and peer is not None and named != peer:
                raise DialError(f"address {addr} names {named}, not {peer}")
            if transport is not None and transport not in candidates:
                candidates.append(transport)
        if peer is None:
            if not candidates:
                raise DialError(f"nothing to dial in {target}")
            return await self._dial_addrs(None, candidates)
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        while True:
            existing = self.connection_to(peer)
            if existing is not None:
                return existing
            pending = self._pending_dials.get(peer)
            if pending is None:
                break
            await pending.event.wait()
            if pending.error is not None:
                raise DialError(str(pending.error)) from pending.error
        if not candidates:
            candidates = self.peerstore.addrs(peer)
        pending = _PendingDial()
        self._pending_dials[peer] = pending
        try:
            return await self._dial_addrs(peer, candidates)
        except FileshareError as exc:
            pending.error = exc
            raise
        finally:
            del self._pending_dials[peer]
            pending.event.set()

    async def _dial_addrs(self, peer: PeerId | None, candidates: list[Multiaddr]) -> Connection:
        if self._closed:
            raise DialError("host is closed")
        dialable = [a for a in candidates if _addrs.is_tcp(a)]
        if not dialable:
            raise DialError(f"no dialable TCP address for {peer or 'the target'}")
        if self._connection_count() >= self.max_connections + (peer is not None):
            raise DialError(f"limit of {self.max_connections} connections reached")
        errors: list[str] = []
        for addr in dialable:
            try:
                raw = await dial_tcp(addr, self.dial_timeout)
                local, remote = stream_addrs(raw)
                conn = await upgrade(
                    raw,
                    self.key,
                    "outbound",
                    expected_peer=peer,
                    local_addr=local,
                    remote_addr=remote or addr,
                    timeout=self.negotiation_timeout,
                )
            except DialError as exc:
                errors.append(str(exc))
                continue
            except UpgradeError as exc:  # includes PeerIdMismatch
                errors.append(f"{addr}: {exc}")
                continue
            if self._closed:
                await conn.aclose()
                raise DialError("host is closed")
            self.peerstore.add_addrs(conn.remote_peer, [addr])
            self._add_connection(conn)
            return conn
        if len(errors) == 1:
            raise DialError(
                errors[0] if errors[0].startswith("cannot") else f"cannot connect to {errors[0]}"
            )
        raise DialError(f"cannot connect to {peer or 'the target'}: " + "; ".join(errors))

    # --- connections ---------------------------------------------------------------------------

    def _add_connection(self, conn: Connection) -> None:
        peer = conn.remote_peer
        self._conns.setdefault(peer, []).append(conn)
        self.peerstore.set_public_key(peer, conn.remote_public_key)
        log.debug("connected to %s (%s, %s)", peer, conn.direction, conn.remote_addr)
        self._nursery.start_soon(self._run_connection, conn)
        for callback in self._connect_callbacks:
            self._nursery.start_soon(self._run_callback, callback, conn, "connect")

    async def _run_callback(
        self, callback: ConnectionCallback, conn: Connection, what: str
    ) -> None:
        try:
            await callback(conn)
        except Exception:
            log.exception("%s callback %r failed for %s", what, callback, conn.remote_peer)

    async def _run_connection(self, conn: Connection) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept_streams, conn)
                await conn.muxer.run()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, ProtocolError) else logging.INFO
            log.log(level, "closing connection to %s: %s", conn.remote_peer, exc)
        finally:
            with trio.move_on_after(_CLOSE_GRACE) as scope:
                scope.shield = True
                with contextlib.suppress(Exception):
                    await conn.aclose()
            conns = self._conns.get(conn.remote_peer, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._conns.pop(conn.remote_peer, None)
            log.debug("disconnected from %s", conn.remote_peer)
            if not self._closed:
                for callback in self._disconnect_callbacks:
                    self._nursery.start_soon(self._run_callback, callback, conn, "disconnect")

    async def _accept_streams(self, conn: Connection) -> None:
        while True:
            try:
                stream = await conn.accept_stream()
            except (*_CLOSED_ERRORS, FileshareError):
                return
            self._nursery.start_soon(self._handle_stream, stream, conn)

    async def _handle_stream(self, stream: NetStream, conn: Connection) -> None:
        try:
            with trio.fail_after(self.negotiation_timeout):
                protocol = await select_inbound(stream, self._handlers.__contains__)
        except trio.TooSlowError:
            log.info("stream from %s: negotiation timed out", conn.remote_peer)
            await stream.reset()
            return
        except (*_CLOSED_ERRORS, FileshareError) as exc:
            log.debug("stream from %s: negotiation failed: %s", conn.remote_peer, exc)
            await stream.reset()
            return
        handler = self._handlers.get(protocol)
        if handler is None:
            await stream.reset()
            return
        stream.protocol = protocol
        stream.muxed.protocol = protocol
        try:
            await handler(stream, conn)
        except Exception as exc:
            if _expected_end(exc):  # the peer went away or misbehaved: not our bug
                log.info("handler %s for %s ended: %r", protocol, conn.remote_peer, exc)
            else:
                log.exception("handler %s for %s failed", protocol, conn.remote_peer)
            await stream.reset()
            return
        with contextlib.suppress(Exception):
            await stream.aclose()

    async def new_stream(
        self, peer: PeerId | Multiaddr, protocols: Sequence[str]
    ) -> tuple[NetStream, str]:
        """Open a stream to ``peer`` (dialling if needed) speaking the first protocol it accepts."""
        for attempt in range(2):
            conn = await self.dial(peer)
            try:
                return await conn.open_stream(protocols)
            except _CLOSED_ERRORS:
                if attempt or not conn.closed:
                    raise
        raise AssertionError("unreachable")

    async def disconnect(self, peer: PeerId) -> None:
        """Close every connection to ``peer``."""
        for conn in list(self._conns.get(peer, ())):
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def aclose(self) -> None:
        """Stop listening and close every connection (politely, within a short grace period)."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(_CLOSE_GRACE) as scope:
            scope.shield = True
            for listener, _ in self._listeners:
                with contextlib.suppress(Exception):
                    await listener.aclose()
            for conns in list(self._conns.values()):
                for conn in list(conns):
                    with contextlib.suppress(Exception):
                        await conn.aclose()


@asynccontextmanager
async def open_host(
    key: PrivateKey,
    *,
    listen: Sequence[Multiaddr] = (),
    max_connections: int = MAX_CONNECTIONS,
    dial_timeout: float = DIAL_TIMEOUT,
    negotiation_timeout: float = NEGOTIATION_TIMEOUT,
) -> AsyncIterator[Host]:
    """Run a Host for the duration of the block; everything it started ends with it.

    An exception from the block propagates as itself (not wrapped in an ExceptionGroup).
    """
    try:
        async with trio.open_nursery() as nursery:
            host = Host(
                key,
                nursery,
                max_connections=max_connections,
                dial_timeout=dial_timeout,
                negotiation_timeout=negotiation_timeout,
            )
            try:
                if listen:
                    await host.listen(listen)
                yield host
            finally:
                await host.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
