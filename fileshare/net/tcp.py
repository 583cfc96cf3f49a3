"""TCP transport on trio: listen on and dial ``/ip4|ip6|dns*/.../tcp/N`` multiaddrs."""

from __future__ import annotations

import errno
import socket

import trio
from multiaddr import Multiaddr

from ..errors import FileshareError
from ..limits import DIAL_TIMEOUT, TCP_LISTEN_BACKLOG
from . import addrs


class DialError(FileshareError):
    """A peer could not be reached (refused, timed out, handshake failed, wrong PeerId)."""


class ListenError(FileshareError):
    """A listen address could not be bound."""


async def listen_tcp(addr: Multiaddr) -> tuple[trio.SocketListener, Multiaddr]:
    """Bind and listen on one TCP multiaddr; return the listener and the actual bound address."""
    host, port, family = addrs.tcp_endpoint(addr)
    if family == socket.AF_UNSPEC:
        raise ListenError(f"cannot listen on {addr}: use an /ip4 or /ip6 address")
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(TCP_LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"cannot listen on {addr}: address already in use (another daemon running? "
                "choose another port with --listen, or port 0 for any free one)"
            ) from exc
        raise ListenError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc
    return trio.SocketListener(sock), addrs.from_sockaddr(sock.getsockname())


async def dial_tcp(addr: Multiaddr, timeout: float = DIAL_TIMEOUT) -> trio.SocketStream:
    """Open a TCP connection to ``addr`` (any ``/p2p`` suffix ignored) within ``timeout`` seconds."""
    host, port, _family = addrs.tcp_endpoint(addr)
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError as exc:
        raise DialError(f"cannot reach {addr}: timed out after {timeout:g} s") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DialError(f"cannot reach {addr}: {reason.lower()}") from exc


def stream_addrs(stream: trio.SocketStream) -> tuple[Multiaddr | None, Multiaddr | None]:
    """``(local, remote)`` multiaddrs of a connected TCP stream (None where unknown)."""
    local: Multiaddr | None = None
    remote: Multiaddr | None = None
    try:
        local = addrs.from_sockaddr(stream.socket.getsockname())
        remote = addrs.from_sockaddr(stream.socket.getpeername())
    except (OSError, FileshareError):
        pass
    return local, remote
