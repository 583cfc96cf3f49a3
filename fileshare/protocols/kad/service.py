"""KadService: the Kademlia DHT (/ipfs/kad/1.0.0) running on a Host.

- Server mode answers inbound requests (several per stream, each checked by ``KadServer``; a
  malformed or invalid request resets the stream, with the reason logged). Client mode does not
  register the protocol, so identify does not advertise it and nobody adds us to a table.
- The routing table takes peers whose identify lists /ipfs/kad/1.0.0 and peers that answered our
  requests; a full bucket triggers a liveness check (FIND_NODE) of its oldest peer. A peer that
  fails a request is dropped from the table.
- Once the table has a first peer: a lookup for our own id and one per bucket (bootstrap), then
  every bucket whose last lookup is older than the refresh interval, and liveness checks of peers
  silent for ``KAD_STALE_PEER_AGE``.
- ``provide(cid)``: FIND_NODE for the multihash, ADD_PROVIDER to the k closest that answered (and
  a record in our own store). ``start_providing(cid)`` keeps doing that every 22 h, retrying soon
  while no peer took it.
- ``find_providers(cid)``: our own records, then a GET_PROVIDERS lookup; each provider is yielded
  once as ``(PeerId, addrs)``, as soon as it is found, until ``limit`` or the lookup ends.
- The routing table (peer ids, addresses) is saved to the repository every
  ``KAD_PERSIST_INTERVAL`` and at shutdown, and loaded on start.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from typing import Literal

import trio
from multiaddr import Multiaddr

from ...content.cid import CID
from ...errors import FileshareError, LimitExceeded, ProtocolError
from ...identity.peerid import PeerId
from ...limits import (
    IDENTIFY_TIMEOUT,
    KAD_ALPHA,
    KAD_K,
    KAD_LOOKUP_TIMEOUT,
    KAD_MAINTENANCE_CONCURRENCY,
    KAD_MAX_ADDRS_PER_PEER,
    KAD_MAX_INBOUND_STREAMS_PER_PEER,
    KAD_MAX_MESSAGE,
    KAD_MAX_TABLE_ADDRS,
    KAD_PERSIST_INTERVAL,
    KAD_PROVIDE_RETRY,
    KAD_PROVIDER_REPUBLISH,
    KAD_REFRESH_INTERVAL,
    KAD_RPC_TIMEOUT,
    KAD_SEED_WAIT,
    KAD_STALE_PEER_AGE,
    KAD_STREAM_IDLE_TIMEOUT,
)
from ...net import addrs as _addrs
from ...net.host import Connection, Host, NetStream
from ...repo import Repo
from ...wire.protobuf import LengthPrefixedDecoder, length_prefixed
from ..identify import IdentifyService
from .lookup import Lookup
from .lookups import drive, multiaddrs, peer_id_of
from .messages import PROTOCOL_ID, Message, MessageType, Peer, decode_message, encode_message
from .persist import load_table, save_table, table_rows
from .providers import ProviderStore, Reprovider
from .routing import AddStatus, DiversityConfig, RoutingTable, kad_key
from .rpc import KadRpc, RpcError
from .server import KadServer

__all__ = ["KadMode", "KadService", "Provider", "provider_key"]

log = logging.getLogger("fileshare.protocols.kad")

KadMode = Literal["server", "client"]
Provider = tuple[PeerId, list[Multiaddr]]

_READ_CHUNK = 64 * 1024
_SEED_GRACE = 0.5  # seconds a lookup with an empty table waits even when nothing is pending


def provider_key(cid: CID | bytes) -> bytes:
    """The DHT key of a CID: its multihash (bytes are taken as a multihash already)."""
    return cid.multihash if isinstance(cid, CID) else bytes(cid)


class KadService:
    """The DHT on ``host``; tasks run in the host's nursery and end with it."""

    def __init__(
        self,
        host: Host,
        repo: Repo | None = None,
        *,
        identify: IdentifyService | None = None,
        mode: KadMode = "server",
        bootstrap: Sequence[Multiaddr] = (),
        alpha: int = KAD_ALPHA,
        k: int = KAD_K,
        diversity: DiversityConfig | None = None,
        disjoint_paths: int = 1,
        persist: bool = True,
        rpc_timeout: float = KAD_RPC_TIMEOUT,
        lookup_timeout: float = KAD_LOOKUP_TIMEOUT,
        refresh_interval: float = KAD_REFRESH_INTERVAL,
        reprovide_interval: float = KAD_PROVIDER_REPUBLISH,
    ) -> None:
        if mode not in ("server", "client"):
            raise ValueError(f"DHT mode must be 'server' or 'client', not {mode!r}")
        self.host = host
        self.repo = repo
        self.identify = identify
        self.mode: KadMode = mode
        self.alpha = alpha
        self.k = k
        self.disjoint_paths = disjoint_paths
        self.persist = persist and repo is not None
        self.lookup_timeout = lookup_timeout
        self.refresh_interval = refresh_interval
        self.local_id = host.peer_id.bytes
        now = trio.current_time()
        self.table = RoutingTable(
            self.local_id, k=k, diversity=diversity, ping_timeout=2 * rpc_timeout, now=now
        )
        self.providers = ProviderStore()
        self.reprovider = Reprovider(reprovide_interval)
        self.server = KadServer(
            self.local_id, self.table, self.providers, local_addrs=self.local_addrs, k=k
        )
        self.rpc = KadRpc(host, timeout=rpc_timeout)
        self.bootstrapped = trio.Event()  # set after the first self lookup and bucket refresh
        self.served = 0  # requests answered
        self.rejected = 0  # inbound streams reset for a malformed or invalid request
        self._rng = random.Random()
        self._inbound: Counter[PeerId] = Counter()
        self._changed = trio.Event()  # set (and replaced) whenever the table gains a peer
        self._retry_at: dict[bytes, float] = {}
        self._dirty = False
        self._identifying = 0  # connections whose identify we are waiting for
        if mode == "server":
            host.set_stream_handler(PROTOCOL_ID, self._handle_stream)
        host.on_connect(self._on_connect)
        host.on_disconnect(self._on_disconnect)
        if repo is not None:
            load_table(repo, self.table, host.peerstore, trio.current_time())
        nursery = host.nursery
        for addr in bootstrap:
            nursery.start_soon(self._dial, addr)
        nursery.start_soon(self._refresh_loop)
        nursery.start_soon(self._reprovide_loop)
        nursery.start_soon(self._housekeeping_loop)

    # --- public API ------------------------------------------------------------------------------

    def local_addrs(self) -> list[bytes]:
        """Our advertised addresses, binary, as sent in provider records."""
        return [a.to_bytes() for a in self.host.advertised_addrs()][:KAD_MAX_ADDRS_PER_PEER]

    def peers(self) -> list[tuple[PeerId, list[Multiaddr]]]:
        """Routing table peers with their addresses."""
        out: list[tuple[PeerId, list[Multiaddr]]] = []
        for entry in self.table.peers():
            pid = peer_id_of(entry.peer_id)
            if pid is not None:
                out.append((pid, multiaddrs(entry.addrs)))
        return out

    async def bootstrap(self, addrs: Sequence[Multiaddr], timeout: float = KAD_SEED_WAIT) -> int:
        """Dial ``addrs`` and wait (up to ``timeout``) for them to enter the table; table size."""
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(self._dial_and_add, addr)
        return len(self.table)

    async def get_closest_peers(self, key: bytes, *, timeout: float | None = None) -> list[Peer]:
        """FIND_NODE lookup: the k closest peers to ``key`` that answered, nearest first."""
        deadline = trio.current_time() + (self.lookup_timeout if timeout is None else timeout)
        await self._wait_for_seeds(deadline)
        lk = self._lookup(MessageType.FIND_NODE, key)
        async with aclosing(self._drive(lk, deadline)) as answers:
            async for _ in answers:
                pass
        if lk.done:
            self.table.mark_refreshed(lk.target, trio.current_time())
        return lk.result().closest

    async def find_peer(self, peer: PeerId, *, timeout: float | None = None) -> list[Multiaddr]:
        """Addresses of ``peer``: known ones, else from a FIND_NODE lookup for it."""
        known = self.host.peerstore.addrs(peer)
        if known:
            return known
        entry = self.table.get(peer.bytes)
        if entry is not None and entry.addrs:
            return multiaddrs(entry.addrs)
        deadline = trio.current_time() + (self.lookup_timeout if timeout is None else timeout)
        await self._wait_for_seeds(deadline)
        lk = self._lookup(MessageType.FIND_NODE, peer.bytes)
        async with aclosing(self._drive(lk, deadline)) as answers:
            async for _responder, answer in answers:
                for p in answer.closer_peers:
                    if p.id == peer.bytes and p.addrs:
                        found = multiaddrs(p.addrs)
                        self.host.peerstore.add_addrs(peer, found)
                        return found
        return []

    async def provide(self, cid: CID | bytes, *, timeout: float | None = None) -> int:
        """Announce that we provide ``cid`` to the k closest peers; how many took the record."""
        key = provider_key(cid)
        ours = self.local_addrs()
        self.providers.add(key, self.local_id, ours, trio.current_time())
        closest = await self.get_closest_peers(key, timeout=timeout)
        msg = Message(
            MessageType.ADD_PROVIDER, key, provider_peers=(Peer(self.local_id, tuple(ours)),)
        )
        stored = 0

        async def send(peer: Peer) -> None:
            nonlocal stored
            pid = peer_id_of(peer.id)
            if pid is not None and await self.rpc.send_add_provider(
                pid, msg, multiaddrs(peer.addrs)
            ):
                stored += 1

        async with trio.open_nursery() as nursery:
            for peer in closest:
                nursery.start_soon(send, peer)
        log.info("provided %s to %d of %d peers", key.hex(), stored, len(closest))
        return stored

    def start_providing(self, cid: CID | bytes) -> None:
        """Provide ``cid`` now (in the background) and again every reprovide interval.

        Our own record is stored at once, so a peer that asks us directly finds it even while the
        routing table is still empty (a lone sharer that others dial as a bootstrap peer).
        """
        key, now = provider_key(cid), trio.current_time()
        self.providers.add(key, self.local_id, self.local_addrs(), now)
        self.reprovider.add(key, now)
        self._wake()

    def stop_providing(self, cid: CID | bytes) -> None:
        self.reprovider.remove(provider_key(cid))

    async def find_providers(
        self, cid: CID | bytes, *, limit: int = KAD_K, timeout: float | None = None
    ) -> AsyncGenerator[Provider]:
        """Providers of ``cid``, each once, as they are found (ours first, then the DHT's)."""
        key = provider_key(cid)
        deadline = trio.current_time() + (self.lookup_timeout if timeout is None else timeout)
        seen: set[bytes] = set()
        for peer in self.providers.get(key, trio.current_time()):
            found = await self._provider(peer, seen, deadline)
            if found is not None:
                yield found
                if len(seen) >= limit:
                    return
        await self._wait_for_seeds(deadline)
        lk = self._lookup(MessageType.GET_PROVIDERS, key, want_providers=limit)
        async with aclosing(self._drive(lk, deadline)) as answers:
            async for _responder, answer in answers:
                if answer.key not in (key, b""):
                    continue
                for peer in answer.provider_peers:
                    found = await self._provider(peer, seen, deadline)
                    if found is not None:
                        yield found
                        if len(seen) >= limit:
                            return

    # --- inbound requests (server mode) ----------------------------------------------------------

    async def _handle_stream(self, stream: NetStream, conn: Connection) -> None:
        peer = conn.remote_peer
        if self._inbound[peer] >= KAD_MAX_INBOUND_STREAMS_PER_PEER:
            log.info("kad: refusing a stream from %s: too many open DHT streams", peer)
            await stream.reset()
            return
        self._inbound[peer] += 1
        try:
            await self._serve(stream, peer)
        finally:
            self._inbound[peer] -= 1
            if not self._inbound[peer]:
                del self._inbound[peer]

    async def _serve(self, stream: NetStream, peer: PeerId) -> None:
        decoder = LengthPrefixedDecoder(KAD_MAX_MESSAGE)
        pending: list[bytes] = []
        while True:
            if not pending:
                with trio.move_on_after(KAD_STREAM_IDLE_TIMEOUT) as idle:
                    data = await stream.receive_some(_READ_CHUNK)
                if idle.cancelled_caught:
                    log.debug("kad: closing idle stream from %s", peer)
                    return
                if not data:
                    if decoder.buffered:
                        await self._reject(stream, peer, "stream ended inside a message")
                    return
                try:
                    pending.extend(decoder.feed(data))
                except LimitExceeded as exc:
                    await self._reject(stream, peer, str(exc))
                    return
                continue
            raw = pending.pop(0)
            try:
                request = decode_message(raw)
                answer = self.server.handle(peer.bytes, request, trio.current_time())
                frame = length_prefixed(encode_message(answer))
            except ProtocolError as exc:
                await self._reject(stream, peer, str(exc))
                return
            await stream.send_all(frame)
            self.served += 1
            self.table.seen(peer.bytes, trio.current_time())

    async def _reject(self, stream: NetStream, peer: PeerId, why: str) -> None:
        self.rejected += 1
        log.info("kad: resetting DHT stream from %s: %s", peer, why)
        await stream.reset()

    # --- routing table ---------------------------------------------------------------------------

    def _table_addrs(self, peer: PeerId, extra: Iterable[bytes] = ()) -> list[bytes]:
        out: list[bytes] = []
        for addr in [*multiaddrs(extra), *self.host.peerstore.addrs(peer)]:
            if _addrs.is_tcp(addr):
                raw = addr.to_bytes()
                if raw not in out:
                    out.append(raw)
        return out[:KAD_MAX_TABLE_ADDRS]

    def _consider(self, peer: PeerId, extra_addrs: Iterable[bytes] = ()) -> None:
        """Offer a peer known to be a DHT server to the table."""
        now = trio.current_time()
        result = self.table.try_add(peer.bytes, self._table_addrs(peer, extra_addrs), now)
        if result.status == AddStatus.ADDED:
            self._table_grew()
        elif result.status == AddStatus.PING_NEEDED and result.ping is not None:
            self.host.nursery.start_soon(self._liveness, result.ping)

    def _table_grew(self) -> None:
        self._dirty = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _liveness(self, old: bytes) -> None:
        pid = peer_id_of(old)
        alive = pid is not None and await self._alive(pid)
        status = self.table.ping_result(old, alive, trio.current_time())
        if not alive:
            self._dirty = True
        if status == AddStatus.ADDED:
            self._table_grew()

    async def _alive(self, peer: PeerId) -> bool:
        entry = self.table.get(peer.bytes)
        addrs = multiaddrs(entry.addrs) if entry is not None else []
        try:
            await self.rpc.request(peer, Message(MessageType.FIND_NODE, self.local_id), addrs)
        except RpcError:
            return False
        return True

    def _answered(self, peer: PeerId, info: Peer) -> None:
        self._consider(peer, info.addrs)

    def _failed(self, peer: PeerId) -> None:
        if self.table.remove(peer.bytes):
            self._dirty = True
            log.debug("kad: dropped %s from the routing table (request failed)", peer)

    async def _on_connect(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if self.identify is not None:
            self._identifying += 1
            try:
                with trio.move_on_after(IDENTIFY_TIMEOUT + 1):
                    await self.identify.wait_identified(peer)
            finally:
                self._identifying -= 1
        protocols = self.host.peerstore.protocols(peer)
        if PROTOCOL_ID in protocols:
            self._consider(peer)
        elif protocols and self.table.remove(peer.bytes):
            self._dirty = True  # it turned client

    async def _on_disconnect(self, conn: Connection) -> None:
        if not self.host.is_connected(conn.remote_peer):
            self.rpc.forget(conn.remote_peer)

    async def _dial(self, addr: Multiaddr) -> None:
        try:
            await self.host.dial(addr)
        except FileshareError as exc:
            log.warning("could not connect to DHT bootstrap peer %s: %s", addr, exc)

    async def _dial_and_add(self, addr: Multiaddr) -> None:
        try:
            conn = await self.host.dial(addr)
        except FileshareError as exc:
            log.warning("could not connect to %s: %s", addr, exc)
            return
        if self.identify is not None:
            await self.identify.wait_identified(conn.remote_peer)
        if PROTOCOL_ID in self.host.peerstore.protocols(conn.remote_peer):
            self._consider(conn.remote_peer)
        else:
            log.warning("%s does not serve the DHT (%s)", addr, PROTOCOL_ID)

    async def _wait_for_seeds(self, deadline: float) -> None:
        """With an empty table, wait a little for connections being identified to fill it."""
        start = trio.current_time()
        with trio.move_on_at(min(deadline, start + KAD_SEED_WAIT)):
            while not len(self.table):
                if not self._identifying and trio.current_time() - start >= _SEED_GRACE:
                    return  # nothing under way that could bring a DHT peer
                with trio.move_on_after(_SEED_GRACE / 4):
                    await self._changed.wait()

    # --- lookups ---------------------------------------------------------------------------------

    def _lookup(self, kind: MessageType, key: bytes, want_providers: int = KAD_K) -> Lookup:
        seeds = [e.info for e in self.table.closest(kad_key(key), self.k)]
        return Lookup(
            kind,
            key,
            seeds,
            local_id=self.local_id,
            now=trio.current_time(),
            k=self.k,
            alpha=self.alpha,
            timeout=self.rpc.timeout,
            disjoint_paths=self.disjoint_paths,
            want_providers=want_providers,
        )

    def _drive(self, lk: Lookup, deadline: float) -> AsyncGenerator[tuple[Peer, Message]]:
        return drive(
            lk,
            self.rpc,
            self.host.nursery,
            deadline,
            on_answer=self._answered,
            on_failure=self._failed,
        )

    async def _provider(self, peer: Peer, seen: set[bytes], deadline: float) -> Provider | None:
        if peer.id in seen:
            return None
        pid = peer_id_of(peer.id)
        if pid is None:
            return None
        seen.add(peer.id)
        if pid == self.host.peer_id:
            return pid, [_addrs.with_peer(a, pid) for a in self.host.advertised_addrs()]
        found = multiaddrs(peer.addrs)
        if found:
            self.host.peerstore.add_addrs(pid, found)
        else:
            remaining = deadline - trio.current_time()
            if remaining > 0:
                found = await self.find_peer(pid, timeout=min(remaining, self.rpc.timeout))
        return pid, found

    # --- background work -------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        """Bootstrap once the table has a peer, then keep the buckets fresh."""
        was_empty = True
        while True:
            while not len(self.table):
                was_empty = True
                await self._changed.wait()
            await self._refresh(force=was_empty)
            was_empty = False
            self.bootstrapped.set()
            await self._check_stale()
            with trio.move_on_after(min(self.refresh_interval, 60.0)):
                while len(self.table):
                    await self._changed.wait()

    async def _refresh(self, *, force: bool) -> None:
        now = trio.current_time()
        buckets = self.table.due_refreshes(now, self.refresh_interval, force=force)
        if not force and not buckets:
            return
        rng = self._rng
        keys = await trio.to_thread.run_sync(
            lambda: [self.table.refresh_key(b, rng) for b in buckets]
        )
        if force:
            await self._limited(self.local_id)  # the self lookup comes first
        limiter = trio.CapacityLimiter(KAD_MAINTENANCE_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(self._limited, key, limiter)
        log.debug("kad: refreshed %d buckets; %d peers in the table", len(keys), len(self.table))

    async def _limited(self, key: bytes, limiter: trio.CapacityLimiter | None = None) -> None:
        """One refresh lookup (``limiter`` bounds how many run at once)."""
        try:
            if limiter is None:
                await self.get_closest_peers(key)
            else:
                async with limiter:
                    await self.get_closest_peers(key)
        except FileshareError as exc:
            log.info("kad: refresh lookup failed: %s", exc)

    async def _check_stale(self) -> None:
        stale = self.table.stale_peers(trio.current_time(), KAD_STALE_PEER_AGE)
        limiter = trio.CapacityLimiter(KAD_MAINTENANCE_CONCURRENCY)

        async def check(raw: bytes) -> None:
            async with limiter:
                pid = peer_id_of(raw)
                if pid is not None and await self._alive(pid):
                    self.table.seen(raw, trio.current_time())
                elif self.table.remove(raw):
                    self._dirty = True

        async with trio.open_nursery() as nursery:
            for raw in stale[: 4 * KAD_MAINTENANCE_CONCURRENCY]:
                nursery.start_soon(check, raw)

    async def _reprovide_loop(self) -> None:
        while True:
            now = trio.current_time()
            due = [k for k in self.reprovider.due(now) if self._retry_at.get(k, 0.0) <= now]
            if due and len(self.table):
                await self._reprovide(due)
                continue
            wake = min(
                [self.reprovider.next_due() or float("inf"), *self._retry_at.values()],
                default=float("inf"),
            )
            if len(self.table) == 0 or wake <= now:
                wake = float("inf")  # nothing to do until the table (or the key set) changes
            with trio.move_on_at(wake):
                await self._changed.wait()

    async def _reprovide(self, keys: list[bytes]) -> None:
        limiter = trio.CapacityLimiter(KAD_MAINTENANCE_CONCURRENCY)

        async def one(key: bytes) -> None:
            async with limiter:
                try:
                    stored = await self.provide(key)
                except FileshareError as exc:
                    log.info("kad: provide of %s failed: %s", key.hex(), exc)
                    stored = 0
            now = trio.current_time()
            if stored:
                self._retry_at.pop(key, None)
                self.reprovider.announced(key, now)
            else:
                self._retry_at[key] = now + KAD_PROVIDE_RETRY

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)

    async def _housekeeping_loop(self) -> None:
        try:
            while True:
                await trio.sleep(min(KAD_PERSIST_INTERVAL, 30.0))
                now = trio.current_time()
                self.providers.expire(now)
                self.server.records.expire(now)
                self.rpc.expire_idle(now)
                if self._dirty and self.persist:
                    rows = self._rows()
                    await trio.to_thread.run_sync(self._save, rows)
        finally:
            if self.persist and self._dirty:
                self._save(self._rows())  # at shutdown: synchronous, quick

    def _rows(self) -> list[tuple[bytes, bytes, float]]:
        self._dirty = False
        return table_rows(self.table, time.time() - trio.current_time())

    def _save(self, rows: list[tuple[bytes, bytes, float]]) -> None:
        if self.repo is not None:
            save_table(self.repo, rows)
