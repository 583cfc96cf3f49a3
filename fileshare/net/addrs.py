"""Multiaddr helpers: parse, TCP endpoints, the ``/p2p/<PeerId>`` suffix, wildcard expansion.

We use the ``multiaddr`` package for the codec and wrap its errors: every parse failure here is a
``DecodeError`` (a ``FileshareError``, so the CLI prints it as one line).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable

from multiaddr import Multiaddr

from ..errors import DecodeError
from ..identity.peerid import PeerId

P_IP4 = 0x04
P_TCP = 0x06
P_IP6 = 0x29
P_DNS = 0x35
P_DNS4 = 0x36
P_DNS6 = 0x37
P_P2P = 0x01A5

_IP_CODES = (P_IP4, P_IP6)
_DNS_CODES = (P_DNS, P_DNS4, P_DNS6)

__all__ = [
    "Multiaddr",
    "expand_wildcard",
    "from_bytes",
    "from_sockaddr",
    "is_tcp",
    "is_wildcard",
    "parse",
    "split_peer",
    "tcp_endpoint",
    "with_peer",
]


def parse(text: str) -> Multiaddr:
    """Parse a text multiaddr such as ``/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...``."""
    if not text.startswith("/"):
        raise DecodeError(f"invalid multiaddr {text!r}: must start with '/'")
    try:
        addr = Multiaddr(text)
        str(addr)
    except Exception as exc:  # the package raises several unrelated types
        raise DecodeError(f"invalid multiaddr {text!r}: {exc}") from exc
    return addr


def from_bytes(data: bytes | bytearray | memoryview) -> Multiaddr:
    """Decode a binary multiaddr (as carried by identify, kad, ...)."""
    raw = bytes(data)
    if not raw:
        raise DecodeError("empty binary multiaddr")
    try:
        addr = Multiaddr(raw)
        str(addr)  # the constructor is lazy for bytes; force full validation
    except Exception as exc:
        raise DecodeError(f"invalid binary multiaddr: {exc}") from exc
    return addr


def _codes(addr: Multiaddr) -> list[int]:
    return [int(p.code) for p in addr.protocols()]


def split_peer(addr: Multiaddr) -> tuple[Multiaddr | None, PeerId | None]:
    """Split a trailing ``/p2p/<PeerId>`` off: ``(transport part or None, PeerId or None)``."""
    codes = _codes(addr)
    if not codes or codes[-1] != P_P2P:
        return addr, None
    if P_P2P in codes[:-1]:
        raise DecodeError(f"multiaddr {addr} names more than one peer")
    text = str(addr.value_for_protocol(P_P2P))
    try:
        peer = PeerId.from_string(text)
    except Exception as exc:
        raise DecodeError(f"invalid peer id in multiaddr {addr}: {exc}") from exc
    transport = addr.decapsulate_code(P_P2P) if len(codes) > 1 else None
    return transport, peer


def with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr:
    """``addr/p2p/<peer>`` (replacing any /p2p suffix already there)."""
    transport, _ = split_peer(addr)
    if transport is None:
        return Multiaddr(f"/p2p/{peer}")
    return Multiaddr(f"{transport}/p2p/{peer}")


def is_tcp(addr: Multiaddr) -> bool:
    """True for ``/ip4|ip6|dns|dns4|dns6/.../tcp/N`` (optionally ``/p2p/...``)."""
    codes = _codes(addr)
    if codes and codes[-1] == P_P2P:
        codes = codes[:-1]
    return len(codes) == 2 and codes[0] in (*_IP_CODES, *_DNS_CODES) and codes[1] == P_TCP


def tcp_endpoint(addr: Multiaddr) -> tuple[str, int, int]:
    """``(host, port, family)`` of a TCP multiaddr; family is AF_INET, AF_INET6 or AF_UNSPEC (dns)."""
    transport, _ = split_peer(addr)
    if transport is None or not is_tcp(transport):
        raise DecodeError(f"not a TCP multiaddr: {addr}")
    codes = _codes(transport)
    host = str(transport.value_for_protocol(codes[0]))
    port = int(transport.value_for_protocol(P_TCP))
    family = {
        P_IP4: socket.AF_INET,
        P_IP6: socket.AF_INET6,
        P_DNS4: socket.AF_INET,
        P_DNS6: socket.AF_INET6,
    }.get(codes[0], socket.AF_UNSPEC)
    return host, port, family


def from_sockaddr(sockaddr: object) -> Multiaddr:
    """The ``/ip4|ip6/.../tcp/N`` multiaddr of a socket address tuple."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        raise DecodeError(f"unsupported socket address {sockaddr!r}")
    host, port = str(sockaddr[0]).split("%", 1)[0], int(sockaddr[1])
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    proto = "ip4" if ip.version == 4 else "ip6"
    return Multiaddr(f"/{proto}/{ip}/tcp/{port}")


def is_wildcard(addr: Multiaddr) -> bool:
    """True when the address is ``/ip4/0.0.0.0/...`` or ``/ip6/::/...``."""
    codes = _codes(addr)
    if not codes or codes[0] not in _IP_CODES:
        return False
    return ipaddress.ip_address(str(addr.value_for_protocol(codes[0]))).is_unspecified


def _ipv4_interface_addrs() -> list[str]:
    """IPv4 addresses of the local interfaces (Linux ioctl; falls back to the hostname)."""
    found: list[str] = []
    if sys.platform.startswith("linux"):
        import fcntl

        siocgifaddr = 0x8915
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _index, name in socket.if_nameindex():
                with contextlib.suppress(OSError):
                    req = struct.pack("256s", name.encode()[:15])
                    res = fcntl.ioctl(sock.fileno(), siocgifaddr, req)
                    found.append(socket.inet_ntoa(res[20:24]))
    else:
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
                found.append(str(info[4][0]))
    return found


def _ipv6_interface_addrs() -> list[str]:
    """Global/unique-local IPv6 addresses of the local interfaces (Linux /proc; else none)."""
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if not parts or len(parts[0]) != 32:
                continue
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
    return found


def _order(ips: Iterable[str], loopback: str) -> list[str]:
    out = [loopback]
    for text in ips:
        ip = ipaddress.ip_address(text)
        if ip.is_link_local or ip.is_unspecified:
            continue  # link-local needs a zone id: not dialable as a plain multiaddr
        if str(ip) not in out:
            out.append(str(ip))
    return out


def expand_wildcard(addr: Multiaddr) -> list[Multiaddr]:
    """``/ip4/0.0.0.0/tcp/N`` -> loopback first, then each interface address; others unchanged."""
    if not is_wildcard(addr):
        return [addr]
    codes = _codes(addr)
    rest = str(addr).split("/", 3)[3]  # everything after /ip4/<host>/
    if codes[0] == P_IP4:
        ips = _order(_ipv4_interface_addrs(), "127.0.0.1")
        return [Multiaddr(f"/ip4/{ip}/{rest}") for ip in ips]
    ips = _order(_ipv6_interface_addrs(), "::1")
    return [Multiaddr(f"/ip6/{ip}/{rest}") for ip in ips]
