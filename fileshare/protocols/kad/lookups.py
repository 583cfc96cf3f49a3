"""The trio driver of a sans-io ``Lookup``: alpha concurrent requests, per-request and overall deadlines.

``drive(lookup, rpc, nursery, deadline)`` is an async generator of ``(peer, answer)`` for every
answer the lookup accepted, in arrival order; it ends when the lookup is done or at ``deadline``.
Requests run as tasks in ``nursery`` (a long-lived one, so nothing holds a nursery open across a
``yield``); each has its own cancel scope, and closing the generator cancels those still running.
``on_answer`` / ``on_failure`` let the caller update its routing table as results come in.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Callable, Iterable

import trio
from multiaddr import Multiaddr

from ...errors import DecodeError
from ...identity.peerid import PeerId
from ...net import addrs as _addrs
from .lookup import Lookup
from .messages import Message, Peer
from .rpc import KadRpc, RpcError

log = logging.getLogger("fileshare.protocols.kad")


def peer_id_of(raw: bytes) -> PeerId | None:
    """The PeerId for kad ``Peer.id`` bytes, or None if they are not a PeerId we accept."""
    try:
        return PeerId.from_bytes(raw)
    except DecodeError:
        return None


def multiaddrs(raw: Iterable[bytes]) -> list[Multiaddr]:
    """Binary multiaddrs decoded; invalid ones and ``/p2p``-only ones are skipped."""
    out: list[Multiaddr] = []
    for data in raw:
        try:
            addr = _addrs.from_bytes(data)
            transport, _peer = _addrs.split_peer(addr)
        except DecodeError:
            continue
        if transport is not None and transport not in out:
            out.append(transport)
    return out


async def drive(
    lookup: Lookup,
    rpc: KadRpc,
    nursery: trio.Nursery,
    deadline: float,
    *,
    on_answer: Callable[[PeerId, Peer], None] | None = None,
    on_failure: Callable[[PeerId], None] | None = None,
) -> AsyncGenerator[tuple[Peer, Message]]:
    """Run ``lookup`` until it is done or ``deadline`` (trio clock); yield accepted answers."""
    send, recv = trio.open_memory_channel[tuple[Peer, PeerId, Message | None]](math.inf)
    scopes: set[trio.CancelScope] = set()
    closed = False

    async def query(peer: Peer, pid: PeerId) -> None:
        if closed:
            return
        with trio.CancelScope() as scope:
            scopes.add(scope)
            try:
                answer: Message | None = await rpc.request(
                    pid, lookup.request, multiaddrs(peer.addrs), timeout=lookup.timeout
                )
            except RpcError as exc:
                log.debug("lookup query to %s failed: %s", pid, exc)
                answer = None
            finally:
                scopes.discard(scope)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait((peer, pid, answer))

    try:
        while True:
            now = trio.current_time()
            refused = False
            for peer in lookup.step(now):
                pid = peer_id_of(peer.id)
                if pid is None:
                    lookup.on_failure(peer.id, now)
                    refused = True
                    continue
                nursery.start_soon(query, peer, pid)
            if lookup.done or now >= deadline:
                return
            if refused:
                continue  # step again: the failed candidates make room for others
            wake = lookup.next_deadline()
            wake = deadline if wake is None else min(wake, deadline)
            item: tuple[Peer, PeerId, Message | None] | None = None
            with trio.move_on_at(wake):
                item = await recv.receive()
            if item is None:
                continue
            peer, pid, answer = item
            now = trio.current_time()
            if answer is None:
                lookup.on_failure(peer.id, now)
                if on_failure is not None:
                    on_failure(pid)
                continue
            if lookup.on_response(peer.id, answer, now):
                if on_answer is not None:
                    on_answer(pid, peer)
                yield peer, answer
    finally:
        closed = True
        for scope in list(scopes):
            scope.cancel()
        send.close()
        recv.close()
